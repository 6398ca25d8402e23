"""Routes that read and change the gallery: add crops, stats, thumbnails, forget."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Path, Query, UploadFile
from fastapi.responses import Response
from pydantic import TypeAdapter, ValidationError

from reidkit.serve.deps import Admin, GalleryDep, Searcher, ServicesDep, Writer, embed_uploads
from reidkit.serve.gallery_access import upload_key
from reidkit.serve.schemas import AddResponse, CropMeta, ForgetResponse, GalleryStats

router = APIRouter(prefix="/v1", tags=["gallery"])

_AGE = re.compile(r"^(\d+)([smhd])$")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _parse_age(text: str) -> timedelta:
    match = _AGE.match(text)
    if match is None:
        raise HTTPException(422, "older_than must be a number and a unit, e.g. 30d, 12h, 90m")
    return timedelta(**{_AGE_UNITS[match.group(2)]: int(match.group(1))})


@router.post("/gallery", status_code=201)
async def add(
    services: ServicesDep,
    caller: Writer,
    images: Annotated[list[UploadFile], File(description="Person crops.")],
    metadata: Annotated[
        str, Form(description="JSON array: one {camera, timestamp, track_id} per image.")
    ],
) -> AddResponse:
    """Embed and store crops with their camera, time and track."""
    try:
        records = TypeAdapter(list[CropMeta]).validate_json(metadata)
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise HTTPException(422, f"metadata[{where}]: {problem['msg']}") from None
    if len(records) != len(images):
        raise HTTPException(
            422, f"{len(images)} images but {len(records)} metadata entries; send one each"
        )
    vectors, payloads, thumbnails = await embed_uploads(services, images, thumbnails=True)
    keys = [
        meta.path or upload_key(data, meta) for data, meta in zip(payloads, records, strict=True)
    ]
    added = await services.gallery.add(vectors, records, thumbnails, keys, who=caller.name)
    return AddResponse(added=added, already_stored=len(keys) - added, paths=keys)


@router.delete("/gallery")
async def forget(
    gallery: GalleryDep,
    caller: Admin,
    track_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    path: Annotated[str | None, Query(min_length=1, max_length=512)] = None,
    older_than: Annotated[str | None, Query(description="e.g. 30d, 12h, 90m")] = None,
) -> ForgetResponse:
    """Delete a track, one crop (by its path key) or everything older than an age.

    The data is removed from the gallery's files, not hidden; the call is audited.
    """
    chosen = [x for x in (track_id, path, older_than) if x is not None]
    if len(chosen) != 1:
        raise HTTPException(422, "give exactly one of track_id, path, older_than")
    age = _parse_age(older_than) if older_than is not None else None
    count = await gallery.forget(track_id=track_id, path=path, older_than=age, who=caller.name)
    return ForgetResponse(forgotten=count)


@router.get("/gallery/stats")
async def stats(gallery: GalleryDep, caller: Searcher) -> GalleryStats:
    """Size, cameras, time span, index kind, threshold and model card."""
    return await gallery.stats()


@router.get("/crops/{crop_id}", response_class=Response)
async def crop(
    gallery: GalleryDep,
    caller: Searcher,
    crop_id: Annotated[int, Path(ge=0, le=2**62, description="A hit's crop_id.")],
) -> Response:
    """The stored JPEG thumbnail of a crop (the id is an integer, checked before any use)."""
    data = await gallery.thumbnail(crop_id)
    if data is None:
        raise HTTPException(404, f"no crop {crop_id} in the gallery")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})
