"""The default gallery backend: one local folder, no server.

Layout of a gallery folder (``gallery.json`` records the format version)::

    gallery.json             format name and version, and which folder holds the data; a newer
                             version is refused
    audit.jsonl              one line per add/search/forget/rebuild: operator, time, request
    <data>/                  the folder itself (format 1), or ``v<N>`` after N rebuilds
                             (format 2, ``"data": "v<N>"``):
      meta.sqlite            one row per crop (path, camera, time, track, site, zone, thumbnail)
                             and the settings: model card, dimension, generation, ANN state
      vectors.<gen>.f32      [rows, dim] float32, L2-normalised, in crop-id order
      ids.<gen>.i8           crop id of each row           } columns memory-mapped beside the
      cameras.<gen>.i4       camera of each row            } vectors, so that camera/time
      times.<gen>.f8         unix timestamp of each row    } filters never touch SQLite
      text.<gen>.r192        one 192-byte record per row: time, camera, path, track, site,
                             zone, so that a search's hit is one read that never touches
                             SQLite (a longer text says "in SQLite"); replaces the ``t160``
                             text-only column of older folders
      ann.<token>.faiss      optional IVF-Flat index (inner product, ids = crop ids)
      .lock                  writers (insert, delete, index builds, a switch) take it
    v<N+1>/                  the next version while ``gallery rebuild`` fills it

Crash safety: SQLite is the commit point. An insert appends to the column files, fsyncs them,
then commits the rows and the new row count in one transaction; on open, column files are
cut back to the committed row count, so a kill at any instant leaves each crop either stored
once or not at all, and a rerun (which skips stored paths) completes it. (A text column that is
missing, as in folders written before it existed or in its older ``t160`` layout, or shorter,
is rebuilt from SQLite on open; until then, and in a read-only folder, hits read SQLite.) A delete
writes the surviving rows to the next generation's files, commits the deletion and the new
generation together, then zeroes the removed rows in the old vector and text files and deletes
them; SQLite runs with
``secure_delete`` and is vacuumed, so no forgotten byte stays in any file of the folder.
Switching to a rebuilt version replaces ``gallery.json`` atomically (the commit point), marks
the old version superseded (other processes follow to the new one at their next call) and
deletes its files; a kill in between is finished by the next open.

Search: exact by default, a torch matmul over the memory-mapped matrix in gallery chunks; once
the gallery reaches ``ann_min_size`` crops an IVF-Flat index answers unfiltered queries, with
the not-yet-indexed tail searched exactly and merged. Camera/time filters select rows from
the memory-mapped columns first and search only those, exactly, so a filtered result is the
exact filtered result.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import mmap
import os
import re
import shutil
import sqlite3
import struct
import threading
import uuid
import warnings
from bisect import bisect_left
from collections.abc import Hashable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import torch

from reidkit.evaluation.metrics import _normalized_distance
from reidkit.gallery.store import (
    Backend,
    CropFilter,
    CropMeta,
    GalleryError,
    Hit,
    Selection,
    Settings,
    StoredCrop,
    Summary,
)
from reidkit.outputs import write_json

logger = logging.getLogger(__name__)

FORMAT_NAME = "reidkit-gallery"
#: Format 1: the data in the gallery folder itself; format 2: in the ``v<N>`` it names.
FORMAT_VERSION = 2
_VERSION_FOLDER = re.compile(r"^v([1-9][0-9]{0,8})$")

# Gallery rows per exact-search block: [queries, block] distances stay a few tens of MB.
_EXACT_BLOCK = 1 << 16
# SQLite maps at most 2 GB of a database file (its default SQLITE_MAX_MMAP_SIZE).
_MMAP_BYTES = 1 << 31
# SQLite allows 32766 host parameters per statement.
_SQL_CHUNK = 30_000
# One record of the text column per row, little-endian: timestamp (float64), camera (int32),
# the length of the text (uint16), then the UTF-8 of path, track, site and zone joined by _SEP
# (_NONE for a missing one), zero-padded. A hit reads its whole metadata from one record; the
# ids, cameras and times columns stay apart for the filters, which scan them.
_RECORD_HEAD = struct.Struct("<diH")
_RECORD_WIDTH = 192
_HEAD_BYTES = _RECORD_HEAD.size
_TEXT_ROOM = _RECORD_WIDTH - _HEAD_BYTES
_IN_SQLITE = 0xFFFF  # the length of a row whose text did not fit: read it from SQLite
_SEP, _NONE = "\x1f", "\x1e"
# (file suffix, dtype of one row) of each memory-mapped column beside the vectors.
_COLUMNS = {
    "ids": ("i8", np.dtype(np.int64)),
    "cameras": ("i4", np.dtype(np.int32)),
    "times": ("f8", np.dtype(np.float64)),
    "text": (f"r{_RECORD_WIDTH}", np.dtype((np.uint8, _RECORD_WIDTH))),
}
# A filter that accepts every crop.
_ANY = CropFilter()
# Columns that hold a person's data: their removed rows are zeroed before the file goes.
_WIPED = ("vectors", "text")
_META_FIELDS = "id, path, camera, timestamp, track_id, site, zone"
# Where an SQLite database file keeps its change counter, which every commit (here or in
# another process) increments in rollback-journal mode (sqlite.org/fileformat.html, 1.3.8).
# Reading these 4 bytes tells whether to reload in a microsecond, without taking SQLite's lock
# as ``PRAGMA data_version`` does; the reload itself reads through SQLite.
_CHANGE_COUNTER_OFFSET = 24
_SQLITE_HEADER = 100  # bytes of the database header (sqlite.org/fileformat.html, 1.3)
# Files of one version's data (what a switch removes, and an open after a killed switch).
_DATA_FILES = (
    "meta.sqlite*", "vectors.*", "ids.*", "cameras.*", "times.*", "text.*", "ann.*", ".lock"
)  # fmt: skip


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_data(folder: Path, version: int) -> None:
    """Delete one version's data: a ``v<N>`` folder, or the data files of a format-1 folder."""
    if version:
        shutil.rmtree(folder / f"v{version}", ignore_errors=True)
        return
    for pattern in _DATA_FILES:
        for stale in folder.glob(pattern):
            stale.unlink(missing_ok=True)


def _encode_record(meta: CropMeta) -> bytes:
    """One row of the text column (see ``_RECORD_WIDTH``)."""
    fields = (meta.path, meta.track_id, meta.site, meta.zone)
    payload = b""
    if not any(f is not None and (_SEP in f or _NONE in f) for f in fields):
        try:
            payload = _SEP.join(_NONE if f is None else f for f in fields).encode()
        except UnicodeEncodeError:
            payload = b""
    size = len(payload) if payload and len(payload) <= _TEXT_ROOM else _IN_SQLITE
    head = _RECORD_HEAD.pack(meta.timestamp, meta.camera, size)
    return head + (payload if size != _IN_SQLITE else b"").ljust(_TEXT_ROOM, b"\0")


def _zero_and_unlink(path: Path) -> None:
    """Overwrite a file of personal data with zeros before deleting it."""
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        for start in range(0, size, 1 << 20):
            handle.write(bytes(min(1 << 20, size - start)))
        handle.flush()
        os.fsync(handle.fileno())
    path.unlink()


class EmbeddedBackend(Backend):
    """A gallery in a local folder (see the module docstring for the layout and guarantees).

    ``ann_min_size``: crops from which an ANN index is built and used for unfiltered queries
    (``None`` never). ``nprobe``: IVF lists visited per query (default: 1/64 of them, at least
    16). ``staged_version`` opens the next version a rebuild fills (see :meth:`staging`).

    ``read_only`` opens a gallery on a read-only mount (or one this process must not change)
    for search: SQLite in ``mode=ro``, the files mapped read-only, no lock file, no repair of a
    killed writer's leftovers (the writer's host does that), every change refused in one line.
    Its audit records go to ``audit_file`` (a writable place); without one they are dropped
    after a one-line warning, since the gallery's own ``audit.jsonl`` cannot be written.
    """

    kind = "embedded"

    def __init__(
        self,
        folder: Path,
        *,
        create: bool = False,
        ann_min_size: int | None = 200_000,
        nprobe: int | None = None,
        staged_version: int | None = None,
        read_only: bool = False,
        audit_file: Path | None = None,
    ) -> None:
        self.folder = Path(folder)
        # A folder this process cannot write (a read-only mount) is opened for reading only.
        self.read_only = read_only or (self.folder.is_dir() and not os.access(folder, os.W_OK))
        self._audit_file = audit_file if self.read_only else None
        self.location = str(self.folder)
        self.ann_min_size = ann_min_size
        self._nprobe = nprobe
        self._staged_version = staged_version
        self._lock = threading.RLock()
        self._audit_fd: int | None = None
        self._audit_dropped = False
        manifest = self.folder / "gallery.json"
        if staged_version is None and not manifest.is_file():
            if not create or self.read_only:
                raise GalleryError(
                    f"'{self.folder}' is not a gallery (no gallery.json); check gallery.uri or "
                    "run 'reidkit gallery add' to create it"
                )
            if self.folder.exists() and any(self.folder.iterdir()):
                raise GalleryError(
                    f"'{self.folder}' exists and is not a gallery; choose an empty or new folder "
                    "for gallery.uri"
                )
            self.folder.mkdir(parents=True, exist_ok=True)
            self._attach(version=0)
            write_json(manifest, {"format": FORMAT_NAME, "format_version": 1})
        else:
            self._attach()

    # ----------------------------------------------------------------- opening and state
    def _read_manifest(self) -> tuple[int, int]:
        """(format version, data version) of ``gallery.json``; one line if it is not ours."""
        manifest = self.folder / "gallery.json"
        fix = f"'{manifest}' is not a reidkit gallery manifest; check gallery.uri"
        try:
            info = json.loads(manifest.read_text())
            format_version = int(info["format_version"])
            data = info.get("data")
        except (OSError, ValueError, KeyError, TypeError):
            raise GalleryError(fix) from None
        if not isinstance(info, dict) or info.get("format") != FORMAT_NAME or format_version < 1:
            raise GalleryError(fix)
        if format_version > FORMAT_VERSION:
            raise GalleryError(
                f"gallery '{self.folder}' has format version {format_version}, this reidkit "
                f"reads up to {FORMAT_VERSION}; upgrade reidkit"
            )
        match = _VERSION_FOLDER.match(data) if isinstance(data, str) else None
        if (data is None) != (format_version == 1) or (data is not None and not match):
            raise GalleryError(fix)
        return format_version, int(match.group(1)) if match else 0

    def _attach(self, version: int | None = None) -> None:
        """Connect to the current version's data, finish what a killed writer left, map it."""
        while True:
            if self._staged_version is not None:
                self._format_version, self._version = FORMAT_VERSION, self._staged_version
            elif version is not None:
                self._format_version, self._version = 1, version
            else:
                self._format_version, self._version = self._read_manifest()
            self.data = self.folder / f"v{self._version}" if self._version else self.folder
            if self._staged_version is not None:
                self.data.mkdir(exist_ok=True)
            try:
                # A recorded version's database must be there: connecting would create an
                # empty one, and the repair would then delete every column as uncommitted.
                self._connect(existing=version is None and self._staged_version is None)
            except (sqlite3.DatabaseError, FileNotFoundError):
                if version is None and self._read_manifest()[1] != self._version:
                    continue  # another process switched versions while we opened this one
                raise GalleryError(
                    f"gallery data '{self.data}' is missing or unreadable; restore the gallery "
                    "from a backup"
                ) from None
            if self.read_only:
                superseded = self._setting("superseded", False)
            else:
                with self._file_lock():
                    superseded = self._setting("superseded", False)
                    if not superseded:
                        self._repair()
                        if self._staged_version is None:
                            self._remove_older_versions()
            if not superseded:
                break
            self._disconnect()  # switched to a newer version while we opened this one
        self._ann: Any = None
        self._ann_token: str | None = None
        self._settings = Settings(None, None, self._format_version)
        self._load()

    def _connect(self, *, existing: bool = False) -> None:
        if not self.data.is_dir():
            raise FileNotFoundError(self.data)
        database = str(self.data / "meta.sqlite")
        if existing and os.stat(database).st_size < _SQLITE_HEADER:  # missing: FileNotFoundError
            raise sqlite3.DatabaseError("not a database")
        if self.read_only:  # never creates the file, a journal or anything beside it
            database = f"file:{quote(database)}?mode=ro"
        self._db = sqlite3.connect(
            database, check_same_thread=False, isolation_level=None, uri=self.read_only
        )
        try:
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.execute("PRAGMA synchronous=FULL")
            # Inserting into the path index of a large gallery touches many pages: keep 64 MB.
            self._db.execute("PRAGMA cache_size=-65536")
            # Reads through a memory map (writes still go through write(2), so durability and
            # secure_delete are unchanged): a search's metadata lookups then cost no syscall.
            self._db.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")
            if not self.read_only:
                self._init_schema()
            self._db_head = self._map_header()
        except BaseException:
            self._db.close()
            raise

    def _reattach(self) -> None:
        """Follow the gallery to the version another process switched it to."""
        self._disconnect()
        self._attach()

    def _disconnect(self) -> None:
        self._db.close()
        self._db_head.close()

    def _map_header(self) -> mmap.mmap:
        """The database file's header, mapped: another process's commit (a write(2) through
        the same page cache) shows in it at once, and reading it costs no syscall."""
        with open(self.data / "meta.sqlite", "rb") as handle:
            if os.fstat(handle.fileno()).st_size < _SQLITE_HEADER:
                raise sqlite3.DatabaseError("not a database")
            return mmap.mmap(handle.fileno(), _SQLITE_HEADER, access=mmap.ACCESS_READ)

    def _change_counter(self) -> bytes:
        return self._db_head[_CHANGE_COUNTER_OFFSET : _CHANGE_COUNTER_OFFSET + 4]

    def _init_schema(self) -> None:
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS entries (
                id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, camera INTEGER NOT NULL,
                timestamp REAL NOT NULL, track_id TEXT, site TEXT, zone TEXT, thumbnail BLOB);
            CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS identities (
                crop_id INTEGER PRIMARY KEY, global_id TEXT NOT NULL);
            """
        )

    def _setting(self, key: str, default: Any = None) -> Any:
        row = self._db.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def _set(self, values: dict[str, Any]) -> None:
        """Inside the caller's transaction."""
        self._db.executemany(
            "INSERT OR REPLACE INTO settings(key, value) VALUES (?, ?)",
            [(k, json.dumps(v)) for k, v in values.items()],
        )

    def _commit_settings(self, values: dict[str, Any]) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        self._set(values)
        self._db.execute("COMMIT")

    def _path(self, column: str, generation: int) -> Path:
        suffix = "f32" if column == "vectors" else _COLUMNS[column][0]
        return self.data / f"{column}.{generation}.{suffix}"

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        """This version's writer lock, across threads and processes."""
        with self._lock, open(self.data / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def _writer(self) -> Iterator[None]:
        """One writer at a time, on the current version (following a switch made meanwhile)."""
        if self.read_only:
            raise GalleryError(
                f"gallery '{self.location}' is open read-only; change it where it is writable"
            )
        with self._lock:
            while True:
                with ExitStack() as stack:
                    try:
                        stack.enter_context(self._file_lock())
                    except FileNotFoundError:  # a switch removed this version's folder
                        self._reattach()
                        continue
                    if not self._setting("superseded", False):
                        self._refresh()
                        if self._rows and self._records is None:
                            # rows an older reidkit added elsewhere lack their records
                            self._write_records(
                                self._path("text", self._setting("generation", 0)), self._rows
                            )
                            self._load()
                        yield
                        return
                self._reattach()

    def _repair(self) -> None:
        """Undo what a killed writer left: uncommitted rows, files of other generations; and
        write the text column if this folder predates it (or an older reidkit added rows)."""
        generation, rows = self._setting("generation", 0), self._setting("rows", 0)
        dim = self._setting("dim")
        keep = {self._path(c, generation).name for c in ("vectors", *_COLUMNS)}
        token = self._setting("ann_token")
        if token:
            keep.add(f"ann.{token}.faiss")
        for pattern in (*(f"{c}.*" for c in ("vectors", *_COLUMNS)), "ann.*", ".*.tmp"):
            for stale in self.data.glob(pattern):
                if stale.name in keep:
                    continue
                if stale.name.split(".")[0] in _WIPED:
                    _zero_and_unlink(stale)
                else:
                    stale.unlink()
        for column in ("vectors", *_COLUMNS):
            width = (dim or 0) * 4 if column == "vectors" else _COLUMNS[column][1].itemsize
            path = self._path(column, generation)
            if dim is None:  # nothing committed yet: a killed first insert left these
                path.unlink(missing_ok=True)
                continue
            size = path.stat().st_size if path.exists() else -1
            if column == "text" and size < rows * width:
                self._write_records(path, rows)
            elif size < rows * width:
                raise GalleryError(
                    f"gallery file '{path}' is missing or shorter than the {rows} committed "
                    "crops; restore the folder from a backup"
                )
            elif size > rows * width:
                os.truncate(path, rows * width)

    def _write_records(self, path: Path, rows: int) -> None:
        """(Re)write the text column from SQLite, in crop-id order like the other columns."""
        staged = path.with_name(f".{path.name}.tmp")
        ids = []
        with open(staged, "wb") as handle:
            query = "SELECT id, path, camera, timestamp, track_id, site, zone FROM entries"
            for crop_id, *fields in self._db.execute(query + " ORDER BY id"):
                ids.append(crop_id)
                handle.write(_encode_record(CropMeta(*fields)))
            handle.flush()
            os.fsync(handle.fileno())
        stored = np.fromfile(self._path("ids", self._setting("generation", 0)), np.int64)
        if len(ids) != rows or not np.array_equal(stored[:rows], ids):
            staged.unlink()
            raise GalleryError(
                f"gallery '{self.data}' has {len(ids)} crops in meta.sqlite and {rows} in its "
                "columns; restore the folder from a backup"
            )
        os.replace(staged, path)
        _fsync_dir(self.data)

    def _remove_older_versions(self) -> None:
        """Finish a switch a kill interrupted: delete the data of every older version."""
        if self._version:
            _remove_data(self.folder, 0)
        for folder in self.folder.glob("v*"):
            match = _VERSION_FOLDER.match(folder.name)
            if match and int(match.group(1)) < self._version:
                _remove_data(self.folder, int(match.group(1)))

    def _load(self) -> None:
        """Map the committed rows and open the ANN index (after any commit, here or elsewhere)."""
        if self._setting("superseded", False):
            self._reattach()
            return
        self._data_version = self._change_counter()
        generation, self._rows = self._setting("generation", 0), self._setting("rows", 0)
        self._dim = self._setting("dim")
        card = self._setting("card")
        if card != self._settings.card or self._dim != self._settings.dim:
            self._settings = Settings(card, self._dim, self._format_version)
        self._vectors = torch.empty(0, self._dim or 0)
        self._columns = {c: np.empty(0, dtype=t) for c, (_, t) in _COLUMNS.items()}
        self._records: mmap.mmap | None = None
        self._camera_counts: dict[int, int] | None = None
        self._time_order: tuple[np.ndarray, np.ndarray] | None = None
        if self._rows:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch warns about non-writable numpy memory
                shape = (self._rows, self._dim)
                mapped = np.memmap(self._path("vectors", generation), np.float32, "r", shape=shape)
                self._vectors = torch.from_numpy(mapped)
            for column, (_, dtype) in _COLUMNS.items():
                if column != "text":
                    # A plain ndarray view of the map: np.memmap's subclass hooks cost more
                    # than the lookups of a search's hits (the view keeps the map open).
                    self._columns[column] = np.memmap(
                        self._path(column, generation), dtype, "r", shape=(self._rows,)
                    ).view(np.ndarray)
            self._records = self._map_records(generation)
            if self._records is not None:
                self._columns["text"] = np.frombuffer(
                    self._records, _COLUMNS["text"][1], self._rows
                )
        # The ids as a memoryview: indexing it returns a Python int with no NumPy call, which
        # is what a search wants for its k hits.
        self._id_cells = memoryview(self._columns["ids"])
        # Ids are given in increasing order, so until a crop is deleted a row is its id minus
        # the first id: a search's hits then need no binary search through the id column.
        ids = self._columns["ids"]
        consecutive = self._rows and int(ids[-1]) - int(ids[0]) == self._rows - 1
        self._first_id = int(ids[0]) if consecutive else None
        token = self._setting("ann_token")
        ann_upto = self._setting("ann_upto", -1)
        self._indexed = int(np.searchsorted(self._columns["ids"], ann_upto, side="right"))
        if token == self._ann_token and self._ann is not None:
            return  # the index in memory is the committed one: no need to read it again
        self._ann, self._ann_token = None, token
        if token and (self.data / f"ann.{token}.faiss").exists():
            # A deleted index file means "rebuild it": exact search until the next add does.
            self._ann = self._read_index(self.data / f"ann.{token}.faiss")

    def _map_records(self, generation: int) -> mmap.mmap | None:
        """The text column's map, or ``None`` where it lacks committed rows (a folder of an
        older layout opened read-only, or rows another process's older reidkit added): hits
        then read SQLite. Slicing a ``mmap`` gives bytes in one call, so a hit's text is one
        slice and one decode."""
        try:
            with open(self._path("text", generation), "rb") as handle:
                if os.fstat(handle.fileno()).st_size < self._rows * _RECORD_WIDTH:
                    return None
                return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            return None

    def _read_index(self, path: Path) -> Any:
        import faiss

        expected = self._setting("ann_bytes")
        fix = "delete that file (the next 'reidkit gallery add' rebuilds it)"
        if path.stat().st_size != expected:
            raise GalleryError(f"gallery index '{path}' is truncated or overwritten; {fix}")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError:
            raise GalleryError(f"gallery index '{path}' is corrupt; {fix}") from None
        self._set_nprobe(index)
        return index

    def _set_nprobe(self, index: Any) -> None:
        index.nprobe = min(index.nlist, self._nprobe or max(16, index.nlist // 64))

    def _refresh(self) -> None:
        """Another process may have stored or deleted crops since we mapped the files."""
        if self._change_counter() != self._data_version:
            self._load()

    # -------------------------------------------------------------------- settings
    def settings(self) -> Settings:
        with self._lock:
            self._refresh()
            return self._settings

    def record_card(self, card: dict[str, Any]) -> None:
        with self._writer():
            if self._setting("card") is None:
                self._commit_settings({"card": card})
                self._load()

    # ----------------------------------------------------------------------- audit
    def append_audit(self, record: str, *, durable: bool) -> None:
        line = f"{record}\n".encode()
        with self._lock:
            if self.read_only and self._audit_file is None:
                if not self._audit_dropped:
                    self._audit_dropped = True
                    logger.warning(
                        "gallery '%s' is read-only and no audit file was given: audit records "
                        "of this process are not kept",
                        self.location,
                    )
                return
            if self._audit_fd is None:
                # Kept open (opening costs more than the write): with O_APPEND each line is one
                # write(2) at the end of the file, whichever process writes it.
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
                target = self._audit_file or self.folder / "audit.jsonl"
                self._audit_fd = os.open(target, flags, 0o666)
            os.write(self._audit_fd, line)
            if durable:
                os.fsync(self._audit_fd)

    def audit_records(self) -> list[dict[str, Any]]:
        path = self.folder / "audit.jsonl"
        if not path.exists():
            return []
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # the last line of a process killed while writing it
        return records

    # ------------------------------------------------------------------------- insert
    def insert(
        self, vectors: np.ndarray, metas: Sequence[CropMeta], thumbnails: Sequence[bytes | None]
    ) -> int:
        with self._writer():
            new = self._new_positions(metas)
            if not new:
                return 0
            dim = self._dim or vectors.shape[1]
            first_id = self._setting("next_id", 0)
            ids = np.arange(first_id, first_id + len(new), dtype=np.int64)
            generation = self._setting("generation", 0)
            cameras = np.array([metas[i].camera for i in new], dtype=np.int32)
            times = np.array([metas[i].timestamp for i in new], dtype=np.float64)
            text = b"".join(_encode_record(metas[i]) for i in new)
            blocks = {
                "vectors": vectors[new].tobytes(),
                "ids": ids.tobytes(),
                "cameras": cameras.tobytes(),
                "times": times.tobytes(),
                "text": text,
            }
            for column, block in blocks.items():
                path = self._path(column, generation)
                with open(path, "ab") as handle:
                    handle.write(block)
                    handle.flush()
                    os.fsync(handle.fileno())
            rows = []
            for crop_id, i in zip(ids.tolist(), new, strict=True):
                m = metas[i]
                row = (crop_id, m.path, int(m.camera), float(m.timestamp), m.track_id)
                rows.append((*row, m.site, m.zone, thumbnails[i]))
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(f"INSERT INTO entries VALUES ({', '.join('?' * 8)})", rows)
                self._set(
                    {"rows": self._rows + len(new), "next_id": first_id + len(new), "dim": dim}
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._load()
            if self._index_due():
                self._build_index()
        return len(new)

    def contains(self, paths: Sequence[str]) -> list[bool]:
        with self._lock:
            stored = self._stored_paths(paths)
        return [p in stored for p in paths]

    def _stored_paths(self, paths: Sequence[str]) -> set[str]:
        stored: set[str] = set()
        for start in range(0, len(paths), _SQL_CHUNK):
            chunk = list(paths[start : start + _SQL_CHUNK])
            marks = ",".join("?" * len(chunk))
            query = f"SELECT path FROM entries WHERE path IN ({marks})"
            stored.update(p for (p,) in self._db.execute(query, chunk))
        return stored

    def _new_positions(self, metas: Sequence[CropMeta]) -> list[int]:
        """Positions in ``metas`` of paths not stored yet (the first of repeated paths)."""
        paths = [m.path for m in metas]
        stored = self._stored_paths(paths)
        new = []
        for i, path in enumerate(paths):
            if path not in stored:
                stored.add(path)
                new.append(i)
        return new

    # ------------------------------------------------------------------------- ANN index
    def _index_due(self) -> bool:
        if self.ann_min_size is None or self._rows < self.ann_min_size:
            return False
        if self._ann is None:
            return True
        # Extend when the exact tail is as large as the indexed part: each crop is added to
        # the index once and the index file is rewritten O(log N) times while a gallery grows.
        return self._rows - self._indexed >= max(self.ann_min_size, self._ann.ntotal)

    @property
    def ann_index(self) -> Any:
        """The FAISS index answering unfiltered queries (``None``: exact search)."""
        return self._ann

    def optimise(self) -> None:
        """Index every crop now (at ``ann_min_size`` crops or more), e.g. after a bulk add,
        so unfiltered queries need no exact pass over a tail."""
        with self._writer():
            if self.ann_min_size is not None and self._rows >= self.ann_min_size:
                self._build_index()

    def _build_index(self) -> None:
        """Train a new IVF-Flat index when there is none or the gallery outgrew its lists,
        else add the tail; then swap it in through the settings commit."""
        import faiss

        nlist = max(16, int(math.sqrt(self._rows)))
        index = self._ann
        start = 0
        if index is None or nlist >= 4 * index.nlist:
            sample_rows = np.random.default_rng(0).choice(
                self._rows, min(self._rows, 64 * nlist), replace=False
            )
            sample = self._vectors[np.sort(sample_rows)].numpy()
            index = faiss.IndexIVFFlat(
                faiss.IndexFlatIP(self._dim), self._dim, nlist, faiss.METRIC_INNER_PRODUCT
            )
            index.train(sample)
        else:
            start = self._indexed
        try:
            for block in range(start, self._rows, _EXACT_BLOCK * 4):
                stop = min(block + _EXACT_BLOCK * 4, self._rows)
                index.add_with_ids(
                    np.ascontiguousarray(self._vectors[block:stop].numpy()),
                    np.ascontiguousarray(self._columns["ids"][block:stop]),
                )
            self._swap_index(index, int(self._columns["ids"][-1]))
        except BaseException:
            # The index in memory may hold rows the committed one does not: read it again.
            self._ann = self._ann_token = None
            self._load()
            raise

    def _swap_index(self, index: Any, upto: int) -> None:
        """Write ``index`` under a new name, commit it as the gallery's index, drop the old."""
        import faiss

        token = uuid.uuid4().hex
        path = self.data / f"ann.{token}.faiss"
        faiss.write_index(index, str(path))
        _fsync_file(path)
        old = self._setting("ann_token")
        self._commit_settings(
            {"ann_token": token, "ann_upto": upto, "ann_bytes": path.stat().st_size}
        )
        if old:
            (self.data / f"ann.{old}.faiss").unlink(missing_ok=True)
        self._set_nprobe(index)
        self._ann, self._ann_token = index, token
        self._load()

    # --------------------------------------------------------------------------- search
    def nearest(
        self, queries: np.ndarray, k: int, where: CropFilter | None, exact: bool
    ) -> list[list[Hit]]:
        with self._lock:
            self._refresh()
            if self._ann is not None and not exact and (where is None or where == _ANY):
                dists, ids = self._approximate(queries, k)
            else:
                rows = None if where is None or where == _ANY else self._filtered_rows(where)
                dist, rows = self._exact(queries, k, rows)
                dists, ids = dist.tolist(), self._columns["ids"][rows].tolist()
            return [self._neighbours(d, i) for d, i in zip(dists, ids, strict=True)]

    def _neighbours(self, distances: list[float], crop_ids: list[int]) -> list[Hit]:
        """One query's hits, in order, their metadata read from one record each of the text
        column (SQLite only for a text that did not fit its record, or without one).
        ``crop_ids`` come from the ANN index or the id column; -1 is "no neighbour"."""
        first, rows, records, stored = self._first_id, self._rows, self._records, self._id_cells
        # Module constants as locals: this loop runs right after a FAISS search has evicted
        # the caches, where every global lookup costs.
        head, width, head_bytes, in_sqlite = (
            _RECORD_HEAD.unpack_from, _RECORD_WIDTH, _HEAD_BYTES, _IN_SQLITE
        )  # fmt: skip
        sep, none, meta_of, hit_of = _SEP, _NONE, CropMeta, Hit
        found: list[Any] = []
        elsewhere: dict[int, int] = {}  # position in ``found`` -> crop id
        for crop_id, distance in zip(crop_ids, distances, strict=True):
            if crop_id < 0:  # the ANN index holds fewer than k crops
                continue
            # Until a crop is deleted, a row is its id minus the first id (no lookup).
            row = crop_id - first if first is not None else bisect_left(stored, crop_id)
            if not 0 <= row < rows or (first is None and stored[row] != crop_id):
                raise GalleryError(
                    f"gallery index in '{self.data}' names crops the gallery does not hold; "
                    "delete its ann.*.faiss file (the next 'reidkit gallery add' rebuilds it)"
                )
            if records is not None:
                at = row * width
                timestamp, camera, size = head(records, at)
                if size != in_sqlite:
                    at += head_bytes
                    path, track, site, zone = records[at : at + size].decode().split(sep)
                    meta = meta_of(
                        path,
                        camera,
                        timestamp,
                        None if track == none else track,
                        None if site == none else site,
                        None if zone == none else zone,
                    )
                    found.append(hit_of(crop_id, distance, meta, None))
                    continue
            elsewhere[len(found)] = crop_id
            found.append(Hit(crop_id, distance, None, None))  # type: ignore[arg-type]
        if elsewhere:
            metas = self._metas(sorted(set(elsewhere.values())))
            for n, crop_id in elsewhere.items():
                found[n].meta = metas[crop_id]
        return found

    def _filtered_rows(self, where: CropFilter) -> np.ndarray:
        """Ascending row numbers the filter accepts.

        The window is cut from a time-sorted permutation of the rows (built on the first
        filtered search after a change), so a one-day window of a month reads 1/30 of the
        columns instead of all of them.
        """
        if where.start is None and where.end is None:
            rows = np.arange(self._rows)
        else:
            if self._time_order is None:
                order = np.argsort(self._columns["times"], kind="stable")
                self._time_order = (order, self._columns["times"][order])
            order, sorted_times = self._time_order
            lo = 0 if where.start is None else np.searchsorted(sorted_times, where.start, "left")
            hi = (
                len(order)
                if where.end is None
                else np.searchsorted(sorted_times, where.end, "right")
            )
            rows = np.sort(order[lo:hi])
        if where.cameras is not None:
            wanted = np.asarray(where.cameras, dtype=np.int32)
            rows = rows[np.isin(self._columns["cameras"][rows], wanted)]
        return rows

    def _exact(
        self, queries: np.ndarray, k: int, rows: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over ``rows`` (all when None): distances and row numbers, ascending."""
        total = self._rows if rows is None else len(rows)
        k = min(k, total)
        best_d = torch.empty(len(queries), 0)
        best_r = torch.empty(len(queries), 0, dtype=torch.int64)
        if k == 0:
            return best_d.numpy(), best_r.numpy()
        query = torch.from_numpy(queries)
        row_index = None if rows is None else torch.from_numpy(rows)
        for block in range(0, total, _EXACT_BLOCK):
            stop = min(block + _EXACT_BLOCK, total)
            if row_index is None:
                gallery, numbers = self._vectors[block:stop], torch.arange(block, stop)
            else:
                numbers = row_index[block:stop]
                gallery = self._vectors[numbers]
            dist = _normalized_distance(query, gallery)
            top_d, top_i = torch.topk(dist, min(k, stop - block), dim=1, largest=False)
            best_d = torch.cat([best_d, top_d], 1)
            best_r = torch.cat([best_r, numbers[top_i]], 1)
            if best_d.shape[1] > k:
                best_d, keep = torch.topk(best_d, k, dim=1, largest=False, sorted=False)
                best_r = torch.gather(best_r, 1, keep)
        order = torch.argsort(best_d, dim=1, stable=True)
        return torch.gather(best_d, 1, order).numpy(), torch.gather(best_r, 1, order).numpy()

    def _approximate(
        self, queries: np.ndarray, k: int
    ) -> tuple[list[list[float]], list[list[int]]]:
        """IVF neighbours merged with the exact tail: per query, distances and crop ids
        (-1: none), nearest first."""
        similarity, found = self._ann.search(queries, k)
        # 2 - 2 cos in Python: ten subtractions cost less than two NumPy calls.
        dists = [[2.0 - 2.0 * s for s in row] for row in similarity.tolist()]
        ids = found.tolist()
        if self._indexed < self._rows:
            tail_d, tail_r = self._exact(queries, k, np.arange(self._indexed, self._rows))
            tail_ids = self._columns["ids"][tail_r].tolist()
            for q, (more_d, more_ids) in enumerate(zip(tail_d.tolist(), tail_ids, strict=True)):
                # tail ids are above indexed ones: a tie keeps the index's crop first
                pairs = zip(dists[q] + more_d, ids[q] + more_ids, strict=True)
                merged = sorted((d, i) for d, i in pairs if i >= 0)[:k]
                dists[q], ids[q] = [d for d, _ in merged], [i for _, i in merged]
        return dists, ids

    def _metas(self, crop_ids: Sequence[int]) -> dict[int, CropMeta]:
        metas: dict[int, CropMeta] = {}
        for start in range(0, len(crop_ids), _SQL_CHUNK):
            chunk = list(crop_ids[start : start + _SQL_CHUNK])
            marks = ",".join("?" * len(chunk))
            query = f"SELECT {_META_FIELDS} FROM entries WHERE id IN ({marks})"
            for crop_id, *fields in self._db.execute(query, chunk):
                metas[crop_id] = CropMeta(*fields)
        return metas

    def count(self, where: CropFilter | None = None) -> int:
        with self._lock:
            self._refresh()
            if where is None or where == _ANY:
                return self._rows
            if where.start is None and where.end is None and where.cameras is not None:
                counts = self._cameras()
                return sum(counts.get(int(c), 0) for c in set(where.cameras))
            return len(self._filtered_rows(where))

    def _cameras(self) -> dict[int, int]:
        """Crops per camera (counted once per change of the gallery)."""
        if self._camera_counts is None:
            cameras, counts = np.unique(self._columns["cameras"], return_counts=True)
            self._camera_counts = dict(zip(cameras.tolist(), counts.tolist(), strict=True))
        return self._camera_counts

    # ---------------------------------------------------------------------------- fetch
    def crop_ids(self) -> np.ndarray:
        with self._lock:
            self._refresh()
            return np.array(self._columns["ids"])

    def fetch(self, crop_ids: Sequence[int], *, thumbnails: bool = False) -> list[StoredCrop]:
        fields = _META_FIELDS + (", thumbnail" if thumbnails else "")
        found: dict[int, StoredCrop] = {}
        with self._lock:
            wanted = [int(i) for i in crop_ids]
            for start in range(0, len(wanted), _SQL_CHUNK):
                chunk = wanted[start : start + _SQL_CHUNK]
                query = f"SELECT {fields} FROM entries WHERE id IN ({','.join('?' * len(chunk))})"
                for row in self._db.execute(query, chunk):
                    thumb = row[7] if thumbnails else None
                    found[row[0]] = StoredCrop(row[0], CropMeta(*row[1:7]), thumb)
        return [found[i] for i in wanted if i in found]

    def vectors(self, crop_ids: Sequence[int]) -> np.ndarray:
        with self._lock:
            self._refresh()
            wanted = np.asarray(crop_ids, dtype=np.int64)
            rows = np.searchsorted(self._columns["ids"], wanted).clip(max=max(self._rows - 1, 0))
            if self._rows == 0 or not np.array_equal(self._columns["ids"][rows], wanted):
                raise GalleryError(
                    f"gallery '{self.location}' has no crop among some of {list(crop_ids)}"
                )
            return self._vectors[torch.from_numpy(rows)].numpy()

    # --------------------------------------------------------------------------- delete
    def delete(self, selection: Selection) -> int:
        with self._writer():
            doomed = self._select_ids("id", [int(i) for i in selection.crop_ids])
            doomed |= self._select_ids("track_id", list(selection.track_ids))
            doomed |= self._select_ids("path", list(selection.paths))
            if selection.before is not None:
                old = self._columns["ids"][self._columns["times"] < selection.before]
                doomed.update(old.tolist())
            if doomed:
                self._remove(np.array(sorted(doomed), dtype=np.int64))
        return len(doomed)

    def _select_ids(self, column: str, values: list[Any]) -> set[int]:
        found: set[int] = set()
        for start in range(0, len(values), _SQL_CHUNK):
            chunk = values[start : start + _SQL_CHUNK]
            query = f"SELECT id FROM entries WHERE {column} IN ({','.join('?' * len(chunk))})"
            found.update(i for (i,) in self._db.execute(query, chunk))
        return found

    def _remove(self, doomed: np.ndarray) -> None:
        """Rewrite the surviving rows as the next generation, commit, wipe the old files."""
        old_gen = self._setting("generation", 0)
        new_gen = old_gen + 1
        drop = np.isin(self._columns["ids"], doomed)
        keep_rows = np.flatnonzero(~drop)
        for column in ("vectors", *_COLUMNS):
            source = self._vectors.numpy() if column == "vectors" else self._columns[column]
            path = self._path(column, new_gen)
            with open(path, "wb") as handle:
                for block in range(0, len(keep_rows), _EXACT_BLOCK):
                    rows = keep_rows[block : block + _EXACT_BLOCK]
                    handle.write(np.ascontiguousarray(source[rows]).tobytes())
                handle.flush()
                os.fsync(handle.fileno())
        settings: dict[str, Any] = {"generation": new_gen, "rows": len(keep_rows)}
        old_token = self._setting("ann_token")
        new_ann = None
        if self._ann is not None:
            import faiss

            self._ann.remove_ids(faiss.IDSelectorBatch(doomed))
            new_ann = uuid.uuid4().hex
            ann_path = self.data / f"ann.{new_ann}.faiss"
            faiss.write_index(self._ann, str(ann_path))
            _fsync_file(ann_path)
            settings.update(ann_token=new_ann, ann_bytes=ann_path.stat().st_size)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for start in range(0, len(doomed), _SQL_CHUNK):
                chunk = doomed[start : start + _SQL_CHUNK].tolist()
                marks = ",".join("?" * len(chunk))
                self._db.execute(f"DELETE FROM entries WHERE id IN ({marks})", chunk)
                self._db.execute(f"DELETE FROM identities WHERE crop_id IN ({marks})", chunk)
            self._set(settings)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            self._ann = self._ann_token = None  # it lost rows the gallery still has: reread
            self._load()
            raise
        if new_ann:
            self._ann_token = new_ann  # the index in memory is the one just committed
        for column in _WIPED:
            self._wipe_rows(column, old_gen, np.flatnonzero(drop))
        for column in ("vectors", *_COLUMNS):
            self._path(column, old_gen).unlink()
        if old_token:
            (self.data / f"ann.{old_token}.faiss").unlink()
        self._db.execute("VACUUM")
        _fsync_dir(self.data)
        self._load()

    def _wipe_rows(self, column: str, generation: int, rows: np.ndarray) -> None:
        """Overwrite the removed rows of an old generation's file before unlinking it, so
        their bytes do not outlive the call on the disk blocks either."""
        width = self._dim * 4 if column == "vectors" else _COLUMNS[column][1].itemsize
        zeros = bytes(width)
        with open(self._path(column, generation), "r+b") as handle:
            for row in rows.tolist():
                handle.seek(row * width)
                handle.write(zeros)
            handle.flush()
            os.fsync(handle.fileno())

    # ----------------------------------------------------------------- global identities
    def label_identities(self, labels: dict[int, str]) -> int:
        with self._writer():
            stored = self._select_ids("id", [int(i) for i in labels])
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT OR REPLACE INTO identities(crop_id, global_id) VALUES (?, ?)",
                [(i, str(labels[i])) for i in sorted(stored)],
            )
            self._db.execute("COMMIT")
        return len(stored)

    def identities(self, crop_ids: Sequence[int] | None = None) -> dict[int, str]:
        with self._lock:
            if crop_ids is None:
                return dict(self._db.execute("SELECT crop_id, global_id FROM identities"))
            found: dict[int, str] = {}
            wanted = [int(i) for i in crop_ids]
            for start in range(0, len(wanted), _SQL_CHUNK):
                chunk = wanted[start : start + _SQL_CHUNK]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT crop_id, global_id FROM identities WHERE crop_id IN ({marks})"
                found.update(self._db.execute(query, chunk))
            return found

    def event_log(self, name: str) -> SqliteEventLog:
        # beside gallery.json, not in a version folder: a rebuild keeps the live identities
        return SqliteEventLog(self.folder / f"{name}.sqlite")

    # ------------------------------------------------------------------------ versions
    def staging(self, create: bool) -> EmbeddedBackend | None:
        if self._staged_version is not None:
            raise GalleryError(f"'{self.data}' is already the next version of a gallery")
        with self._lock:
            self._refresh()
            version = self._version + 1
        if not create and not (self.folder / f"v{version}").is_dir():
            return None
        return EmbeddedBackend(
            self.folder,
            ann_min_size=self.ann_min_size,
            nprobe=self._nprobe,
            staged_version=version,
        )

    def discard_staging(self) -> None:
        with self._writer():
            _remove_data(self.folder, self._version + 1)

    def state(self) -> Hashable:
        with self._lock:
            self._refresh()
            return (self._version, self._setting("generation", 0), self._setting("next_id", 0))

    def promote(self, staged: Backend, expected_state: Hashable) -> bool:
        if not (
            isinstance(staged, EmbeddedBackend)
            and staged.folder == self.folder
            and staged._staged_version is not None
        ):
            raise GalleryError(f"only a next version of '{self.folder}' can replace it")
        with self._writer():
            if self.state() != expected_state or staged._staged_version != self._version + 1:
                return False
            old = self._version
            # The commit point: from here on every open reads the new version.
            write_json(
                self.folder / "gallery.json",
                {"format": FORMAT_NAME, "format_version": 2, "data": f"v{old + 1}"},
            )
            _fsync_dir(self.folder)
            # Processes that have this version open follow at their next call.
            self._commit_settings({"superseded": True})
        self._disconnect()
        _remove_data(self.folder, old)
        _fsync_dir(self.folder)
        self._attach()
        return True

    # ---------------------------------------------------------------------------- misc
    def summary(self) -> Summary:
        with self._lock:
            self._refresh()
            times = self._columns["times"]
            if self._ann is None:
                kind = "exact (torch)"
            else:
                tail = self._rows - self._indexed
                kind = f"IVF{self._ann.nlist},Flat nprobe={self._ann.nprobe} + exact tail {tail}"
            return Summary(
                size=self._rows,
                cameras=tuple(sorted(self._cameras())),
                start=float(times.min()) if self._rows else None,
                end=float(times.max()) if self._rows else None,
                index_kind=kind,
            )

    def close(self) -> None:
        with self._lock:
            self._vectors = torch.empty(0)
            self._columns, self._records, self._id_cells = {}, None, memoryview(b"")
            self._ann = None
            self._disconnect()
            if self._audit_fd is not None:
                os.close(self._audit_fd)
                self._audit_fd = None


class SqliteEventLog:
    """An :class:`~reidkit.gallery.store.EventLog` in one SQLite file; ``exclusive`` is SQLite's
    own write lock (``BEGIN IMMEDIATE``), so processes sharing the folder take turns."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        # every commit synced to disk (whatever this SQLite build defaults to): a live
        # decision is answered only once it is in the log
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, record TEXT NOT NULL)"
        )
        self._depth = 0

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._lock:
            self._depth += 1
            if self._depth == 1:
                self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if self._depth == 1:
                    self._db.execute("ROLLBACK")
                raise
            else:
                if self._depth == 1:
                    self._db.execute("COMMIT")
            finally:
                self._depth -= 1

    def append(self, records: Sequence[dict[str, Any]]) -> int:
        with self.exclusive():
            self._db.executemany(
                "INSERT INTO events(record) VALUES (?)", [(json.dumps(r),) for r in records]
            )
            (last,) = self._db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        return int(last)

    def read(self, after: int) -> list[tuple[int, dict[str, Any]]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, record FROM events WHERE seq > ? ORDER BY seq", (int(after),)
            )
            return [(int(seq), json.loads(record)) for seq, record in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
