"""One writer per results folder: an exclusive lock held for the whole run of an action.

Two runs writing one results folder overwrite each other's checkpoints silently, and the first
then reports scores for weights the second wrote. :func:`run_lock` takes an ``flock`` on a lock
file inside the action folder, so a second run stops at once with one line naming the holder
(pid, host, start time) read from that file.

The kernel drops an ``flock`` when its holder dies, however it dies (SIGKILL, OOM killer), so a
stale lock never needs cleaning: the next run simply gets the lock and overwrites the holder
information left behind. What a killed holder was writing (a staged checkpoint, as large as a
real one) is removed by the next run once it holds the lock
(:func:`reidkit.outputs.remove_stale_staged`). The lock file itself is never deleted: deleting
it would let a run that opened the old file and one that created a new file both believe they
hold the lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from reidkit.errors import ReidkitError
from reidkit.outputs import make_folder, remove_stale_staged

log = logging.getLogger("reidkit")

LOCK_FILE = ".reidkit.lock"


class FolderLockError(ReidkitError):
    """The results folder is held by another run, or cannot be locked at all."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds a folder: enough for a user to find the other run (or see it is theirs)."""

    pid: int
    host: str
    started: str
    action: str

    def describe(self) -> str:
        return f"{self.action} run pid {self.pid} on host {self.host}, started {self.started}"


@contextmanager
def run_lock(folder: Path, action: str) -> Iterator[LockHolder]:
    """Hold ``folder`` exclusively for the body; raise :class:`FolderLockError` if taken.

    ``folder`` is created if needed. The lock is not re-entrant: a second ``run_lock`` on the
    same folder from the same process is refused too, as it would be from another process.
    """
    folder = Path(folder)
    path = folder / LOCK_FILE
    try:
        make_folder(folder)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise FolderLockError(
            f"cannot lock results folder '{folder}' ({exc.strerror or exc}); "
            "check the path is a writable folder or choose another results_dir"
        ) from None
    try:
        _acquire(fd, folder)
        holder = LockHolder(
            pid=os.getpid(),
            host=socket.gethostname(),
            started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            action=action,
        )
        try:
            _write_holder(fd, holder)
        except OSError as exc:
            raise FolderLockError(
                f"cannot write lock file '{path}' ({exc.strerror or exc}); free space there "
                "or choose another results_dir"
            ) from None
        for stale in remove_stale_staged(folder):
            log.info("removed '%s', left by a run that was killed while writing it", stale)
        try:
            yield holder
        finally:
            os.ftruncate(fd, 0)  # the folder is free again; no stale holder to report
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


def read_holder(folder: Path) -> LockHolder | None:
    """The holder recorded in ``folder``'s lock file; None if there is none or it is unreadable."""
    try:
        data = json.loads((Path(folder) / LOCK_FILE).read_text())
        return LockHolder(**data)
    except (OSError, ValueError, TypeError):
        return None


def _acquire(fd: int, folder: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = read_holder(folder)
        who = holder.describe() if holder else "another run (its details are not written yet)"
        raise FolderLockError(
            f"results folder '{folder}' is in use by {who}; wait for it to finish, stop it, "
            "or choose another results_dir"
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        raise FolderLockError(
            f"results folder '{folder}' is on a file system without locks ({exc.strerror}); "
            "choose a results_dir on a local disk"
        ) from None


def _write_holder(fd: int, holder: LockHolder) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(asdict(holder)).encode(), 0)
    os.fsync(fd)
