"""Every user error named in the foundation issue, through the real command line:
exit code 2, a single line naming the file or key, no traceback."""

from __future__ import annotations

import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import RunMain, assert_one_line_error, empty_spec, tiny_overrides


def _copy(synth_root: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(synth_root, data)
    return data


def _corrupt_image(data: Path) -> str:
    victim = sorted((data / "bounding_box_train").iterdir())[5]
    victim.write_bytes(b"\xff\xd8 this is not a jpeg")
    return victim.name


def _empty_gallery(data: Path) -> str:
    for image in (data / "bounding_box_test").iterdir():
        image.unlink()
    return "bounding_box_test"


def _unparsable_names(data: Path) -> str:
    source = sorted((data / "query").iterdir())[0]
    shutil.copy(source, data / "query" / "holiday_photo.jpg")
    return "holiday_photo.jpg"


def _query_id_missing_from_gallery(data: Path) -> str:
    pid = sorted((data / "query").iterdir())[0].name.split("_")[0]
    for image in (data / "bounding_box_test").glob(f"{pid}_*"):
        image.unlink()
    return str(int(pid))


def _missing_train_folder(data: Path) -> str:
    shutil.rmtree(data / "bounding_box_train")
    return "bounding_box_train"


@pytest.mark.parametrize(
    "damage",
    [
        _corrupt_image,
        _empty_gallery,
        _unparsable_names,
        _query_id_missing_from_gallery,
        _missing_train_folder,
    ],
)
def test_dataset_errors_are_one_line(
    damage: Callable[[Path], str], synth_root: Path, tmp_path: Path, run_main: RunMain
) -> None:
    data = _copy(synth_root, tmp_path)
    overrides = tiny_overrides(synth_root, tmp_path / "results")
    overrides = [o.replace(str(synth_root), str(data)) for o in overrides]
    named = damage(data)
    result = run_main("train", "-e", str(empty_spec(tmp_path)), *overrides)
    assert_one_line_error(result, named)
    assert not list((tmp_path / "results").rglob("*.pth"))


def test_hostile_archive_is_refused(synth_root: Path, tmp_path: Path, run_main: RunMain) -> None:
    archive = tmp_path / "train.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(synth_root / "bounding_box_train", arcname="bounding_box_train")
        tar.add(synth_root / "query", arcname="../../escape")
    overrides = [
        *tiny_overrides(synth_root, tmp_path / "results"),
        f"dataset.train_dataset_dir={archive}",
    ]
    result = run_main("train", "-e", str(empty_spec(tmp_path)), *overrides)
    assert_one_line_error(result, "train.tar.gz", "..")
    assert not (tmp_path.parent / "escape").exists()


def test_archive_dataset_trains(synth_root: Path, tmp_path: Path, run_main: RunMain) -> None:
    archive = tmp_path / "sample_train.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(synth_root / "bounding_box_train", arcname="bounding_box_train")
    overrides = [
        *tiny_overrides(synth_root, tmp_path / "results"),
        f"dataset.train_dataset_dir={archive}",
        "train.num_epochs=1",
    ]
    result = run_main("train", "-e", str(empty_spec(tmp_path)), *overrides)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "results" / "train" / "reid_model_latest.pth").is_file()


def test_missing_spec_file_is_one_line(tmp_path: Path, run_main: RunMain) -> None:
    assert_one_line_error(run_main("train", "-e", str(tmp_path / "nope.yaml")), "nope.yaml")


def test_overrides_may_follow_options(tmp_path: Path, run_main: RunMain) -> None:
    """``KEY=VALUE`` after an option was "unrecognized arguments" (argparse ends a ``*``
    positional at the first option); an argument that is neither is still refused."""
    spec = str(empty_spec(tmp_path))
    made = run_main("serve", "token", "-e", spec, "--name", "bob", f"results_dir={tmp_path}")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "serve" / "tokens.json").is_file()
    listed = run_main("serve", "token", "-e", spec, "--list", f"results_dir={tmp_path}")
    assert listed.returncode == 0 and listed.stdout.startswith("bob\t"), listed
    with pytest.raises(SystemExit) as refused:
        run_main("serve", "token", "-e", spec, "--name", "eve", "--bogus")
    assert refused.value.code == 2


@pytest.mark.parametrize("site", [[], ["--site"]])
def test_dataset_synth_with_an_empty_out_is_one_line(
    site: list[str], tmp_path: Path, run_main: RunMain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--out "$DIR"`` with DIR unset: before, the dataset was written into the current
    folder, reported as "wrote synthetic dataset to :", exit 0."""
    monkeypatch.chdir(tmp_path)
    result = run_main("dataset", "synth", "--out", "", "--ids", "3", *site)
    assert_one_line_error(result, "--out", "empty")
    assert list(tmp_path.iterdir()) == []
