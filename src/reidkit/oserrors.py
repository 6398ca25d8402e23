"""File-system errors on paths the user chose, told as one line that names the path.

A full disk, a read-only folder, a ``results_dir`` that is a file or an output path that is a
folder are problems with the user's paths, not bugs: the CLI shows them as one line (exit 2)
instead of a traceback. :func:`describe_os_error` recognises them by ``errno`` and says what to
do; anything else (a bug, a flaky network mount without a path) keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import stat

# errno -> (what happened, what to do about it)
_USER_ERRNOS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the device", "free space or choose another folder"),
    errno.EDQUOT: ("disk quota exceeded", "free space or choose another folder"),
    errno.EROFS: ("the file system is read-only", "choose a writable folder"),
    errno.EACCES: ("permission denied", "choose a folder you can write, or fix its permissions"),
    errno.EPERM: ("operation not permitted", "choose a folder you can write"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "fix the path"),
    errno.EISDIR: ("it is a folder, not a file", "name a file"),
    errno.ENOENT: ("it does not exist", "fix the path"),
    errno.EEXIST: ("it already exists", "remove it or choose another name"),
    errno.ENAMETOOLONG: ("the name is too long", "choose a shorter path"),
    errno.EFBIG: ("the file is too large for the file system", "choose another folder"),
}


# What a path is when it is neither a regular file nor a folder, by its stat mode.
_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def special_file_kind(path: str | os.PathLike[str]) -> str | None:
    """What ``path`` is when it exists but is neither a regular file nor a folder (a device, a
    FIFO, a socket), else None.

    Such a path is not missing, and saying it does not exist sends the user looking in the
    wrong place. Only ``os.stat`` looks at it: opened for reading, a FIFO waits for a writer
    for ever and a device such as ``/dev/zero`` never ends.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return next((kind for test, kind in _SPECIAL_FILES if test(mode)), None)


def describe_os_error(exc: OSError) -> str | None:
    """One line for an ``OSError`` on a user path, or None if it is not one of those."""
    if exc.errno not in _USER_ERRNOS:
        return None
    what, fix = _USER_ERRNOS[exc.errno]
    if exc.filename is None:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return f"cannot write: {what}; {fix}"
        return None  # without a path the user cannot act on it: keep the traceback
    target = f"'{exc.filename}'"
    if exc.filename2 is not None:
        target += f" -> '{exc.filename2}'"
    return f"cannot use {target}: {what}; {fix}"
