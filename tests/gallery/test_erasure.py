"""Issue 25, erasure that cannot happen by accident: everything is its own request, an age has
a minimum, and a forget that matches nothing says so (library, command line)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from reidkit.gallery import validation
from reidkit.gallery.store import Selection
from tests.gallery.conftest import site
from tests.gallery.test_actions import _run
from tests.gallery.test_actions import site as market_site  # noqa: F401  (a fixture)


def test_forget_all_erases_every_crop_and_is_audited(make_gallery):
    vectors, metas = site(60, seed=4)
    gallery = make_gallery()
    gallery.add(vectors, metas)
    assert gallery.forget_all(operator="dpo") == 60
    assert gallery.stats().size == 0 and gallery.search(vectors[:1], k=3) == [[]]
    assert gallery.forget_all(operator="dpo") == 0  # an empty gallery: nothing, no error
    records = [r for r in gallery.audit_log() if r["action"] == "forget"]
    assert [(r["everything"], r["removed"], r["operator"]) for r in records] == [
        (True, 60, "dpo"),
        (True, 0, "dpo"),
    ]


def test_forget_all_reaches_a_rebuild_under_way(make_gallery):
    vectors, metas = site(20, seed=5)
    gallery = make_gallery()
    gallery.add(vectors, metas)
    staged = gallery.backend.staging(create=True)
    try:
        assert staged is not None
        staged.insert(vectors[:5] / abs(vectors[:5]).sum(), metas[:5], [None] * 5)
    finally:
        staged.close()
    gallery.forget_all()
    staged = gallery.backend.staging(create=False)
    try:
        assert staged is not None and len(staged.crop_ids()) == 0
    finally:
        staged.close()


@pytest.mark.parametrize(
    ("age", "refused"),
    [
        (timedelta(0), True),
        (timedelta(minutes=59), True),
        (timedelta(days=-1), True),
        (validation.MIN_FORGET_AGE, False),
        (timedelta(days=30), False),
    ],
)
def test_forget_age_minimum(age: timedelta, refused: bool) -> None:
    if refused:
        with pytest.raises(ValueError, match="under the minimum of 1h"):
            validation.forget_age(age)
    else:
        assert validation.forget_age(age) == age


def test_cli_forget_refuses_accidents_and_warns_on_no_match(market_site, tmp_path, capsys):  # noqa: F811
    refusals = [
        (("--all",), "add --yes to confirm"),
        (("gallery.forget_tracks=['0001']", "--yes"), "--yes confirms --all only"),
        (("gallery.forget_tracks=['0001']", "--all", "--yes"), "--all erases everything"),
        (("gallery.retention_days=0.01",), "gallery.retention_days: an age of 864s is under"),
        (("gallery.retention_days=1e12",), "gallery.retention_days"),  # was an OverflowError
        (("gallery.retention_days=inf",), "gallery.retention_days"),
        (("gallery.forget_tracks=['']",), "gallery.forget_tracks: track_id is empty"),
    ]
    for arguments, message in refusals:
        assert _run(market_site, tmp_path, "forget", *arguments) == 2, arguments
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "gallery").exists()  # nothing was opened, let alone erased

    assert _run(market_site, tmp_path, "add", f"gallery.crops={market_site['crops']}") == 0
    size = json.loads((tmp_path / "results" / "gallery" / "status.json").read_text())["size"]
    capsys.readouterr()
    assert _run(market_site, tmp_path, "forget", "gallery.forget_tracks=['no-such']") == 0
    out, err = capsys.readouterr()
    assert f"forgot 0 crops (tracks no-such); {size} remain" in out
    assert "warning: nothing matched tracks no-such" in err

    assert _run(market_site, tmp_path, "forget", "--all", "--yes") == 0
    out, err = capsys.readouterr()
    assert f"forgot {size} crops (every crop); 0 remain" in out and not err.strip()


def test_cli_and_http_refuse_an_inverted_window_with_the_same_words(market_site, tmp_path, capsys):  # noqa: F811
    assert _run(market_site, tmp_path, "add", f"gallery.crops={market_site['crops']}") == 0
    capsys.readouterr()
    window = ("gallery.start=2026-03-02T00:00:00Z", "gallery.end=2026-03-01T00:00:00Z")
    query = f"gallery.query=[{market_site['query']}]"
    assert _run(market_site, tmp_path, "search", query, *window) == 2
    err = capsys.readouterr().err
    with pytest.raises(ValueError) as http_words:  # what the HTTP request model answers
        validation.window(1772409600.0, 1772323200.0)
    assert str(http_words.value) in err and len(err.strip().splitlines()) == 1
    assert "starts (2026-03-02T00:00:00Z) after it ends (2026-03-01T00:00:00Z)" in err


def test_selection_of_everything_is_not_empty() -> None:
    assert not Selection(crop_ids=(1,)).is_empty()
