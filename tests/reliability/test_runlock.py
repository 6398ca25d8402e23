"""The run lock, exercised with real processes: busy folders, crashed holders, release."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from reidkit.runlock import LOCK_FILE, FolderLockError, read_holder, run_lock

HOLD = """
import sys, time
from pathlib import Path
from reidkit.runlock import run_lock
with run_lock(Path(sys.argv[1]), "train"):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def _holder_process(folder: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert process.stdout is not None and process.stdout.readline() == "locked\n"
    return process


def test_second_run_stops_at_once_naming_the_holder(tmp_path: Path) -> None:
    process = _holder_process(tmp_path / "train")
    try:
        with pytest.raises(FolderLockError) as info, run_lock(tmp_path / "train", "train"):
            pytest.fail("the lock of a live process was taken")
        message = str(info.value)
        assert f"pid {process.pid} on host {socket.gethostname()}" in message
        assert "train run" in message and "started 20" in message and "\n" not in message
    finally:
        process.communicate("done\n", timeout=10)
    assert process.returncode == 0
    with run_lock(tmp_path / "train", "evaluate") as holder:  # released on a clean exit
        assert holder.pid == os.getpid()


def test_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    process = _holder_process(tmp_path / "train")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    stale = read_holder(tmp_path / "train")
    assert stale is not None and stale.pid == process.pid  # its record is left behind

    with run_lock(tmp_path / "train", "train") as holder:
        assert read_holder(tmp_path / "train") == holder
        assert holder.pid == os.getpid()
    assert read_holder(tmp_path / "train") is None  # released: nothing stale reported later


def test_lock_is_not_reentrant_and_released_on_error(tmp_path: Path) -> None:
    with (
        run_lock(tmp_path, "train"),
        pytest.raises(FolderLockError, match=f"pid {os.getpid()}"),
        run_lock(tmp_path, "x"),
    ):
        pass
    with pytest.raises(RuntimeError), run_lock(tmp_path, "train"):
        raise RuntimeError("boom")
    with run_lock(tmp_path, "train"):
        pass


def test_unusable_folder_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with (
        pytest.raises(FolderLockError, match=r"cannot lock results folder '.*file/train'"),
        run_lock(blocker / "train", "train"),
    ):
        pass
    assert (tmp_path / LOCK_FILE).exists() is False
