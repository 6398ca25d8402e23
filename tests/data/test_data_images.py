"""Image reading: the dataset items, relabelling and the up-front integrity check."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from reidkit.data.dataset import ImageDataset, relabel, verify_images
from reidkit.data.images import decode_rgb
from reidkit.data.market import ImageRecord, load_split
from reidkit.errors import DatasetError

TO_TENSOR = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])


def _record(path: Path, pid: int = 1, camid: int = 1) -> ImageRecord:
    return ImageRecord(path, pid, camid)


@pytest.fixture
def bad_files(tmp_path: Path, write_image) -> dict[str, Path]:
    """One file of each broken kind, next to a good one."""
    good = write_image(tmp_path / "0001_c1s1_000001_00.jpg")
    empty = tmp_path / "0001_c1s1_000002_00.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "0001_c1s1_000003_00.jpg"
    text.write_text("<html>404 not found</html>")
    garbage = tmp_path / "0001_c1s1_000004_00.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    truncated = tmp_path / "0001_c1s1_000005_00.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return {"good": good, "empty": empty, "text": text, "garbage": garbage, "truncated": truncated}


@pytest.mark.parametrize("kind", ["empty", "text", "garbage", "truncated"])
def test_verify_images_catches_each_broken_kind(bad_files: dict[str, Path], kind: str) -> None:
    with pytest.raises(DatasetError) as info:
        verify_images([_record(bad_files["good"]), _record(bad_files[kind])])
    message = str(info.value)
    assert message.startswith(f"1 images cannot be read: '{bad_files[kind]}'")
    assert message.endswith("remove or replace them")


def test_verify_images_names_the_first_three(bad_files: dict[str, Path]) -> None:
    records = [_record(p) for p in bad_files.values()]
    with pytest.raises(DatasetError) as info:
        verify_images(records, max_workers=2)
    message = str(info.value)
    assert message.startswith("4 images cannot be read")
    assert "is empty" in message
    assert str(bad_files["empty"]) in message and str(bad_files["garbage"]) in message
    assert str(bad_files["truncated"]) not in message  # fourth bad file: only counted
    assert "\n" not in message


def test_verify_images_accepts_good_files(tmp_path: Path, write_image) -> None:
    records = [
        _record(write_image(tmp_path / f"0001_c1s1_{i:06d}_00.jpg", size=(64, 128)))
        for i in range(1000)
    ]
    verify_images(records)  # no exception: all 1,000 pass (its speed: benchmarks, not tests)


@pytest.mark.parametrize("kind", ["empty", "text", "garbage", "truncated"])
def test_dataset_names_a_broken_file(bad_files: dict[str, Path], kind: str) -> None:
    dataset = ImageDataset([_record(bad_files[kind])], TO_TENSOR)
    pattern = rf"^image '{bad_files[kind]}' (is empty|is not a readable image|is damaged).*$"
    with pytest.raises(DatasetError, match=pattern):
        dataset[0]


def test_dataset_items_from_real_files(small_synth: Path) -> None:
    records = load_split(small_synth / "bounding_box_train", "train", keep_distractors=False)
    labels = relabel(records)
    with_labels = ImageDataset(records, TO_TENSOR, labels)
    with_pids = ImageDataset(records, TO_TENSOR)

    image, label, camid = with_labels[len(records) - 1]
    assert image.shape == (3, 64, 32) and image.dtype == torch.float32
    assert (label, camid) == (labels[-1], records[-1].camid)
    assert with_pids[len(records) - 1][1] == records[-1].pid
    assert len(with_labels) == len(records)


def test_dataset_converts_grey_and_rgba_to_rgb(tmp_path: Path) -> None:
    Image.new("L", (8, 16), 100).save(tmp_path / "0001_c1s1_000001_00.png")
    Image.new("RGBA", (8, 16), (1, 2, 3, 4)).save(tmp_path / "0001_c1s1_000002_00.png")
    dataset = ImageDataset(load_split(tmp_path, "train", keep_distractors=False), TO_TENSOR)
    assert dataset[0][0].shape == (3, 16, 8) and dataset[1][0].shape == (3, 16, 8)


def test_relabel_is_dense_in_sorted_pid_order() -> None:
    pids = [42, 7, 42, 0, 1500, 7]
    records = [_record(Path(f"{i}.jpg"), pid) for i, pid in enumerate(pids)]
    assert relabel(records) == [2, 1, 2, 0, 3, 1]


def test_dataset_refuses_labels_of_wrong_length() -> None:
    with pytest.raises(ValueError, match="2 labels given for 1 records"):
        ImageDataset([_record(Path("x.jpg"))], TO_TENSOR, labels=[0, 1])


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1"])
def test_other_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    base = Image.fromarray(np.full((8, 4, 3), (200, 100, 50), dtype=np.uint8))
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    base.convert(mode).save(path)
    rgb = np.asarray(decode_rgb(path, "x"))
    reference = np.asarray(Image.open(path).convert("RGB"))  # opaque 8-bit modes: Pillow is right
    assert rgb.shape == (8, 4, 3)
    np.testing.assert_array_equal(rgb, reference)


def test_floating_point_image_is_refused_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "0001_c1s1_000001_00.png"
    Image.fromarray(np.ones((8, 4), dtype=np.float32)).save(path, format="TIFF")
    with pytest.raises(DatasetError, match=r"floating-point pixels \(mode F\)"):
        verify_images([_record(path)])


def test_non_utf8_file_names_load(tmp_path: Path, write_image) -> None:
    folder = tmp_path / "train"
    folder.mkdir()
    raw = os.fsencode(folder) + b"/0001_c1s1_000001_00_caf\xe9.jpg"
    write_image(Path(os.fsdecode(raw)))
    records = load_split(folder, "train", keep_distractors=True)
    assert [os.fsencode(r.path) for r in records] == [raw]
    verify_images(records)
    assert ImageDataset(records, TO_TENSOR)[0][1] == 1


@pytest.mark.parametrize("size", [(1, 1), (5, 3), (7, 200), (300, 2)])
def test_jpegs_under_eight_pixels_wide_or_high_pass_the_up_front_check(
    tmp_path: Path, write_image, size: tuple[int, int]
) -> None:
    """The check decodes JPEGs at 1/8 scale; a side under 8 pixels asked Pillow for a size of
    0 and every action stopped with a ZeroDivisionError traceback."""
    path = write_image(tmp_path / "0001_c1s1_000001_00.jpg", size)
    verify_images([_record(path)])
    assert decode_rgb(path, "image").size == size
