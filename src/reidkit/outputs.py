"""Result files every action leaves behind, written atomically: the one place that does so.

Every file reidkit writes goes through :func:`staged_path` (directly, or via
:func:`atomic_open`): readers, and a rerun after a crash, see the old file or the complete new
one, never half a file. A run killed mid-write (SIGKILL, a power cut) leaves its staged file
behind, a full-size checkpoint among them; the next run in that folder removes it
(:func:`remove_stale_staged`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def staged_path(path: Path) -> Iterator[Path]:
    """A new empty file beside ``path`` to write; renamed over ``path`` when the block succeeds.

    For writers that need a file name (ONNX, a file checked before it is kept). The file is
    created with mode 0666 so the process umask applies as for any other output, without
    reading (which means changing) the process-wide umask. On an exception the staged file is
    removed and ``path`` is untouched.
    """
    path = Path(path)
    staged = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")  # _STAGED
    try:
        make_folder(path.parent)
        os.close(os.open(staged, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except OSError as exc:
        raise _naming(exc, path) from None
    try:
        yield staged
        descriptor = os.open(staged, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(staged, path)
    except OSError as exc:
        staged.unlink(missing_ok=True)
        raise _naming(exc, path) from None
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


def make_folder(folder: Path) -> None:
    """Create ``folder`` and any missing parents; a file standing in its place is ENOTDIR.

    ``mkdir`` reports a file where the folder goes as EEXIST, which reads "it already exists"
    to the user (as if the folder were there); it is raised as what it is, a part of the path
    that is a file, naming ``folder`` (:func:`reidkit.oserrors.describe_os_error`).
    """
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder)) from None


# The names :func:`staged_path` gives: ".<target>.<writer's pid>.<12 hex digits>.tmp".
_STAGED = re.compile(r"\.(?P<target>.+)\.(?P<pid>[0-9]+)\.[0-9a-f]{12}\.tmp")


def remove_stale_staged(folder: Path) -> list[Path]:
    """Remove the staged files a killed writer left in ``folder``; returns what was removed.

    Only what is provably stale goes: a plain file named as :func:`staged_path` names them,
    written by a process that no longer runs on this machine. Call it only while holding the
    folder's run lock (:func:`reidkit.runlock.run_lock`): no other run then writes there, so
    a file of another machine cannot be in flight either.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _STAGED.fullmatch(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        pid = int(match["pid"])
        if not 0 < pid < 2**31 or process_running(pid):
            continue  # not a pid staged_path writes, or its writer still runs
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def process_running(pid: int) -> bool:
    """Whether process ``pid`` (> 0) exists on this machine; a pid reused since counts too."""
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` with ``path`` as its file name when it has none (a write on a full disk).

    The user chose ``path``; naming it lets the CLI say which output could not be written.
    """
    if exc.filename is not None:
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


@contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a staged file (see :func:`staged_path`) for writing; it replaces ``path`` on success.

    Text is always UTF-8, whatever the locale.
    """
    encoding = None if "b" in mode else "utf-8"
    with staged_path(path) as staged, open(staged, mode, encoding=encoding) as handle:
        yield handle


def path_text(path: str | os.PathLike[str]) -> str:
    """A path as UTF-8-safe text for JSON and CSV outputs.

    File names are bytes on POSIX; Python carries undecodable bytes as lone surrogates, which
    cannot be written as UTF-8 (inference crashed halfway on such a name). They are written as
    ``\\xNN`` escapes instead, so every output stays valid UTF-8 and names the file legibly.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically, so readers never see half a file."""
    with atomic_open(path) as handle:
        json.dump(data, handle, indent=2)


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or unreadable (e.g. a foreign file)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
