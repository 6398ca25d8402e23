"""prepare_splits: spec -> checked records, on real and synthetic data, folders and archives."""

from __future__ import annotations

import logging
import shutil
import tarfile
from pathlib import Path

import pytest

from reidkit.config.spec import ExperimentSpec
from reidkit.data.splits import prepare_splits
from reidkit.errors import DatasetError

MARKET_MINI = Path("/work/shared/data/market1501_mini")


def _spec(root: Path, results: Path, num_classes: int, **dataset: object) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "results_dir": str(results),
            "dataset": {
                "train_dataset_dir": str(root / "bounding_box_train"),
                "query_dataset_dir": str(root / "query"),
                "test_dataset_dir": str(root / "bounding_box_test"),
                "num_classes": num_classes,
                **dataset,
            },
        }
    )


def test_market1501_mini(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if not MARKET_MINI.is_dir():
        pytest.skip(f"{MARKET_MINI} is not available on this machine")
    spec = _spec(MARKET_MINI, tmp_path, num_classes=16)
    with caplog.at_level(logging.INFO, logger="reidkit"):
        splits = prepare_splits(spec, train=True)
    assert splits.num_train_ids == 16
    assert len(splits.train) == len(splits.query) == len(splits.gallery) == 32
    assert {r.pid for r in splits.query} <= {r.pid for r in splits.gallery}
    assert all(r.path.is_relative_to(MARKET_MINI) for r in splits.gallery)
    rows = [line.split() for line in caplog.text.splitlines()]
    assert ["train", "16", "32", "6"] in rows and ["gallery", "16", "32", "6"] in rows
    assert not (tmp_path / "datasets").exists()  # folders are used in place


def test_wrong_num_classes_names_the_fix(small_synth: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"has 6 identities; set dataset.num_classes=6$"):
        prepare_splits(_spec(small_synth, tmp_path, num_classes=751), train=True)


def test_evaluation_needs_no_train_split(small_synth: Path, tmp_path: Path) -> None:
    spec = _spec(small_synth, tmp_path, num_classes=751, train_dataset_dir=None)
    splits = prepare_splits(spec, train=False)
    assert splits.train == [] and splits.num_train_ids == 0
    assert 0 in {r.pid for r in splits.gallery}  # distractors stay in the gallery
    assert -1 not in {r.pid for r in splits.gallery}  # junk never does


@pytest.mark.parametrize(
    ("key", "train"),
    [("train_dataset_dir", True), ("query_dataset_dir", False), ("test_dataset_dir", False)],
)
def test_unset_key_is_named(small_synth: Path, tmp_path: Path, key: str, train: bool) -> None:
    spec = _spec(small_synth, tmp_path, num_classes=6, **{key: None})
    with pytest.raises(DatasetError, match=rf"^dataset\.{key} is not set; set it to the"):
        prepare_splits(spec, train=train)


def test_archives_are_extracted_under_results_or_extract_dir(
    small_synth: Path, tmp_path: Path
) -> None:
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        with tarfile.open(tmp_path / f"{folder}.tar.gz", "w:gz") as tar:
            tar.add(small_synth / folder, arcname=folder)
    archives = {
        "train_dataset_dir": str(tmp_path / "bounding_box_train.tar.gz"),
        "query_dataset_dir": str(tmp_path / "query.tar.gz"),
        "test_dataset_dir": str(tmp_path / "bounding_box_test.tar.gz"),
    }
    spec = _spec(small_synth, tmp_path / "results", num_classes=6, **archives)
    splits = prepare_splits(spec, train=True)
    assert splits.train[0].path.is_relative_to(tmp_path / "results" / "datasets")
    assert len(splits.train) == 36

    spec = _spec(small_synth, tmp_path / "r2", 6, extract_dir=str(tmp_path / "x"), **archives)
    splits = prepare_splits(spec, train=False)
    assert splits.query[0].path.is_relative_to(tmp_path / "x")


def test_override_dirs_and_query_gallery_mismatch(
    small_synth: Path, tmp_path: Path, write_image
) -> None:
    other = tmp_path / "other_query"
    write_image(other / "0999_c1s1_000001_00.jpg")
    spec = _spec(small_synth, tmp_path, num_classes=6)
    with pytest.raises(DatasetError, match=r"1 query images \(1 ids: 999\)"):
        prepare_splits(spec, train=False, query_dir=str(other))
    gallery = tmp_path / "gallery"
    write_image(gallery / "0999_c2s1_000002_00.jpg")
    splits = prepare_splits(spec, train=False, query_dir=str(other), gallery_dir=str(gallery))
    assert [r.pid for r in splits.gallery] == [999]


def test_corrupt_image_is_found_before_training(small_synth: Path, tmp_path: Path) -> None:
    root = tmp_path / "copy"
    shutil.copytree(small_synth, root)
    victim = sorted((root / "query").iterdir())[1]
    victim.write_bytes(victim.read_bytes()[:100])
    spec = _spec(root, tmp_path, num_classes=6)
    with pytest.raises(DatasetError, match=rf"1 images cannot be read: '{victim}'"):
        prepare_splits(spec, train=True)
    assert len(prepare_splits(spec, train=True, verify=False).query) > 0
