"""Issue 25: a gallery on a read-only mount opens for search (and serve), writes nothing in its
folder, refuses changes in one line, and audits to a writable place or warns that it cannot."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from reidkit.gallery.factory import open_gallery
from reidkit.gallery.store import GalleryError, Selection
from tests.gallery.conftest import CARD, brute_force, site


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.fixture
def filled(tmp_path: Path) -> tuple[Path, np.ndarray, list]:
    vectors, metas = site(300, seed=7)
    folder = tmp_path / "gallery"
    with open_gallery(folder, CARD, create=True, ann_min_size=100) as gallery:
        gallery.add(vectors, metas)
        gallery.optimise()  # an ANN index file too: read, never rewritten
    (folder / ".lock").unlink(missing_ok=True)
    for lock in folder.rglob(".lock"):
        lock.unlink()
    return folder, vectors, metas


def _search_and_refuse(folder: Path, vectors: np.ndarray, metas: list, **options) -> None:
    with open_gallery(folder, CARD, read_only=True, ann_min_size=100, **options) as gallery:
        assert gallery.backend.ann_index is not None
        hits = gallery.search(vectors[:3], k=5, exact=True, operator="desk")
        for got, want in zip(hits, brute_force(vectors, metas, vectors[:3], 5), strict=True):
            assert [h.meta.path for h in got] == [p for p, _ in want]
        assert len(gallery.search(vectors[:2], k=5)[0]) == 5  # through the ANN index
        for change in (
            lambda: gallery.add(vectors[:1], [dataclasses.replace(metas[0], path="new.jpg")]),
            lambda: gallery.forget(Selection(track_ids=(metas[0].track_id,))),
            gallery.forget_all,
            gallery.optimise,
        ):
            with pytest.raises(GalleryError, match="is open read-only") as refused:
                change()
            assert "\n" not in str(refused.value)


def test_read_only_flag_searches_writes_nothing_and_audits_elsewhere(filled, tmp_path, caplog):
    folder, vectors, metas = filled
    before = _snapshot(folder)
    audit = tmp_path / "elsewhere" / "audit.jsonl"
    audit.parent.mkdir()
    _search_and_refuse(folder, vectors, metas, audit_file=audit)
    assert _snapshot(folder) == before  # no lock file, journal, audit line or repair
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [r["action"] for r in records] == ["search", "search"]
    assert records[0]["operator"] == "desk"

    with caplog.at_level(logging.WARNING, logger="reidkit"):
        _search_and_refuse(folder, vectors, metas)  # no audit file: one warning, then quiet
    warnings = [r.getMessage() for r in caplog.records if "read-only" in r.getMessage()]
    assert len(warnings) == 1 and "audit records of this process are not kept" in warnings[0]
    assert _snapshot(folder) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod a-w")
def test_a_folder_without_write_permission_opens_read_only(filled) -> None:
    folder, vectors, metas = filled
    modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
    for path in modes:
        path.chmod(stat.S_IMODE(modes[path]) & ~0o222)
    try:
        _search_and_refuse(folder, vectors, metas)
    finally:
        for path, mode in modes.items():
            path.chmod(stat.S_IMODE(mode))


def test_a_missing_gallery_is_not_created_read_only(tmp_path) -> None:
    with pytest.raises(GalleryError, match="not a gallery"):
        open_gallery(tmp_path / "nowhere", CARD, create=True, read_only=True)
    assert not (tmp_path / "nowhere").exists()
