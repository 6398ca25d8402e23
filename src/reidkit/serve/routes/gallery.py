"""Routes that read and change the gallery: add crops, stats, thumbnails, forget."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Path, Query, UploadFile
from fastapi.responses import Response
from pydantic import TypeAdapter, ValidationError

from reidkit.gallery import validation
from reidkit.serve.deps import Admin, GalleryDep, Searcher, ServicesDep, Writer, embed_uploads
from reidkit.serve.gallery_access import upload_key
from reidkit.serve.schemas import AddResponse, CropMeta, ForgetResponse, GalleryStats

router = APIRouter(prefix="/v1", tags=["gallery"])

#: The confirmation an erase-everything request must carry, so no default or typo can send one.
CONFIRM_ALL = "erase-everything"
_AGE = re.compile(r"^(\d+)([smhd])$")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _parse_age(text: str) -> timedelta:
    """The age ``older_than`` names; 422 for one that is no age, or longer than the calendar
    (``timedelta`` overflows past 999,999,999 days, ``int`` refuses over 4,300 digits: both
    were a 500)."""
    match = _AGE.match(text)
    if match is None:
        raise HTTPException(422, "older_than must be a number and a unit, e.g. 30d, 12h, 90m")
    try:
        return timedelta(**{_AGE_UNITS[match.group(2)]: int(match.group(1))})
    except (OverflowError, ValueError):
        raise HTTPException(422, "older_than reaches back before year 1") from None


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
        reason = problem["msg"].removeprefix("Value error, ")  # our rules' words, as the CLI's
        raise HTTPException(422, f"metadata[{where}]: {reason}") from None
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
    track_id: Annotated[str | None, Query(min_length=1, max_length=validation.TRACK_ID_MAX)] = None,
    path: Annotated[str | None, Query(min_length=1, max_length=512)] = None,
    crop_id: Annotated[int | None, Query(ge=0, le=2**62, description="A hit's crop_id.")] = None,
    older_than: Annotated[
        str | None, Query(description="An age of at least 1h, e.g. 30d, 12h, 90m.")
    ] = None,
    everything: Annotated[
        bool, Query(alias="all", description="Erase every crop (needs confirm).")
    ] = False,
    confirm: Annotated[
        str | None, Query(description=f"With all=true: the literal '{CONFIRM_ALL}'.")
    ] = None,
) -> ForgetResponse:
    """Delete a track, one crop (by its crop_id or path key), everything older than an age
    (at least an hour), or, asked for explicitly, everything.

    The data is removed from the gallery's files, not hidden; the call is audited. The answer
    says what was selected and carries a warning when nothing matched.
    """
    chosen = [x for x in (track_id, path, crop_id, older_than) if x is not None]
    if everything:
        if chosen:
            raise HTTPException(422, "all=true erases everything; give no other selection")
        if confirm != CONFIRM_ALL:
            raise HTTPException(
                422, f"erasing everything needs confirm={CONFIRM_ALL} in the same request"
            )
        return await gallery.forget_all(who=caller.name)
    if len(chosen) != 1:
        raise HTTPException(
            422, "give exactly one of track_id, path, crop_id, older_than (or all=true)"
        )
    try:
        if track_id is not None:
            validation.track_id(track_id)
        age = None if older_than is None else validation.forget_age(_parse_age(older_than))
    except ValueError as exc:
        raise HTTPException(422, f"{'older_than' if older_than else 'track_id'}: {exc}") from None
    return await gallery.forget(
        track_id=track_id, path=path, crop_id=crop_id, older_than=age, who=caller.name
    )


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
