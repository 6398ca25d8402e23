"""A record of image files that already decoded cleanly, so later runs skip decoding them again.

:func:`reidkit.data.dataset.verify_images` decodes every image before a run starts (2.2 s of
a CUHK03 start-up on 2 CPU cores). The same files are checked again by every train, evaluate
and inference run, so a file is skipped when its path, size, modification time and change
time all match a clean decode recorded earlier: rewriting, truncating, replacing or
re-extracting a file changes one of them, and that file is decoded again. Files modified
within :data:`RACY_SECONDS` of the check are never recorded, because file-system timestamps
are coarse (a few milliseconds) and a same-size rewrite in that window would keep its stamp
(git's "racy clean" rule).

The record is one SQLite file in the user's cache folder (``$REIDKIT_CACHE_DIR``, else
``$XDG_CACHE_HOME/reidkit``, else ``~/.cache/reidkit``; delete it to force a full check). SQLite
lets several processes (DDP ranks) read and write it at once. A cache that cannot be opened or
written costs only the time it would have saved: the images are then all decoded.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("reidkit")

CACHE_DIR_VARIABLE = "REIDKIT_CACHE_DIR"
RACY_SECONDS = 2.0
# Rows are dropped this long after they were written (a file still in use is then decoded once
# more and recorded again), so datasets that were deleted or extracted to temporary folders do
# not grow the file forever.
FORGET_AFTER_SECONDS = 30 * 24 * 3600
# SQLite's limit on parameters per statement is 32766 in current versions, 999 in old ones.
_CHUNK = 900

Stamp = tuple[int, int, int]


def _key(path: Path) -> bytes:
    """The absolute path as bytes: file names need not be valid UTF-8, SQLite text must be."""
    return os.fsencode(os.path.abspath(path))


def cache_dir() -> Path:
    """Where reidkit keeps caches that only save time (safe to delete at any moment)."""
    if configured := os.environ.get(CACHE_DIR_VARIABLE):
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "reidkit"


def _stamp(path: bytes) -> Stamp | None:
    """Size, modification and change time in ns; None when the file cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


class VerifiedImages:
    """Which files decoded cleanly before, by path and stamp; see the module docstring.

    Use :meth:`unverified` before decoding and :meth:`remember` after: the stamps are taken
    before decoding, so a file that changes while it is being decoded is checked again next
    time.
    """

    def __init__(self, db_file: Path) -> None:
        self.db_file = db_file
        self._stamps: dict[bytes, Stamp] = {}
        self._checked_at = 0.0

    def unverified(self, paths: Sequence[Path]) -> list[Path]:
        """The paths that have no matching clean decode on record (all of them on any error)."""
        self._checked_at = time.time()
        keys = [_key(p) for p in paths]
        self._stamps = {k: s for k in keys if (s := _stamp(k)) is not None}
        try:
            known = self._known(keys)
        except (sqlite3.Error, OSError) as exc:
            log.debug("image check cache %s not used: %s", self.db_file, exc)
            known = {}
        # A file that cannot be stat'ed (gone, a dangling link) has no stamp, and neither has
        # it a record: it must still be decoded, so that it is refused by name up front.
        return [
            p
            for p, k in zip(paths, keys, strict=True)
            if k not in self._stamps or known.get(k) != self._stamps[k]
        ]

    def remember(self, clean: Sequence[Path]) -> None:
        """Record the files of the last :meth:`unverified` call that are known to decode."""
        racy_ns = int((self._checked_at - RACY_SECONDS) * 1e9)
        rows = []
        for path in clean:
            key = _key(path)
            stamp = self._stamps.get(key)
            if stamp is not None and max(stamp[1], stamp[2]) < racy_ns:
                rows.append((key, *stamp, int(self._checked_at)))
        try:
            with self._connect() as db:
                db.executemany("INSERT OR REPLACE INTO verified VALUES (?, ?, ?, ?, ?)", rows)
                db.execute(
                    "DELETE FROM verified WHERE seen < ?",
                    (int(self._checked_at - FORGET_AFTER_SECONDS),),
                )
            db.close()
        except (sqlite3.Error, OSError) as exc:
            log.debug("image check cache %s not written: %s", self.db_file, exc)

    def _known(self, keys: list[bytes]) -> dict[bytes, Stamp]:
        if not self.db_file.exists():
            return {}
        known: dict[bytes, Stamp] = {}
        db = self._connect()
        try:
            for start in range(0, len(keys), _CHUNK):
                chunk = keys[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = db.execute(
                    f"SELECT path, size, mtime_ns, ctime_ns FROM verified WHERE path IN ({marks})",
                    chunk,
                )
                known.update((row[0], tuple(row[1:])) for row in rows)
        finally:
            db.close()
        return known

    def _connect(self) -> sqlite3.Connection:
        self.db_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        db = sqlite3.connect(self.db_file, timeout=30)
        db.execute(
            "CREATE TABLE IF NOT EXISTS verified (path BLOB PRIMARY KEY, size INTEGER, "
            "mtime_ns INTEGER, ctime_ns INTEGER, seen INTEGER)"
        )
        return db


def default_verified_images() -> VerifiedImages:
    """The user's record of clean decodes (``image_checks.sqlite`` in :func:`cache_dir`)."""
    return VerifiedImages(cache_dir() / "image_checks.sqlite")
