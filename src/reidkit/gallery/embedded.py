"""The default gallery: one local folder, no server.

Layout (format version :data:`FORMAT_VERSION`, recorded in ``gallery.json``)::

    gallery.json             format name and version; a newer version is refused
    meta.sqlite              one row per crop (path, camera, time, track, site, zone, thumbnail)
                             and the settings: model card, dimension, generation, ANN state
    vectors.<gen>.f32        [rows, dim] float32, L2-normalised, in entry-id order
    ids.<gen>.i8             entry id of each row          } columns memory-mapped beside the
    cameras.<gen>.i4         camera of each row            } vectors, so that camera/time
    times.<gen>.f8           unix timestamp of each row    } filters never touch SQLite
    ann.<token>.faiss        optional IVF-Flat index (inner product, ids = entry ids)
    audit.jsonl              one line per add/search/forget: operator, time, request
    .lock                    writers (add, forget, index builds) take it exclusively

Crash safety: SQLite is the commit point. ``add`` appends to the column files, fsyncs them,
then commits the entries and the new row count in one transaction; on open, column files are
cut back to the committed row count, so a kill at any instant leaves each crop either stored
once or not at all, and a rerun (which skips stored paths) completes it. ``forget`` writes the
surviving rows to the next generation's files, commits the deletion and the new generation
together, then zeroes the removed rows in the old files and deletes them; SQLite runs with
``secure_delete`` and is vacuumed, so no forgotten byte stays in any file of the folder.

Search: exact by default, a torch matmul over the memory-mapped matrix in gallery chunks; once
the gallery reaches ``ann_min_size`` entries an IVF-Flat index answers unfiltered queries,
with the not-yet-indexed tail searched exactly and the hits' distances recomputed exactly.
Camera/time filters select rows from the memory-mapped columns first and search only those,
exactly, so a filtered result is the exact filtered result.
"""

from __future__ import annotations

import fcntl
import getpass
import json
import math
import os
import sqlite3
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reidkit.evaluation.metrics import _normalized_distance
from reidkit.gallery.store import (
    CropMeta,
    GalleryError,
    GalleryStats,
    Hit,
    check_card_fits,
    decide,
    rows_to_add,
    unit_rows,
)
from reidkit.outputs import write_json

FORMAT_NAME = "reidkit-gallery"
FORMAT_VERSION = 1

# Gallery rows per exact-search block: [queries, block] distances stay a few tens of MB.
_EXACT_BLOCK = 1 << 16
# SQLite allows 32766 host parameters per statement.
_SQL_CHUNK = 30_000
# (suffix, dtype, per-row width) of each memory-mapped column file.
_COLUMNS = {"ids": np.int64, "cameras": np.int32, "times": np.float64}
_ENTRY_FIELDS = "id, path, camera, timestamp, track_id, site, zone"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EmbeddedGallery:
    """A gallery in a local folder (see the module docstring for the layout and guarantees).

    ``ann_min_size``: entries from which an ANN index is built and used for unfiltered queries
    (``None`` never). ``nprobe``: IVF lists visited per query (default: 1/64 of them, at least 16).
    """

    backend = "embedded"

    def __init__(
        self,
        folder: Path,
        card: dict[str, Any] | None = None,
        *,
        create: bool = False,
        operator: str | None = None,
        ann_min_size: int | None = 200_000,
        nprobe: int | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.operator = operator or getpass.getuser()
        self.ann_min_size = ann_min_size
        self._nprobe = nprobe
        self._given_card = card
        self._lock = threading.RLock()
        manifest = self.folder / "gallery.json"
        if not manifest.is_file():
            if not create:
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
        else:
            self._check_format(manifest)
        self._db = sqlite3.connect(
            self.folder / "meta.sqlite", check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.execute("PRAGMA synchronous=FULL")
        # Inserting into the path index of a large gallery touches many pages: keep 64 MB.
        self._db.execute("PRAGMA cache_size=-65536")
        self._init_schema()
        if not manifest.is_file():
            write_json(manifest, {"format": FORMAT_NAME, "format_version": FORMAT_VERSION})
        check_card_fits(self.card, card, str(self.folder))
        self._ann: Any = None
        self._ann_token: str | None = None
        self._data_version = -1
        with self._writer():
            self._repair()
        self._load()

    # ----------------------------------------------------------------- opening and state
    def _check_format(self, manifest: Path) -> None:
        try:
            info = json.loads(manifest.read_text())
            version = int(info["format_version"])
            if info.get("format") != FORMAT_NAME:
                raise ValueError(info.get("format"))
        except (ValueError, KeyError, TypeError):
            raise GalleryError(
                f"'{manifest}' is not a reidkit gallery manifest; check gallery.uri"
            ) from None
        if version > FORMAT_VERSION:
            raise GalleryError(
                f"gallery '{self.folder}' has format version {version}, this reidkit reads up to "
                f"{FORMAT_VERSION}; upgrade reidkit"
            )

    def _init_schema(self) -> None:
        self._db.executescript(
            """
            CREATE TABLE IF NOT EXISTS entries (
                id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, camera INTEGER NOT NULL,
                timestamp REAL NOT NULL, track_id TEXT, site TEXT, zone TEXT, thumbnail BLOB);
            CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
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

    @property
    def card(self) -> dict[str, Any] | None:
        return self._setting("card")

    def _path(self, column: str, generation: int) -> Path:
        suffix = "f32" if column == "vectors" else np.dtype(_COLUMNS[column]).str[1:]
        return self.folder / f"{column}.{generation}.{suffix}"

    @contextmanager
    def _writer(self) -> Iterator[None]:
        """One writer at a time across threads and processes."""
        with self._lock, open(self.folder / ".lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _repair(self) -> None:
        """Undo what a killed writer left: uncommitted rows, files of other generations."""
        generation, rows = self._setting("generation", 0), self._setting("rows", 0)
        dim = self._setting("dim")
        keep = {self._path(c, generation).name for c in ("vectors", *_COLUMNS)}
        token = self._setting("ann_token")
        if token:
            keep.add(f"ann.{token}.faiss")
        for pattern in ("vectors.*", "ids.*", "cameras.*", "times.*", "ann.*", ".*.tmp"):
            for stale in self.folder.glob(pattern):
                if stale.name not in keep:
                    stale.unlink()
        for column in ("vectors", *_COLUMNS):
            width = (dim or 0) * 4 if column == "vectors" else np.dtype(_COLUMNS[column]).itemsize
            path = self._path(column, generation)
            if dim is None:  # nothing committed yet: a killed first add left these
                path.unlink(missing_ok=True)
                continue
            if not path.exists() or path.stat().st_size < rows * width:
                raise GalleryError(
                    f"gallery file '{path}' is missing or shorter than the {rows} committed "
                    "entries; restore the folder from a backup"
                )
            if path.stat().st_size > rows * width:
                os.truncate(path, rows * width)

    def _load(self) -> None:
        """Map the committed rows and open the ANN index (after any commit, here or elsewhere)."""
        self._data_version = self._db.execute("PRAGMA data_version").fetchone()[0]
        generation, self._rows = self._setting("generation", 0), self._setting("rows", 0)
        self._dim = self._setting("dim")
        self._threshold = (self.card or {}).get("match_threshold")
        self._vectors = torch.empty(0, self._dim or 0)
        self._columns = {c: np.empty(0, dtype=t) for c, t in _COLUMNS.items()}
        self._camera_set: set[int] | None = None
        self._time_order: tuple[np.ndarray, np.ndarray] | None = None
        if self._rows:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch warns about non-writable numpy memory
                shape = (self._rows, self._dim)
                mapped = np.memmap(self._path("vectors", generation), np.float32, "r", shape=shape)
                self._vectors = torch.from_numpy(mapped)
            for column, dtype in _COLUMNS.items():
                self._columns[column] = np.memmap(
                    self._path(column, generation), dtype, "r", shape=(self._rows,)
                )
        token = self._setting("ann_token")
        self._ann_upto = self._setting("ann_upto", -1)
        if token == self._ann_token and self._ann is not None:
            return  # the index in memory is the committed one: no need to read it again
        self._ann, self._ann_token = None, token
        if token and (self.folder / f"ann.{token}.faiss").exists():
            # A deleted index file means "rebuild it": exact search until the next add does.
            self._ann = self._read_index(self.folder / f"ann.{token}.faiss")

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
        """Another process may have added or forgotten since we mapped the files."""
        if self._db.execute("PRAGMA data_version").fetchone()[0] != self._data_version:
            self._load()

    def _audit(self, action: str, **what: Any) -> None:
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "operator": self.operator,
            "action": action,
            **what,
        }
        with open(self.folder / "audit.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
            if action != "search":
                handle.flush()
                os.fsync(handle.fileno())

    # ----------------------------------------------------------------------------- add
    def add(
        self,
        vectors: np.ndarray | Tensor,
        metas: Sequence[CropMeta],
        thumbnails: Sequence[bytes | None] | None = None,
    ) -> int:
        matrix = rows_to_add(vectors, metas, thumbnails)
        for meta in metas:
            if not math.isfinite(meta.timestamp):
                raise GalleryError(f"crop '{meta.path}' has timestamp {meta.timestamp}; fix it")
        with self._writer():
            self._refresh()
            dim = self._dim or (self._given_card or {}).get("embedding_dim") or matrix.shape[1]
            if matrix.shape[1] != dim:
                raise GalleryError(
                    f"embeddings have {matrix.shape[1]} dimensions, gallery '{self.folder}' holds "
                    f"{dim}; use the model that filled it"
                )
            check_card_fits(self.card, self._given_card, str(self.folder))
            new = self._new_positions(metas)
            if not new:
                return 0
            first_id = self._setting("next_id", 0)
            ids = np.arange(first_id, first_id + len(new), dtype=np.int64)
            generation = self._setting("generation", 0)
            cameras = np.array([metas[i].camera for i in new], dtype=np.int32)
            times = np.array([metas[i].timestamp for i in new], dtype=np.float64)
            vecs = matrix[new].numpy()
            blocks = {"vectors": vecs, "ids": ids, "cameras": cameras, "times": times}
            for column, block in blocks.items():
                path = self._path(column, generation)
                with open(path, "ab") as handle:
                    handle.write(np.ascontiguousarray(block).tobytes())
                    handle.flush()
                    os.fsync(handle.fileno())
            rows = []
            for entry_id, i in zip(ids.tolist(), new, strict=True):
                m, thumb = metas[i], None if thumbnails is None else thumbnails[i]
                row = (entry_id, m.path, int(m.camera), float(m.timestamp), m.track_id)
                rows.append((*row, m.site, m.zone, thumb))
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(f"INSERT INTO entries VALUES ({', '.join('?' * 8)})", rows)
                settings: dict[str, Any] = {
                    "rows": self._rows + len(new),
                    "next_id": first_id + len(new),
                    "dim": int(dim),
                }
                if self.card is None and self._given_card is not None:
                    settings["card"] = self._given_card
                self._set(settings)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._load()
            self._audit("add", added=len(new), skipped=len(metas) - len(new))
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
        # Extend when the exact tail is as large as the indexed part: each entry is added to
        # the index once and the index file is rewritten O(log N) times while a gallery grows.
        return self._rows - self._indexed_rows() >= max(self.ann_min_size, self._ann.ntotal)

    def _indexed_rows(self) -> int:
        return int(np.searchsorted(self._columns["ids"], self._ann_upto, side="right"))

    def build_index(self) -> None:
        """Index every entry now (at ``ann_min_size`` entries or more), e.g. after a bulk add,
        so unfiltered queries need no exact pass over a tail."""
        with self._writer():
            self._refresh()
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
            start = self._indexed_rows()
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
        path = self.folder / f"ann.{token}.faiss"
        faiss.write_index(index, str(path))
        _fsync_file(path)
        old = self._setting("ann_token")
        self._db.execute("BEGIN IMMEDIATE")
        self._set({"ann_token": token, "ann_upto": upto, "ann_bytes": path.stat().st_size})
        self._db.execute("COMMIT")
        if old:
            (self.folder / f"ann.{old}.faiss").unlink(missing_ok=True)
        self._set_nprobe(index)
        self._ann, self._ann_token = index, token
        self._load()

    # --------------------------------------------------------------------------- search
    def search(
        self,
        vectors: np.ndarray | Tensor,
        k: int = 10,
        *,
        cameras: Sequence[int] | None = None,
        start: float | None = None,
        end: float | None = None,
        threshold: float | None = None,
        exact: bool = False,
    ) -> list[list[Hit]]:
        """See :meth:`GalleryStore.search`; ``exact`` skips the ANN index."""
        queries = unit_rows(vectors, "query embeddings")
        if k < 1:
            raise GalleryError(f"top-k must be at least 1, got {k}")
        with self._lock:
            self._refresh()
            if self._rows and queries.shape[1] != self._dim:
                raise GalleryError(
                    f"query embeddings have {queries.shape[1]} dimensions, gallery "
                    f"'{self.folder}' holds {self._dim}; use the model that filled it"
                )
            filtered = cameras is not None or start is not None or end is not None
            if filtered:
                known = self._known_cameras()
                unknown = sorted(set(cameras or ()) - known)
                if unknown:
                    raise GalleryError(
                        f"camera {unknown[0]} is not in gallery '{self.folder}' (cameras: "
                        f"{sorted(known)}); check the camera filter"
                    )
                rows = self._filtered_rows(cameras, start, end)
                dist, found = self._exact(queries, k, rows)
            elif self._ann is not None and not exact:
                dist, found = self._approximate(queries, k)
            else:
                dist, found = self._exact(queries, k, None)
            hits = self._hits(dist, found, self._threshold if threshold is None else threshold)
            self._audit(
                "search",
                queries=len(queries),
                k=k,
                cameras=None if cameras is None else sorted(int(c) for c in cameras),
                start=start,
                end=end,
                hits=sum(len(h) for h in hits),
            )
        return hits

    def _known_cameras(self) -> set[int]:
        if self._camera_set is None:
            self._camera_set = set(np.unique(self._columns["cameras"]).tolist())
        return self._camera_set

    def _filtered_rows(
        self, cameras: Sequence[int] | None, start: float | None, end: float | None
    ) -> np.ndarray:
        """Ascending row numbers inside the time window and on the cameras.

        The window is cut from a time-sorted permutation of the rows (built on the first
        filtered search after a change), so a one-day window of a month reads 1/30 of the
        columns instead of all of them.
        """
        if start is None and end is None:
            rows = np.arange(self._rows)
        else:
            if self._time_order is None:
                order = np.argsort(self._columns["times"], kind="stable")
                self._time_order = (order, self._columns["times"][order])
            order, sorted_times = self._time_order
            lo = 0 if start is None else np.searchsorted(sorted_times, start, side="left")
            hi = len(order) if end is None else np.searchsorted(sorted_times, end, side="right")
            rows = np.sort(order[lo:hi])
        if cameras is not None:
            wanted = np.asarray(list(cameras), dtype=np.int32)
            rows = rows[np.isin(self._columns["cameras"][rows], wanted)]
        return rows

    def _exact(self, queries: Tensor, k: int, rows: np.ndarray | None) -> tuple[Tensor, Tensor]:
        """Exact top-k over ``rows`` (all when None): distances and row numbers, ascending."""
        total = self._rows if rows is None else len(rows)
        k = min(k, total)
        best_d = torch.empty(len(queries), 0)
        best_r = torch.empty(len(queries), 0, dtype=torch.int64)
        if k == 0:
            return best_d, best_r
        row_index = None if rows is None else torch.from_numpy(rows)
        for block in range(0, total, _EXACT_BLOCK):
            stop = min(block + _EXACT_BLOCK, total)
            if row_index is None:
                gallery, numbers = self._vectors[block:stop], torch.arange(block, stop)
            else:
                numbers = row_index[block:stop]
                gallery = self._vectors[numbers]
            dist = _normalized_distance(queries, gallery)
            top_d, top_i = torch.topk(dist, min(k, stop - block), dim=1, largest=False)
            best_d = torch.cat([best_d, top_d], 1)
            best_r = torch.cat([best_r, numbers[top_i]], 1)
            if best_d.shape[1] > k:
                best_d, keep = torch.topk(best_d, k, dim=1, largest=False, sorted=False)
                best_r = torch.gather(best_r, 1, keep)
        order = torch.argsort(best_d, dim=1, stable=True)
        return torch.gather(best_d, 1, order), torch.gather(best_r, 1, order)

    def _approximate(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """IVF candidates plus the exact tail, re-scored exactly and merged."""
        _, ids = self._ann.search(queries.numpy(), k)
        candidates = torch.from_numpy(
            np.searchsorted(self._columns["ids"], np.where(ids < 0, 0, ids))
        )
        valid = torch.from_numpy(ids >= 0)
        tail = self._indexed_rows()
        if tail < self._rows:
            _, tail_rows = self._exact(queries, k, np.arange(tail, self._rows))
            candidates = torch.cat([candidates, tail_rows], 1)
            valid = torch.cat([valid, torch.ones_like(tail_rows, dtype=torch.bool)], 1)
        gathered = self._vectors[candidates.reshape(-1)].reshape(*candidates.shape, -1)
        dist = 2.0 - 2.0 * torch.einsum("qd,qcd->qc", queries, gathered)
        dist = torch.where(valid, dist, torch.inf)
        top_d, pick = torch.topk(dist, min(k, int(valid.sum(1).max())), dim=1, largest=False)
        top_r = torch.gather(candidates, 1, pick)
        return top_d, torch.where(torch.isinf(top_d), -1, top_r)

    def _hits(self, dist: Tensor, rows: Tensor, threshold: float | None) -> list[list[Hit]]:
        ids = self._columns["ids"]
        wanted = sorted({int(ids[r]) for r in rows.reshape(-1).tolist() if r >= 0})
        metas = self._metas(wanted)
        out = []
        # 2 - 2 q.g of a crop with itself can come out a hair below 0 in float32.
        for d_row, r_row in zip(dist.clamp(min=0.0).tolist(), rows.tolist(), strict=True):
            out.append(
                [
                    Hit(int(ids[r]), float(d), metas[int(ids[r])], decide(float(d), threshold))
                    for d, r in zip(d_row, r_row, strict=True)
                    if r >= 0
                ]
            )
        return out

    def _metas(self, entry_ids: Sequence[int]) -> dict[int, CropMeta]:
        metas: dict[int, CropMeta] = {}
        for start in range(0, len(entry_ids), _SQL_CHUNK):
            chunk = list(entry_ids[start : start + _SQL_CHUNK])
            marks = ",".join("?" * len(chunk))
            query = f"SELECT {_ENTRY_FIELDS} FROM entries WHERE id IN ({marks})"
            for entry_id, *fields in self._db.execute(query, chunk):
                metas[entry_id] = CropMeta(*fields)
        return metas

    # --------------------------------------------------------------------------- forget
    def forget(
        self,
        *,
        track_ids: Sequence[str] = (),
        paths: Sequence[str] = (),
        older_than: float | None = None,
    ) -> int:
        with self._writer():
            self._refresh()
            doomed = self._select_ids("track_id", list(track_ids))
            doomed |= self._select_ids("path", list(paths))
            if older_than is not None:
                old = self._columns["ids"][self._columns["times"] < older_than]
                doomed.update(old.tolist())
            if doomed:
                self._remove(np.array(sorted(doomed), dtype=np.int64))
            self._audit(
                "forget",
                track_ids=list(track_ids),
                paths=list(paths),
                older_than=older_than,
                removed=len(doomed),
            )
        return len(doomed)

    def _select_ids(self, column: str, values: list[str]) -> set[int]:
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
            ann_path = self.folder / f"ann.{new_ann}.faiss"
            faiss.write_index(self._ann, str(ann_path))
            _fsync_file(ann_path)
            settings.update(ann_token=new_ann, ann_bytes=ann_path.stat().st_size)
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for start in range(0, len(doomed), _SQL_CHUNK):
                chunk = doomed[start : start + _SQL_CHUNK].tolist()
                marks = ",".join("?" * len(chunk))
                self._db.execute(f"DELETE FROM entries WHERE id IN ({marks})", chunk)
            self._set(settings)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            self._ann = self._ann_token = None  # it lost rows the gallery still has: reread
            self._load()
            raise
        if new_ann:
            self._ann_token = new_ann  # the index in memory is the one just committed
        self._wipe_rows(old_gen, np.flatnonzero(drop))
        for column in ("vectors", *_COLUMNS):
            self._path(column, old_gen).unlink()
        if old_token:
            (self.folder / f"ann.{old_token}.faiss").unlink()
        self._db.execute("VACUUM")
        _fsync_dir(self.folder)
        self._load()

    def _wipe_rows(self, generation: int, rows: np.ndarray) -> None:
        """Overwrite the removed rows of the old generation's vector file before unlinking it,
        so their bytes do not outlive the call on the disk blocks either."""
        width = self._dim * 4
        path = self._path("vectors", generation)
        zeros = bytes(width)
        with open(path, "r+b") as handle:
            for row in rows.tolist():
                handle.seek(row * width)
                handle.write(zeros)
            handle.flush()
            os.fsync(handle.fileno())

    # ---------------------------------------------------------------------------- misc
    def stats(self) -> GalleryStats:
        with self._lock:
            self._refresh()
            times = self._columns["times"]
            if self._ann is None:
                kind = "exact (torch)"
            else:
                tail = self._rows - self._indexed_rows()
                kind = f"IVF{self._ann.nlist},Flat nprobe={self._ann.nprobe} + exact tail {tail}"
            return GalleryStats(
                size=self._rows,
                cameras=tuple(sorted(self._known_cameras())),
                start=float(times.min()) if self._rows else None,
                end=float(times.max()) if self._rows else None,
                index_kind=kind,
                backend=self.backend,
                card=self.card,
            )

    def vectors(self, entry_ids: Sequence[int]) -> np.ndarray:
        with self._lock:
            self._refresh()
            wanted = np.asarray(entry_ids, dtype=np.int64)
            rows = np.searchsorted(self._columns["ids"], wanted).clip(max=max(self._rows - 1, 0))
            if self._rows == 0 or not np.array_equal(self._columns["ids"][rows], wanted):
                raise GalleryError(
                    f"gallery '{self.folder}' has no entry among some of {entry_ids}"
                )
            return self._vectors[torch.from_numpy(rows)].numpy()

    def thumbnail(self, entry_id: int) -> bytes | None:
        with self._lock:
            query = "SELECT thumbnail FROM entries WHERE id = ?"
            row = self._db.execute(query, (int(entry_id),)).fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        with self._lock:
            self._vectors = torch.empty(0)
            self._columns = {}
            self._ann = None
            self._db.close()

    def __enter__(self) -> EmbeddedGallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
