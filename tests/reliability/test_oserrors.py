"""OSErrors from real file-system conditions become one line naming the path."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest

from reidkit.oserrors import describe_os_error


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
