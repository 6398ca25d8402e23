"""The per-identity and MARS layouts, read where every split is read (``load_split``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reidkit.data import MarsName, load_split, parse_mars_name
from reidkit.errors import DatasetError
from tests.conftest import SHARED

PKU = SHARED / "data" / "pku_views"
MARS = SHARED / "data" / "mars_mini"


def test_pku_views_identity_folders_with_cameras_from_the_names() -> None:
    train = load_split(PKU / "train", "train", keep_distractors=True)
    assert len(train) == 992 and len({r.pid for r in train}) == 62
    assert {r.camid for r in train} == {1, 2}
    first = train[0]
    assert (first.path.parent.name, first.path.name, first.pid, first.camid) == (
        "001",
        "01_1.png",
        1,
        1,
    )
    assert all(r.camid == int(r.path.name.split("_")[0]) for r in train)
    assert all(r.track is None for r in train)
    query = load_split(PKU / "val" / "query", "query", keep_distractors=True)
    gallery = load_split(PKU / "val" / "gallery", "gallery", keep_distractors=True)
    assert (len(query), len(gallery)) == (28, 181)
    assert {r.pid for r in query} == {r.pid for r in gallery} and len({r.pid for r in query}) == 12


def test_mars_names_give_camera_and_tracklet() -> None:
    train = load_split(MARS / "bbox_train", "train", keep_distractors=True)
    assert len({r.pid for r in train}) == 16 and len({r.track for r in train}) == 32
    assert {r.camid for r in train} <= set(range(1, 7))
    record = train[0]
    assert record.path.name == "0003C4T0003F001.jpg"
    assert (record.pid, record.camid, record.track) == (3, 4, "0003C4T0003")
    test = load_split(MARS / "bbox_test", "test", keep_distractors=True)
    assert len({r.track for r in test}) == 64
    # Every tracklet is one person in one camera.
    assert all(
        len({(r.pid, r.camid) for r in test if r.track == t}) == 1 for t in {r.track for r in test}
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("0003C4T0003F001.jpg", MarsName(3, 4, "0003C4T0003", 1)),
        ("00-1C1T0001F017.jpg", MarsName(-1, 1, "00-1C1T0001", 17)),
        ("1234C6T0100F999.png", MarsName(1234, 6, "1234C6T0100", 999)),
    ],
)
def test_parse_mars_name(name: str, expected: MarsName) -> None:
    assert parse_mars_name(name) == expected


@pytest.mark.parametrize(
    "name", ["0003_c4s1_000001_00.jpg", "0003C4T3.jpg", "C4T0003F001.jpg", "01_1.png"]
)
def test_parse_mars_name_refuses_other_names(name: str) -> None:
    assert parse_mars_name(name) is None


def test_identity_folders_of_every_naming_junk_skipped(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "0007" / "0007C2T0001F001.jpg")
    write_image(tmp_path / "0007" / "0007_c3s1_000001_00.jpg")
    write_image(tmp_path / "0008" / "05_front.png")
    write_image(tmp_path / "00-1" / "00-1C1T0001F001.jpg")
    (tmp_path / "0008" / "notes.txt").write_text("stray")
    records = load_split(tmp_path, "gallery", keep_distractors=True)
    assert [(r.pid, r.camid, r.track) for r in records] == [
        (7, 2, "0007C2T0001"),
        (7, 3, None),
        (8, 5, None),
    ]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            ["0001/front.jpg", "0001/01_ok.jpg"],
            r"1 image names .* name no camera \(e\.g\. '0001/front\.jpg'\)",
        ),
        (
            ["0001/01_1.jpg", "extra/01_1.jpg"],
            r"only folders \(0001, extra\).*one folder per identity",
        ),
    ],
    ids=["no camera in a name", "a folder that is no identity"],
)
def test_identity_layout_errors(
    tmp_path: Path, write_image, files: list[str], message: str
) -> None:
    for name in files:
        write_image(tmp_path / name)
    with pytest.raises(DatasetError, match=message):
        load_split(tmp_path, "train", keep_distractors=True)
