"""Market-1501 name parsing, split loading and the dataset consistency checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from reidkit.data.market import (
    ImageRecord,
    check_num_classes,
    check_query_in_gallery,
    load_split,
    parse_name,
    split_table,
)
from reidkit.errors import DatasetError

CUHK03_QUERY = Path("/work/shared/data/cuhk03_detected/query")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("0002_c1s1_000451_03.jpg", (2, 1)),
        ("1501_c6s4_001902_01.jpg", (1501, 6)),
        ("-1_c3s2_012345_00.jpg", (-1, 3)),  # junk: TAO parses this as person 1
        ("0000_c5s1_004561_01.jpg", (0, 5)),  # distractor
        ("0000_c1s1_000000_00.jpg", (0, 1)),  # CUHK03 in Market layout (0-based ids)
        ("0742_c2s1_000009_00.jpg", (742, 2)),
        ("0012_c2_f0087640.jpg", (12, 2)),  # DukeMTMC-style
        ("0012_c4.png", (12, 4)),
        ("0012_c14s1_000001_00.jpg", (12, 14)),
    ],
)
def test_parse_name_reads_id_and_camera(name: str, expected: tuple[int, int]) -> None:
    assert parse_name(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "img_001.jpg",
        "0001c1s1_000451_03.jpg",
        "0001_s1_000451.jpg",
        "-2_c1s1_000001_00.jpg",
        "0001_c0s1_000001_00.jpg",
        "0001_c1x.jpg",
        "abcd_c1s1_000001_00.jpg",
        "0001_cam1.jpg",
    ],
)
def test_parse_name_refuses_other_names(name: str) -> None:
    assert parse_name(name) is None


def test_parse_name_reads_every_real_cuhk03_name() -> None:
    if not CUHK03_QUERY.is_dir():
        pytest.skip(f"{CUHK03_QUERY} is not available on this machine")
    parsed = [parse_name(p.name) for p in sorted(CUHK03_QUERY.iterdir())]
    assert None not in parsed
    assert {pid for pid, _ in parsed} >= {0, 1, 99}
    assert {cam for _, cam in parsed} == {1, 2}


def test_load_split_reads_all_suffixes_and_skips_strays(tmp_path: Path, write_image) -> None:
    for name in [
        "0002_c1s1_000001_00.jpg",
        "0002_c2s1_000002_00.JPEG",
        "0003_c1s1_000003_00.png",
        "0003_c3s1_000004_00.bmp",
        "-1_c1s1_000005_00.jpg",
        "0000_c2s1_000006_00.jpg",
    ]:
        write_image(tmp_path / name)
    (tmp_path / "Thumbs.db").write_bytes(b"\x00" * 10)
    (tmp_path / "readme.txt").write_text("not an image")
    (tmp_path / ".DS_Store").write_bytes(b"\x00")
    (tmp_path / "._0002_c1s1_000001_00.jpg").write_bytes(b"\x00")  # macOS shadow file
    (tmp_path / "sub").mkdir()

    train = load_split(tmp_path, "train", keep_distractors=False)
    gallery = load_split(tmp_path, "gallery", keep_distractors=True)

    assert [(r.path.name, r.pid, r.camid) for r in train] == [
        ("0002_c1s1_000001_00.jpg", 2, 1),
        ("0002_c2s1_000002_00.JPEG", 2, 2),
        ("0003_c1s1_000003_00.png", 3, 1),
        ("0003_c3s1_000004_00.bmp", 3, 3),
    ]
    assert [r.pid for r in gallery] == [0, 2, 2, 3, 3]
    assert all(r.path.parent == tmp_path for r in gallery)


def test_load_split_reads_synthetic_dataset(small_synth: Path) -> None:
    records = load_split(small_synth / "bounding_box_train", "train", keep_distractors=False)
    assert len({r.pid for r in records}) == 6
    assert records == sorted(records, key=lambda r: r.path.name)


def test_load_split_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"query folder '.*nowhere' does not exist"):
        load_split(tmp_path / "nowhere", "query", keep_distractors=False)


def test_load_split_file_instead_of_folder(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("x")
    with pytest.raises(DatasetError, match="is not a folder"):
        load_split(tmp_path / "train.txt", "train", keep_distractors=False)


def test_load_split_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match=r"holds no \.jpg/\.jpeg/\.png/\.bmp images"):
        load_split(tmp_path, "train", keep_distractors=False)


def test_load_split_dataset_root_instead_of_split(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "bounding_box_train" / "0001_c1s1_000001_00.jpg")
    (tmp_path / "query").mkdir()
    with pytest.raises(DatasetError, match=r"only folders \(bounding_box_train, query\)"):
        load_split(tmp_path, "train", keep_distractors=False)


def test_load_split_only_junk(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "-1_c1s1_000001_00.jpg")
    write_image(tmp_path / "0000_c1s1_000002_00.jpg")
    with pytest.raises(DatasetError, match="only junk"):
        load_split(tmp_path, "query", keep_distractors=False)


def test_load_split_names_bad_file_names(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "0001_c1s1_000001_00.jpg")
    for name in ["a.jpg", "b.jpg", "c.jpg", "d.png"]:
        write_image(tmp_path / name)
    with pytest.raises(DatasetError) as info:
        load_split(tmp_path, "train", keep_distractors=False)
    message = str(info.value)
    assert message.startswith("4 image names in train folder")
    assert "'a.jpg', 'b.jpg', 'c.jpg'" in message and "d.png" not in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "twin", ["0001_c1s1_000001_00.png", "0001_C1S1_000001_00.jpg", "0001_c1s1_000001_00.JPG"]
)
def test_one_crop_under_two_names_is_refused(tmp_path: Path, write_image, twin: str) -> None:
    """A crop left beside its conversion (or a copy differing in case) was two crops: it was
    ranked twice and moved mAP without a word."""
    write_image(tmp_path / "0001_c1s1_000001_00.jpg")
    write_image(tmp_path / "0002_c2s1_000002_00.jpg")
    write_image(tmp_path / twin)
    with pytest.raises(DatasetError, match=r"are one crop under two names .* keep one$"):
        load_split(tmp_path, "query", keep_distractors=False)


@pytest.mark.parametrize("target", ["gone.jpg", "self"])
def test_a_link_to_nothing_named_as_an_image_is_refused(
    tmp_path: Path, write_image, target: str
) -> None:
    """A link whose target moved (or that points at itself) was skipped: the split was
    evaluated on fewer images than the folder holds, and all such links read as 'no images'."""
    write_image(tmp_path / "0001_c1s1_000001_00.jpg")
    link = tmp_path / "0002_c2s1_000002_00.jpg"
    link.symlink_to(link if target == "self" else tmp_path / target)
    with pytest.raises(DatasetError, match=r"0002_c2s1_000002_00.jpg' is a link to nothing"):
        load_split(tmp_path, "gallery", keep_distractors=True)
    (tmp_path / "elsewhere").mkdir()
    write_image(tmp_path / "elsewhere" / "x.jpg")
    link.unlink()
    link.symlink_to(tmp_path / "elsewhere" / "x.jpg")  # a link to an image is an image
    assert len(load_split(tmp_path, "gallery", keep_distractors=True)) == 2


def _records(pids: list[int], folder: str = "/data/train") -> list[ImageRecord]:
    return [ImageRecord(Path(folder) / f"{p:04d}_c1_{i}.jpg", p, 1) for i, p in enumerate(pids)]


def test_check_num_classes_message() -> None:
    train = _records([1, 1, 2, 5, 9])
    check_num_classes(train, 4)
    with pytest.raises(DatasetError) as info:
        check_num_classes(train, 751)
    assert str(info.value) == (
        "dataset.num_classes is 751 but the train split '/data/train' has 4 identities; "
        "set dataset.num_classes=4"
    )


def test_check_query_in_gallery_message() -> None:
    gallery = _records([1, 2, 3], "/data/gallery")
    check_query_in_gallery(_records([1, 3, 3], "/data/query"), gallery)
    query = _records([1, 4, 4, 5, 6, 7, 8, 9, 10], "/data/query")
    with pytest.raises(DatasetError) as info:
        check_query_in_gallery(query, gallery)
    message = str(info.value)
    assert message.startswith("8 query images (7 ids: 4, 5, 6, 7, 8, ...) in '/data/query'")
    assert "'/data/gallery'" in message


def test_split_table_counts() -> None:
    train = [
        ImageRecord(Path(f"{i}.jpg"), pid, cam)
        for i, (pid, cam) in enumerate([(1, 1), (1, 2), (2, 3), (3, 1)])
    ]
    table = split_table({"train": train, "query": train[:1]}).splitlines()
    assert table[0].split() == ["split", "ids", "images", "cameras"]
    assert table[1].split() == ["train", "3", "4", "3"]
    assert table[2].split() == ["query", "1", "1", "1"]
