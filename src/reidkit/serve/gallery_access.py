"""The server's side of a :class:`~reidkit.gallery.front.Gallery`: one thread, HTTP types.

A gallery is not written for concurrent callers (the embedded one holds a SQLite connection,
which belongs to the thread that opened it), so every call runs on one dedicated thread, in
arrival order; the event loop never blocks on it. The API uses the gallery's names (``crop_id``,
``start``/``end``, ``before``); this module converts the units (ISO 8601 times to unix seconds,
the age ``older_than`` to the cutoff ``before``) and passes the caller's name as the operator
of each audited call.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from reidkit.errors import ReidkitError
from reidkit.gallery.factory import is_milvus_uri, open_gallery
from reidkit.gallery.front import Gallery
from reidkit.gallery.ingest import THUMBNAIL_HEIGHT
from reidkit.gallery.store import CropFilter, CropMeta, GalleryStats, Hit, Selection
from reidkit.serve import schemas

T = TypeVar("T")


class RequestRefused(ValueError):
    """The gallery refused a request (e.g. an unknown camera in a filter): the client's to fix."""


def _utc(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=timezone.utc)


def as_utc(moment: datetime | None) -> datetime | None:
    """A time without a zone is taken as UTC (as the page sends it); others keep theirs."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=timezone.utc)


def unix_seconds(moment: datetime | None) -> float | None:
    """Unix seconds of an API time (no zone: UTC), or None."""
    moment = as_utc(moment)
    return None if moment is None else moment.timestamp()


def upload_key(data: bytes, meta: schemas.CropMeta) -> str:
    """The stored ``path`` of an uploaded crop that names none: its bytes and metadata.

    A client that retries an add after a timeout then adds nothing twice, which is what the
    gallery's path de-duplication gives file-based ingest.
    """
    digest = hashlib.sha256(data)
    digest.update(f"|{meta.camera}|{unix_seconds(meta.timestamp)}|{meta.track_id}".encode())
    return f"upload:{digest.hexdigest()[:32]}"


def shown_path(path: str, crop_root: str | None) -> str:
    """A crop's path as a search token may see it: relative to the crop root, not the layout
    of the ingest machine. Keys that are no file path (uploads) are shown as stored; an
    absolute path outside the root, as its file name."""
    if not os.path.isabs(path):
        return path
    if crop_root is not None:
        relative = os.path.relpath(path, crop_root)
        if not relative.startswith(os.pardir):
            return relative
    return os.path.basename(path)


def make_thumbnail(image: Image.Image) -> bytes:
    """The stored JPEG of an uploaded crop, made as ``gallery add`` makes it for crop files."""
    small = image.copy()
    small.thumbnail((THUMBNAIL_HEIGHT, THUMBNAIL_HEIGHT))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


class GalleryService:
    """A gallery behind one worker thread, with the size cached for ``/metrics`` and health."""

    def __init__(
        self, executor: ThreadPoolExecutor, gallery: Gallery, uri: str, crop_root: str | None
    ) -> None:
        self._executor = executor
        self._gallery = gallery
        self._uri = uri
        self._crop_root = crop_root
        self._size = 0
        self._threshold: float | None = None
        self._stats()

    @classmethod
    def open(
        cls,
        uri: str,
        card: dict[str, Any],
        match_threshold: float | None = None,
        *,
        crop_root: str | None = None,
        audit_file: Path | None = None,
    ) -> GalleryService:
        """Open (or create) the gallery at ``uri`` on a new worker thread, for ``card``'s model.

        ``match_threshold`` overrides the calibrated one of the gallery's model card. Hits show
        crop paths relative to ``crop_root`` (see :func:`shown_path`). A gallery folder this
        process cannot write opens read-only, auditing to ``audit_file``.
        """
        options: dict[str, Any] = {} if is_milvus_uri(uri) else {"audit_file": audit_file}
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reidkit-gallery")
        try:
            gallery = executor.submit(
                open_gallery, uri, card, create=True, match_threshold=match_threshold, **options
            ).result()
            return executor.submit(cls, executor, gallery, uri, crop_root).result()
        except BaseException:
            executor.shutdown(wait=False)
            raise

    async def _call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a gallery call on the gallery's thread; its one-line refusals become
        :class:`RequestRefused`, with the server's gallery location left out."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, lambda: function(*args, **kwargs))
        except ReidkitError as exc:
            message = str(exc).replace(f"gallery '{self._uri}'", "the gallery")
            raise RequestRefused(message.replace(f"'{self._uri}'", "the gallery")) from None

    def cached_size(self) -> int:
        """Entries after the last add or forget (read without waiting for the store's thread)."""
        return self._size

    @property
    def match_threshold(self) -> float | None:
        """The configured threshold, else the calibrated one of the gallery's model card (as
        of the last call: read on the gallery's thread, never on the event loop)."""
        return self._threshold

    def _search(self, query: np.ndarray, k: int, where: CropFilter, who: str) -> list[Hit]:
        """On the gallery's thread: one query's hits, and the threshold that decided them."""
        (hits,) = self._gallery.search(query, k, where=where, operator=who)
        self._threshold = self._gallery.match_threshold
        return hits

    def _stats(self) -> GalleryStats:
        """On the gallery's thread: its stats, refreshing what the event loop reads cached."""
        stats = self._gallery.stats()
        self._size, self._threshold = stats.size, self._gallery.match_threshold
        return stats

    async def size(self) -> int:
        await self._call(self._stats)
        return self._size

    async def add(
        self,
        vectors: np.ndarray,
        metas: Sequence[schemas.CropMeta],
        thumbnails: Sequence[bytes],
        keys: Sequence[str],
        who: str,
    ) -> int:
        """Store the crops whose key is new, all or none of them (the gallery's guarantee);
        the add is audited as ``who``."""
        records = [
            CropMeta(
                path=key,
                camera=meta.camera,
                timestamp=unix_seconds(meta.timestamp) or 0.0,
                track_id=meta.track_id,
                site=meta.site,
                zone=meta.zone,
            )
            for key, meta in zip(keys, metas, strict=True)
        ]
        added = await self._call(
            self._gallery.add, vectors, records, list(thumbnails), operator=who
        )
        await self.size()
        return added

    async def search(
        self,
        query: np.ndarray,
        *,
        k: int,
        cameras: list[int] | None,
        start: datetime | None,
        end: datetime | None,
        who: str,
        full_paths: bool = False,
    ) -> list[schemas.Hit]:
        """The k nearest crops to one query vector ``[1, D]``, audited as ``who``; paths as
        stored with ``full_paths`` (admin), else relative to the crop root."""
        where = CropFilter(
            cameras=None if cameras is None else tuple(cameras),
            start=unix_seconds(start),
            end=unix_seconds(end),
        )
        hits = await self._call(self._search, query, k, where, who)
        return [
            schemas.Hit(
                crop_id=hit.crop_id,
                path=hit.meta.path if full_paths else shown_path(hit.meta.path, self._crop_root),
                distance=hit.distance,
                camera=hit.meta.camera,
                timestamp=_utc(hit.meta.timestamp),
                track_id=hit.meta.track_id,
                decision=hit.decision,
            )
            for hit in hits
        ]

    async def forget(
        self,
        *,
        track_id: str | None = None,
        path: str | None = None,
        crop_id: int | None = None,
        older_than: timedelta | None = None,
        who: str,
    ) -> schemas.ForgetResponse:
        """Remove a track, a crop or everything older than an age, audited as ``who``; the
        answer says what was selected and warns when nothing matched."""
        before = None
        if older_than is not None:  # the API's age becomes the gallery's absolute cutoff
            try:
                before = datetime.now(timezone.utc) - older_than
            except OverflowError:  # a cutoff before year 1: no date, and no crop that old
                raise RequestRefused("older_than reaches back before year 1") from None
        selection = Selection(
            track_ids=() if track_id is None else (track_id,),
            paths=() if path is None else (path,),
            crop_ids=() if crop_id is None else (crop_id,),
            before=unix_seconds(before),
        )
        count = await self._call(self._gallery.forget, selection, operator=who)
        asked = {"track_id": track_id, "path": path, "crop_id": crop_id, "before": before}
        return await self._erased(count, {k: v for k, v in asked.items() if v is not None})

    async def forget_all(self, *, who: str) -> schemas.ForgetResponse:
        """Remove every crop of the gallery, audited as ``who``."""
        count = await self._call(self._gallery.forget_all, operator=who)
        return await self._erased(count, {"everything": True})

    async def _erased(self, count: int, asked: dict[str, Any]) -> schemas.ForgetResponse:
        await self.size()
        warning = None if count else "nothing matched; no crop was erased (check the request)"
        return schemas.ForgetResponse(forgotten=count, request=asked, warning=warning)

    async def stats(self) -> schemas.GalleryStats:
        stats = await self._call(self._stats)
        return schemas.GalleryStats(
            size=stats.size,
            cameras=sorted(stats.cameras),
            start=_utc(stats.start),
            end=_utc(stats.end),
            first=_utc(stats.start),
            last=_utc(stats.end),
            index=stats.index_kind,
            backend=stats.backend,
            match_threshold=self.match_threshold,
            model=stats.card or {},
        )

    async def thumbnail(self, crop_id: int) -> bytes | None:
        return await self._call(self._gallery.thumbnail, crop_id)

    def close(self) -> None:
        """Close the gallery on its own thread, then stop the thread."""
        self._executor.submit(self._gallery.close).result()
        self._executor.shutdown(wait=True)
