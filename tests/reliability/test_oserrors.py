"""OSErrors from real file-system conditions become one line naming the path."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest

from reidkit.data import synthesize
from reidkit.oserrors import describe_os_error
from reidkit.outputs import atomic_open
from tests.conftest import RunMain, assert_one_line_error, empty_spec
from tests.export.conftest import make_checkpoint


def _raised(action) -> OSError:
    with pytest.raises(OSError) as info:
        action()
    return info.value


def test_file_in_the_way_and_folder_as_a_file(tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.write_text("not a folder")
    error = _raised(lambda: (results / "train").mkdir(parents=True))
    assert describe_os_error(error) == (
        f"cannot use '{results / 'train'}': a part of the path is a file, not a folder; "
        "fix the path"
    )
    error = _raised(lambda: tmp_path.write_text("x"))
    message = f"cannot use '{tmp_path}': it is a folder, not a file; name a file"
    assert describe_os_error(error) == message


def test_a_file_where_an_output_folder_goes_is_named_as_a_file(
    tmp_path: Path, run_main: RunMain
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, where a folder would be made")
    not_a_folder = "a part of the path is a file, not a folder; fix the path"
    with pytest.raises(OSError) as raised, atomic_open(blocker / "out.json") as handle:
        handle.write("{}")
    assert describe_os_error(raised.value) == f"cannot use '{blocker}': {not_a_folder}"

    # What a user sees: inference told to write its output inside that file.
    synthesize(tmp_path / "data", ids=3, cameras=2, images_per_id=2, height=64, width=32, seed=1)
    spec = make_checkpoint(tmp_path, "model.backbone=resnet_18")
    result = run_main(
        "inference", "-e", str(empty_spec(tmp_path)),
        f"results_dir={tmp_path / 'results'}",
        "model.backbone=resnet_18", "model.input_height=64", "model.input_width=32",
        "model.feat_dim=64", "dataset.num_workers=0",
        f"dataset.test_dataset_dir={tmp_path / 'data' / 'bounding_box_test'}",
        f"dataset.query_dataset_dir={tmp_path / 'data' / 'query'}",
        f"inference.checkpoint={spec.export.checkpoint}",
        f"inference.output_file={blocker / 'embeddings.json'}",
    )  # fmt: skip
    assert_one_line_error(result, f"'{blocker}'", not_a_folder)
    assert "already exists" not in result.stderr

    # ... and a run whose results folder is taken by a file.
    results = tmp_path / "results"
    (results / "export").write_text("a file, where the export folder goes")
    result = run_main(
        "export", "-e", str(empty_spec(tmp_path)), f"results_dir={results}",
        f"export.checkpoint={spec.export.checkpoint}",
    )  # fmt: skip
    assert_one_line_error(result, f"'{results / 'export'}'", "Not a directory")


def test_unrelated_errors_keep_their_traceback() -> None:
    assert describe_os_error(OSError(errno.EBADF, "Bad file descriptor")) is None
    assert describe_os_error(OSError(errno.EACCES, "Permission denied")) is None  # no path


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_and_read_only_file_system(small_tmpfs: Path) -> None:
    def fill() -> None:
        with open(small_tmpfs / "big", "wb") as handle:
            handle.write(b"\0" * 2**20)

    error = _raised(fill)
    assert error.errno == errno.ENOSPC
    assert describe_os_error(error) == (
        "cannot write: no space left on the device; free space or choose another folder"
    )
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    error = _raised(lambda: (small_tmpfs / "x").write_text("x"))
    assert describe_os_error(error) == (
        f"cannot use '{small_tmpfs / 'x'}': the file system is read-only; choose a writable folder"
    )
