"""The gallery on Milvus, for a fleet of cameras that outgrows one machine.

``gallery.uri`` is a Milvus server (``http://host:19530``) or a Milvus Lite file (``*.db``, the
test double of a cluster: exact but slow). A gallery is three collections named after
``collection``: the crops (vector + metadata, primary key = a 64-bit hash of the crop path, so
adding a stored path again is a no-op), and ``<collection>_log`` holding the settings row (model
card, format version) and the audit records.

Vectors are stored L2-normalised with the inner-product metric and reported as ``2 - 2 ip``,
the distance of the embedded store. A server gets an IVF_FLAT index (as in NVIDIA's
multi-camera reference design), Milvus Lite a FLAT one. ``forget`` deletes the rows; Milvus
drops their bytes when it compacts the segments, which ``forget`` requests.
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from reidkit.gallery.store import (
    CropMeta,
    GalleryError,
    GalleryStats,
    Hit,
    check_card_fits,
    decide,
    rows_to_add,
    squared_distance,
    unit_rows,
)

# Version of the collections' layout; a gallery written by a newer reidkit is refused.
FORMAT_VERSION = 1

_TEXT_FIELDS = ("path", "track_id", "site", "zone")
_OUTPUT_FIELDS = ["path", "camera", "timestamp", "track_id", "site", "zone"]
_MAX_TEXT = 4096
_MAX_THUMBNAIL = 65_535
# Rows per insert/query request (Milvus caps a request at 64 MB and a query at 16384 rows).
_BATCH = 4096


def entry_id_of(path: str) -> int:
    """Signed 64-bit primary key of a crop path: the same path always maps to the same row."""
    return int.from_bytes(
        hashlib.blake2b(path.encode(), digest_size=8).digest(), "big", signed=True
    )


def _quote(value: str) -> str:
    return json.dumps(value)


class MilvusGallery:
    """A gallery in a Milvus collection (see the module docstring)."""

    backend = "milvus"

    def __init__(
        self,
        uri: str,
        card: dict[str, Any] | None = None,
        *,
        create: bool = False,
        operator: str | None = None,
        collection: str = "reidkit_gallery",
    ) -> None:
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        self.uri = uri
        self.operator = operator or getpass.getuser()
        self.name = collection
        self.log_name = f"{collection}_log"
        self._given_card = card
        try:
            self._client = MilvusClient(uri)
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
        settings = self._settings()
        version = int(settings.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise GalleryError(
                f"gallery '{uri}' has format version {version}, this reidkit reads up to "
                f"{FORMAT_VERSION}; upgrade reidkit"
            )
        self._card = settings.get("card")
        self._dim = settings.get("dim")
        check_card_fits(self._card, card, uri)

    # ------------------------------------------------------------------------- plumbing
    def _create_log(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)
        schema.add_field("record", DataType.VARCHAR, max_length=65_535)
        index = self._client.prepare_index_params()
        index.add_index("unused", index_type="FLAT", metric_type="L2")
        self._client.create_collection(self.log_name, schema=schema, index_params=index)
        self._write_settings({"format_version": FORMAT_VERSION, "card": None, "dim": None})

    def _settings(self) -> dict[str, Any]:
        rows = self._client.query(
            self.log_name, filter="id == 0", output_fields=["record"], consistency_level="Strong"
        )
        return json.loads(rows[0]["record"]) if rows else {}

    def _write_settings(self, settings: dict[str, Any]) -> None:
        row = {"id": 0, "unused": [0.0, 0.0], "record": json.dumps(settings)}
        self._client.upsert(self.log_name, [row])

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
        if self.uri.endswith(".db"):
            index.add_index("vector", index_type="FLAT", metric_type="IP")
        else:
            index.add_index(
                "vector", index_type="IVF_FLAT", metric_type="IP", params={"nlist": 1024}
            )
        self._client.create_collection(self.name, schema=schema, index_params=index)

    def _audit(self, action: str, **what: Any) -> None:
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "operator": self.operator,
            "action": action,
            **what,
        }
        row = {"id": time.time_ns(), "unused": [0.0, 0.0], "record": json.dumps(record)}
        self._client.insert(self.log_name, [row])

    def audit_log(self) -> list[dict[str, Any]]:
        """Every audit record, oldest first."""
        rows = self._client.query(
            self.log_name, filter="id > 0", output_fields=["record"], consistency_level="Strong"
        )
        return [json.loads(r["record"]) for r in sorted(rows, key=lambda r: r["id"])]

    @property
    def card(self) -> dict[str, Any] | None:
        return self._card

    def _has_crops(self) -> bool:
        return self._client.has_collection(self.name)

    # ------------------------------------------------------------------------------ add
    def add(
        self,
        vectors: np.ndarray | Tensor,
        metas: Sequence[CropMeta],
        thumbnails: Sequence[bytes | None] | None = None,
    ) -> int:
        matrix = rows_to_add(vectors, metas, thumbnails)
        dim = self._dim or (self._given_card or {}).get("embedding_dim") or matrix.shape[1]
        if matrix.shape[1] != dim:
            raise GalleryError(
                f"embeddings have {matrix.shape[1]} dimensions, gallery '{self.uri}' holds "
                f"{dim}; use the model that filled it"
            )
        if not self._has_crops():
            self._create_crops(dim)
        ids = [entry_id_of(m.path) for m in metas]
        stored = self._existing(ids)
        rows, seen = [], set(stored)
        for i, (entry_id, meta) in enumerate(zip(ids, metas, strict=True)):
            if entry_id in seen:
                continue
            seen.add(entry_id)
            thumb = None if thumbnails is None else thumbnails[i]
            encoded = base64.b64encode(thumb).decode() if thumb else ""
            rows.append(
                {
                    "id": entry_id,
                    "vector": matrix[i].tolist(),
                    "camera": int(meta.camera),
                    "timestamp": float(meta.timestamp),
                    **{f: getattr(meta, f) or "" for f in _TEXT_FIELDS},
                    "thumbnail": encoded if len(encoded) <= _MAX_THUMBNAIL else "",
                }
            )
        for start in range(0, len(rows), _BATCH):
            self._client.insert(self.name, rows[start : start + _BATCH])
        if rows and (self._card is None or self._dim is None):
            self._card = self._card or self._given_card
            self._dim = int(dim)
            self._write_settings(
                {"format_version": FORMAT_VERSION, "card": self._card, "dim": self._dim}
            )
        self._audit("add", added=len(rows), skipped=len(metas) - len(rows))
        return len(rows)

    def contains(self, paths: Sequence[str]) -> list[bool]:
        if not self._has_crops():
            return [False] * len(paths)
        ids = [entry_id_of(p) for p in paths]
        stored = self._existing(ids)
        return [i in stored for i in ids]

    def _existing(self, ids: Sequence[int]) -> set[int]:
        found: set[int] = set()
        for start in range(0, len(ids), _BATCH):
            chunk = list(ids[start : start + _BATCH])
            rows = self._client.query(
                self.name,
                filter=f"id in {chunk}",
                output_fields=["id"],
                consistency_level="Strong",
            )
            found.update(r["id"] for r in rows)
        return found

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
    ) -> list[list[Hit]]:
        queries = unit_rows(vectors, "query embeddings")
        if k < 1:
            raise GalleryError(f"top-k must be at least 1, got {k}")
        if not self._has_crops():
            return [[] for _ in range(len(queries))]
        if queries.shape[1] != self._dim:
            raise GalleryError(
                f"query embeddings have {queries.shape[1]} dimensions, gallery '{self.uri}' "
                f"holds {self._dim}; use the model that filled it"
            )
        clauses = []
        if cameras is not None:
            for camera in cameras:
                if not self._count(f"camera == {int(camera)}"):
                    raise GalleryError(
                        f"camera {camera} is not in gallery '{self.uri}'; check the camera filter"
                    )
            clauses.append(f"camera in {[int(c) for c in cameras]}")
        if start is not None:
            clauses.append(f"timestamp >= {float(start)!r}")
        if end is not None:
            clauses.append(f"timestamp <= {float(end)!r}")
        results = self._client.search(
            self.name,
            data=queries.tolist(),
            limit=k,
            filter=" and ".join(clauses),
            output_fields=_OUTPUT_FIELDS,
            search_params={"metric_type": "IP", "params": {"nprobe": 64}},
            consistency_level="Strong",
        )
        limit = self._threshold(threshold)
        hits = []
        for found in results:
            row_hits = []
            for item in found:
                entity = item["entity"]
                distance = squared_distance(float(item["distance"]))
                row_hits.append(
                    Hit(int(item["id"]), distance, _meta(entity), decide(distance, limit))
                )
            hits.append(sorted(row_hits, key=lambda h: h.distance))
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

    def _threshold(self, given: float | None) -> float | None:
        return given if given is not None else (self._card or {}).get("match_threshold")

    def _count(self, expression: str) -> int:
        rows = self._client.query(
            self.name, filter=expression, output_fields=["count(*)"], consistency_level="Strong"
        )
        return int(rows[0]["count(*)"])

    # --------------------------------------------------------------------------- forget
    def forget(
        self,
        *,
        track_ids: Sequence[str] = (),
        paths: Sequence[str] = (),
        older_than: float | None = None,
    ) -> int:
        clauses = []
        if track_ids:
            clauses.append(f"track_id in [{', '.join(_quote(t) for t in track_ids)}]")
        if paths:
            clauses.append(f"id in {[entry_id_of(p) for p in paths]}")
        if older_than is not None:
            clauses.append(f"timestamp < {float(older_than)!r}")
        removed = 0
        if clauses and self._has_crops():
            expression = " or ".join(f"({c})" for c in clauses)
            removed = self._count(expression)
            if removed:
                self._client.delete(self.name, filter=expression)
                self._compact()
        self._audit(
            "forget",
            track_ids=list(track_ids),
            paths=list(paths),
            older_than=older_than,
            removed=removed,
        )
        return removed

    def _compact(self) -> None:
        """Ask the server to rewrite segments without the deleted rows (Lite has no compaction)."""
        from pymilvus.exceptions import MilvusException

        with contextlib.suppress(MilvusException, NotImplementedError):
            self._client.compact(self.name)

    # ----------------------------------------------------------------------------- misc
    def stats(self) -> GalleryStats:
        cameras: set[int] = set()
        first, last, size = None, None, 0
        if self._has_crops():
            iterator = self._client.query_iterator(
                self.name, batch_size=_BATCH * 4, output_fields=["camera", "timestamp"]
            )
            while batch := iterator.next():
                size += len(batch)
                cameras.update(int(r["camera"]) for r in batch)
                times = [float(r["timestamp"]) for r in batch]
                first = min(times) if first is None else min(first, *times)
                last = max(times) if last is None else max(last, *times)
            iterator.close()
        kind = "FLAT (Milvus Lite)" if self.uri.endswith(".db") else "IVF_FLAT nlist=1024"
        return GalleryStats(size, tuple(sorted(cameras)), first, last, kind, "milvus", self._card)

    def vectors(self, entry_ids: Sequence[int]) -> np.ndarray:
        ids = [int(i) for i in entry_ids]
        rows = (
            self._client.query(
                self.name,
                filter=f"id in {ids}",
                output_fields=["vector"],
                consistency_level="Strong",
            )
            if self._has_crops()
            else []
        )
        found = {int(r["id"]): r["vector"] for r in rows}
        if len(found) != len(set(ids)):
            raise GalleryError(f"gallery '{self.uri}' has no entry among some of {ids}")
        return np.array([found[i] for i in ids], dtype=np.float32)

    def thumbnail(self, entry_id: int) -> bytes | None:
        if not self._has_crops():
            return None
        rows = self._client.query(
            self.name,
            filter=f"id == {int(entry_id)}",
            output_fields=["thumbnail"],
            consistency_level="Strong",
        )
        return base64.b64decode(rows[0]["thumbnail"]) if rows and rows[0]["thumbnail"] else None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> MilvusGallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _meta(entity: dict[str, Any]) -> CropMeta:
    return CropMeta(
        path=entity["path"],
        camera=int(entity["camera"]),
        timestamp=float(entity["timestamp"]),
        track_id=entity["track_id"] or None,
        site=entity["site"] or None,
        zone=entity["zone"] or None,
    )
