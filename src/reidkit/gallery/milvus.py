"""The gallery on Milvus, for a fleet of cameras that outgrows one machine.

``gallery.uri`` is a Milvus server (``http://host:19530``) or a Milvus Lite file (``*.db``, the
test double of a cluster: exact but slow). A gallery is two collections named after
``collection``: the crops (vector + metadata, primary key = a 64-bit hash of the crop path, so
adding a stored path again is a no-op), and ``<collection>_log`` holding the settings row (id
0: model card, width, format version, and which collection holds the crops), the next
version's settings row while ``gallery rebuild`` fills it (id -1), and the audit records.

Vectors are stored L2-normalised with the inner-product metric and reported as ``2 - 2 ip``,
the distance of the embedded store. A server gets an IVF_FLAT index (as in NVIDIA's
multi-camera reference design), Milvus Lite a FLAT one. ``delete`` removes the rows; Milvus
drops their bytes when it compacts the segments, which ``delete`` requests. A rebuilt version
lives in ``<collection>_v<N>``; the switch is one upsert of the settings row, after which the
old crops collection is dropped.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import time
from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import numpy as np

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

#: Format 1: the crops in ``<collection>``; format 2: in the collection the settings name.
FORMAT_VERSION = 2

_TEXT_FIELDS = ("path", "track_id", "site", "zone")
_META_FIELDS = ["path", "camera", "timestamp", "track_id", "site", "zone"]
_MAX_TEXT = 4096
_MAX_THUMBNAIL = 65_535
# Rows per insert/query request (Milvus caps a request at 64 MB and a query at 16384 rows).
_BATCH = 4096
# Settings rows of the log collection: this version's, and the next one's during a rebuild.
_CURRENT, _NEXT = 0, -1


def crop_id_of(path: str) -> int:
    """Signed 64-bit primary key of a crop path: the same path always maps to the same row."""
    return int.from_bytes(
        hashlib.blake2b(path.encode(), digest_size=8).digest(), "big", signed=True
    )


def _quote(value: str) -> str:
    return json.dumps(value)


def _meta(entity: dict[str, Any]) -> CropMeta:
    return CropMeta(
        path=entity["path"],
        camera=int(entity["camera"]),
        timestamp=float(entity["timestamp"]),
        track_id=entity["track_id"] or None,
        site=entity["site"] or None,
        zone=entity["zone"] or None,
    )


def _expression(where: CropFilter | None) -> str:
    """Milvus boolean expression of a filter ("" accepts every crop)."""
    if where is None:
        return ""
    clauses = []
    if where.cameras is not None:
        clauses.append(f"camera in {[int(c) for c in where.cameras]}")
    if where.start is not None:
        clauses.append(f"timestamp >= {float(where.start)!r}")
    if where.end is not None:
        clauses.append(f"timestamp <= {float(where.end)!r}")
    return " and ".join(clauses)


class MilvusBackend(Backend):
    """A gallery in Milvus collections (see the module docstring).

    ``staged`` opens the next version a rebuild fills (see :meth:`staging`) instead of the
    gallery's current one, through ``client`` (the current version's connection).
    """

    kind = "milvus"

    def __init__(
        self,
        uri: str,
        *,
        create: bool = False,
        collection: str = "reidkit_gallery",
        staged: bool = False,
        client: Any = None,
    ) -> None:
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        self.location = uri
        self.name = collection
        self.log_name = f"{collection}_log"
        self._row = _NEXT if staged else _CURRENT
        self._settings = Settings(None, None, FORMAT_VERSION)
        self._owns_client = client is None
        try:
            self._client = client or MilvusClient(uri)
        except MilvusException as exc:
            raise GalleryError(
                f"cannot reach Milvus at '{uri}' ({exc.message}); check gallery.uri"
            ) from None
        if not self._client.has_collection(self.log_name):
            if not create:
                raise GalleryError(
                    f"Milvus at '{uri}' has no gallery '{collection}'; check gallery.uri or run "
                    "'reidkit gallery add' to create it"
                )
            self._create_log()
        self._read_settings()

    # ------------------------------------------------------------------------- plumbing
    def _create_log(self) -> None:
        _create_record_collection(self._client, self.log_name)
        self._write_row(_CURRENT, {"format_version": 1, "card": None, "dim": None})

    def _row_record(self, row_id: int) -> dict[str, Any] | None:
        rows = self._client.query(
            self.log_name,
            filter=f"id == {row_id}",
            output_fields=["record"],
            consistency_level="Strong",
        )
        return json.loads(rows[0]["record"]) if rows else None

    def _write_row(self, row_id: int, record: dict[str, Any]) -> None:
        row = {"id": row_id, "unused": [0.0, 0.0], "record": json.dumps(record)}
        self._client.upsert(self.log_name, [row])

    def _read_settings(self) -> dict[str, Any]:
        """This version's settings row; the crops collection and settings follow a switch."""
        record = self._row_record(self._row)
        if record is None:
            raise GalleryError(f"gallery '{self.location}' has no next version; rerun the rebuild")
        version = int(record.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise GalleryError(
                f"gallery '{self.location}' has format version {version}, this reidkit reads up "
                f"to {FORMAT_VERSION}; upgrade reidkit"
            )
        self._record = record
        self.crops = record.get("crops", self.name)
        card, dim = record.get("card"), record.get("dim")
        if card != self._settings.card or dim != self._settings.dim:
            self._settings = Settings(card, dim, version)
        return record

    def _has_crops(self) -> bool:
        return self._client.has_collection(self.crops)

    def _create_crops(self, dim: int) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("camera", DataType.INT64)
        schema.add_field("timestamp", DataType.DOUBLE)
        for field in _TEXT_FIELDS:
            schema.add_field(field, DataType.VARCHAR, max_length=_MAX_TEXT)
        schema.add_field("thumbnail", DataType.VARCHAR, max_length=_MAX_THUMBNAIL)
        index = self._client.prepare_index_params()
        if self.location.endswith(".db"):
            index.add_index("vector", index_type="FLAT", metric_type="IP")
        else:
            index.add_index(
                "vector", index_type="IVF_FLAT", metric_type="IP", params={"nlist": 1024}
            )
        self._client.create_collection(self.crops, schema=schema, index_params=index)

    def _query(self, expression: str, fields: list[str]) -> list[dict[str, Any]]:
        if not self._has_crops():
            return []
        return self._client.query(
            self.crops, filter=expression, output_fields=fields, consistency_level="Strong"
        )

    def _iterate(self, fields: list[str]) -> Iterator[list[dict[str, Any]]]:
        """Every crop row, in batches (a plain query stops at 16384 rows)."""
        if not self._has_crops():
            return
        iterator = self._client.query_iterator(
            self.crops, batch_size=_BATCH * 4, output_fields=fields
        )
        try:
            while batch := iterator.next():
                yield batch
        finally:
            iterator.close()

    # ------------------------------------------------------------------------ settings
    def settings(self) -> Settings:
        self._read_settings()
        return self._settings

    def record_card(self, card: dict[str, Any]) -> None:
        record = self._read_settings()
        if record.get("card") is None:
            self._write_row(self._row, {**record, "card": card})
            self._read_settings()

    # --------------------------------------------------------------------------- audit
    def append_audit(self, record: str, *, durable: bool) -> None:
        row = {"id": time.time_ns(), "unused": [0.0, 0.0], "record": record}
        self._client.insert(self.log_name, [row])

    def audit_records(self) -> list[dict[str, Any]]:
        rows = _every_row(self._client, self.log_name, "id > 0")
        return [json.loads(r["record"]) for r in sorted(rows, key=lambda r: r["id"])]

    # -------------------------------------------------------------------------- insert
    def insert(
        self, vectors: np.ndarray, metas: Sequence[CropMeta], thumbnails: Sequence[bytes | None]
    ) -> int:
        record = self._read_settings()
        dim = record.get("dim") or vectors.shape[1]
        if not self._has_crops():
            self._create_crops(dim)
        ids = [crop_id_of(m.path) for m in metas]
        rows, seen = [], self._existing(ids)
        for i, (crop_id, meta) in enumerate(zip(ids, metas, strict=True)):
            if crop_id in seen:
                continue
            seen.add(crop_id)
            encoded = base64.b64encode(thumbnails[i]).decode() if thumbnails[i] else ""
            rows.append(
                {
                    "id": crop_id,
                    "vector": vectors[i].tolist(),
                    "camera": int(meta.camera),
                    "timestamp": float(meta.timestamp),
                    **{f: getattr(meta, f) or "" for f in _TEXT_FIELDS},
                    "thumbnail": encoded if len(encoded) <= _MAX_THUMBNAIL else "",
                }
            )
        for start in range(0, len(rows), _BATCH):
            self._client.insert(self.crops, rows[start : start + _BATCH])
        if rows and record.get("dim") is None:
            self._write_row(self._row, {**record, "dim": int(dim)})
            self._read_settings()
        return len(rows)

    def contains(self, paths: Sequence[str]) -> list[bool]:
        ids = [crop_id_of(p) for p in paths]
        stored = self._existing(ids)
        return [i in stored for i in ids]

    def _existing(self, ids: Sequence[int]) -> set[int]:
        found: set[int] = set()
        for start in range(0, len(ids), _BATCH):
            chunk = list(ids[start : start + _BATCH])
            found.update(r["id"] for r in self._query(f"id in {chunk}", ["id"]))
        return found

    # -------------------------------------------------------------------------- search
    def nearest(
        self, queries: np.ndarray, k: int, where: CropFilter | None, exact: bool
    ) -> list[list[Hit]]:
        if not self._has_crops():
            return [[] for _ in range(len(queries))]
        results = self._client.search(
            self.crops,
            data=queries.tolist(),
            limit=k,
            filter=_expression(where),
            output_fields=_META_FIELDS,
            search_params={"metric_type": "IP", "params": {"nprobe": 1024 if exact else 64}},
            consistency_level="Strong",
        )
        return [
            sorted(
                (
                    Hit(
                        int(item["id"]),
                        2.0 - 2.0 * float(item["distance"]),
                        _meta(item["entity"]),
                        None,
                    )
                    for item in found
                ),
                key=lambda hit: hit.distance,
            )
            for found in results
        ]

    def count(self, where: CropFilter | None = None) -> int:
        return self._count(_expression(where))

    def _count(self, expression: str) -> int:
        rows = self._query(expression, ["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    # --------------------------------------------------------------------------- fetch
    def crop_ids(self) -> np.ndarray:
        ids = [int(r["id"]) for batch in self._iterate(["id"]) for r in batch]
        return np.array(sorted(ids), dtype=np.int64)

    def fetch(self, crop_ids: Sequence[int], *, thumbnails: bool = False) -> list[StoredCrop]:
        wanted = [int(i) for i in crop_ids]
        fields = [*_META_FIELDS, "thumbnail"] if thumbnails else _META_FIELDS
        found: dict[int, StoredCrop] = {}
        for start in range(0, len(wanted), _BATCH):
            for row in self._query(f"id in {wanted[start : start + _BATCH]}", fields):
                thumb = base64.b64decode(row["thumbnail"]) if row.get("thumbnail") else None
                found[int(row["id"])] = StoredCrop(int(row["id"]), _meta(row), thumb)
        return [found[i] for i in wanted if i in found]

    def vectors(self, crop_ids: Sequence[int]) -> np.ndarray:
        ids = [int(i) for i in crop_ids]
        found = {int(r["id"]): r["vector"] for r in self._query(f"id in {ids}", ["vector"])}
        if len(found) != len(set(ids)):
            raise GalleryError(f"gallery '{self.location}' has no crop among some of {ids}")
        return np.array([found[i] for i in ids], dtype=np.float32)

    # -------------------------------------------------------------------------- delete
    def delete(self, selection: Selection) -> int:
        clauses = []
        if selection.crop_ids:
            clauses.append(f"id in {[int(i) for i in selection.crop_ids]}")
        if selection.track_ids:
            clauses.append(f"track_id in [{', '.join(_quote(t) for t in selection.track_ids)}]")
        if selection.paths:
            clauses.append(f"id in {[crop_id_of(p) for p in selection.paths]}")
        if selection.before is not None:
            clauses.append(f"timestamp < {float(selection.before)!r}")
        if not clauses or not self._has_crops():
            return 0
        expression = " or ".join(f"({c})" for c in clauses)
        removed = self._count(expression)
        if removed:
            if self._client.has_collection(self._labels):  # a crop's identity goes with it
                doomed = [int(r["id"]) for r in self._query(expression, ["id"])]
                for start in range(0, len(doomed), _BATCH):
                    chunk = doomed[start : start + _BATCH]
                    self._client.delete(self._labels, filter=f"id in {chunk}")
            self._client.delete(self.crops, filter=expression)
            self._compact(self.crops)
        return removed

    def _compact(self, collection: str) -> None:
        """Ask the server to rewrite segments without the deleted rows (Lite has no compaction)."""
        from pymilvus.exceptions import MilvusException

        with contextlib.suppress(MilvusException, NotImplementedError):
            self._client.compact(collection)

    # ----------------------------------------------------------------- global identities
    @property
    def _labels(self) -> str:
        """The collection of crop id -> global identity (beside the log, so versions keep it)."""
        return f"{self.name}_identities"

    def label_identities(self, labels: dict[int, str]) -> int:
        wanted = [int(i) for i in labels]
        stored = sorted(self._existing(wanted))
        if not stored:
            return 0
        if not self._client.has_collection(self._labels):
            _create_record_collection(self._client, self._labels)
        rows = [{"id": i, "unused": [0.0, 0.0], "record": str(labels[i])} for i in stored]
        for start in range(0, len(rows), _BATCH):
            self._client.upsert(self._labels, rows[start : start + _BATCH])
        return len(stored)

    def identities(self, crop_ids: Sequence[int] | None = None) -> dict[int, str]:
        if not self._client.has_collection(self._labels):
            return {}
        if crop_ids is None:
            rows = _every_row(self._client, self._labels, "id >= -9223372036854775808")
        else:
            wanted = [int(i) for i in crop_ids]
            rows = []
            for start in range(0, len(wanted), _BATCH):
                rows += self._client.query(
                    self._labels,
                    filter=f"id in {wanted[start : start + _BATCH]}",
                    output_fields=["record"],
                    consistency_level="Strong",
                )
        return {int(r["id"]): r["record"] for r in rows}

    def event_log(self, name: str) -> MilvusEventLog:
        return MilvusEventLog(self._client, f"{self.name}_{name}")

    # ------------------------------------------------------------------------ versions
    def staging(self, create: bool) -> MilvusBackend | None:
        if self._row == _NEXT:
            raise GalleryError(f"'{self.crops}' is already the next version of a gallery")
        current = self._read_settings()
        if self._row_record(_NEXT) is None:
            if not create:
                return None
            version = int(current.get("version", 0)) + 1
            self._write_row(
                _NEXT,
                {
                    "format_version": FORMAT_VERSION,
                    "card": None,
                    "dim": None,
                    "crops": f"{self.name}_v{version}",
                    "version": version,
                },
            )
        return MilvusBackend(self.location, collection=self.name, staged=True, client=self._client)

    def discard_staging(self) -> None:
        staged = self._row_record(_NEXT)
        if staged is None:
            return
        if self._client.has_collection(staged["crops"]):
            self._client.drop_collection(staged["crops"])
        self._client.delete(self.log_name, filter=f"id == {_NEXT}")

    def state(self) -> Hashable:
        record = self._read_settings()
        return (record.get("crops", self.name), self.count())

    def promote(self, staged: Backend, expected_state: Hashable) -> bool:
        if not (isinstance(staged, MilvusBackend) and staged._row == _NEXT):
            raise GalleryError(f"only a next version of '{self.location}' can replace it")
        if self.state() != expected_state:
            return False
        old = self.crops
        # The commit point: one upsert of the settings row names the new crops collection.
        self._write_row(_CURRENT, {**staged._read_settings(), "format_version": FORMAT_VERSION})
        self._client.delete(self.log_name, filter=f"id == {_NEXT}")
        if self._client.has_collection(old):
            self._client.drop_collection(old)
        self._read_settings()
        return True

    # ---------------------------------------------------------------------------- misc
    def summary(self) -> Summary:
        cameras: set[int] = set()
        first, last, size = None, None, 0
        for batch in self._iterate(["camera", "timestamp"]):
            size += len(batch)
            cameras.update(int(r["camera"]) for r in batch)
            times = [float(r["timestamp"]) for r in batch]
            first = min(times) if first is None else min(first, *times)
            last = max(times) if last is None else max(last, *times)
        kind = "FLAT (Milvus Lite)" if self.location.endswith(".db") else "IVF_FLAT nlist=1024"
        return Summary(size, tuple(sorted(cameras)), first, last, kind)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


def _create_record_collection(client: Any, name: str) -> None:
    """A collection of (int64 id, text record) rows (Milvus needs a vector field: 2 zeros)."""
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)
    schema.add_field("record", DataType.VARCHAR, max_length=65_535)
    index = client.prepare_index_params()
    index.add_index("unused", index_type="FLAT", metric_type="L2")
    client.create_collection(name, schema=schema, index_params=index)


def _every_row(client: Any, collection: str, expression: str) -> list[dict[str, Any]]:
    """Every (id, record) row ``expression`` accepts (a plain query stops at 16384 rows)."""
    iterator = client.query_iterator(
        collection, batch_size=_BATCH * 4, filter=expression, output_fields=["record"]
    )
    rows: list[dict[str, Any]] = []
    try:
        while batch := iterator.next():
            rows += batch
    finally:
        iterator.close()
    return rows


class MilvusEventLog:
    """An :class:`~reidkit.gallery.store.EventLog` in a Milvus collection (record number =
    primary key). Milvus has no transactions: ``exclusive`` holds off this process's other
    threads only, so one process per site appends (any number read)."""

    def __init__(self, client: Any, collection: str) -> None:
        import threading

        self._client = client
        self._name = collection
        self._lock = threading.RLock()
        self._last = 0
        if not client.has_collection(collection):
            _create_record_collection(client, collection)

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        return self._lock

    def append(self, records: Sequence[dict[str, Any]]) -> int:
        with self._lock:
            self.read(self._last)  # the log's end, as committed now
            rows = [
                {"id": self._last + n, "unused": [0.0, 0.0], "record": json.dumps(record)}
                for n, record in enumerate(records, 1)
            ]
            if rows:
                self._client.insert(self._name, rows)
                self._last += len(rows)
            return self._last

    def read(self, after: int) -> list[tuple[int, dict[str, Any]]]:
        with self._lock:
            rows = _every_row(self._client, self._name, f"id > {int(after)}")
            found = sorted(
                ((int(r["id"]), json.loads(r["record"])) for r in rows), key=lambda row: row[0]
            )
            if found:
                self._last = max(self._last, found[-1][0])
            return found

    def close(self) -> None:
        return None
