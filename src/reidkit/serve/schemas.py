"""The JSON shapes of the ``/v1`` API (they are also its OpenAPI schema).

Names are the library's (:mod:`reidkit.gallery`): a stored crop is a ``crop_id``, a time window
is ``start`` / ``end``; an age is ``older_than``. What a crop's metadata may hold is checked by
:mod:`reidkit.gallery.validation`, the rules ``gallery add``'s manifest reader applies too.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from reidkit.config.numbers import NumbersNotBooleans
from reidkit.config.times import parse_time
from reidkit.gallery import validation


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    gallery_size: int = Field(description="Embeddings in the gallery.")
    embedding_dim: int = Field(description="Width of the served model's embeddings.")


class Me(BaseModel):
    name: str = Field(description="The token's name, as written to the audit log.")
    scopes: list[str]


class EmbedResponse(BaseModel):
    embedding_dim: int
    embeddings: list[list[float]] = Field(description="One L2-normalised row per image.")


class Hit(BaseModel):
    crop_id: int = Field(description="Id of the stored crop; its thumbnail is /v1/crops/{id}.")
    path: str = Field(
        description="The crop's key: its file path relative to the crop root (absolute for "
        "admin tokens), or the client's key / upload:<hash> for uploads."
    )
    distance: float = Field(
        description="Squared distance of the L2-normalised embeddings, 2 - 2 cos (0 = identical)."
    )
    camera: int
    timestamp: datetime
    track_id: str | None
    decision: Literal["match", "unknown"] | None = Field(
        description="'match' within the calibrated threshold, 'unknown' beyond it; null when "
        "the gallery's model has no threshold."
    )


class SearchResponse(BaseModel):
    hits: list[Hit] = Field(description="Closest first.")
    match_threshold: float | None = Field(
        description="Distance at or below which a hit is a match; null when uncalibrated."
    )
    queries: int = Field(description="Images (or embeddings) averaged into the query.")


class CropMeta(NumbersNotBooleans):
    """Metadata of one uploaded crop, in the order of the uploaded images (``true``/``false``
    for the camera is refused: lax validation stored the crop under camera 1 / 0; a camera
    written as text is still read, as the manifest reads its cells)."""

    camera: int = Field(ge=0, le=validation.CAMERA_MAX)
    timestamp: datetime = Field(
        description="ISO 8601, within 1970..2200; without a zone it is taken as UTC."
    )
    track_id: str | None = Field(None, min_length=1, max_length=validation.TRACK_ID_MAX)
    path: str | None = Field(
        None,
        min_length=1,
        max_length=512,
        description="The client's own key for the crop (e.g. its file path); only stored, never "
        "opened. Default: a hash of the image and metadata, so a retried add adds nothing twice.",
    )
    site: str | None = Field(None, max_length=128)
    zone: str | None = Field(None, max_length=128)

    @model_validator(mode="before")
    @classmethod
    def _known_fields(cls, value: object) -> object:
        """A field outside :data:`reidkit.gallery.validation.CROP_FIELDS` (``trackid``) is
        refused, as the manifest refuses such a column: pydantic dropped it and its value."""
        if isinstance(value, dict):
            validation.crop_fields(value, "field")
        return value

    @field_validator("timestamp", mode="before")
    @classmethod
    def _parsed(cls, value: object) -> object:
        """Text and numbers are read by the manifest's rule (unix seconds, never pydantic's
        milliseconds guess for large numbers), so both accept the same times."""
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            seconds = validation.timestamp(parse_time(str(value)))
            return datetime.fromtimestamp(seconds, tz=timezone.utc)
        return value

    @field_validator("timestamp")
    @classmethod
    def _in_range(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        validation.timestamp(value.timestamp())
        return value

    @field_validator("track_id")
    @classmethod
    def _track(cls, value: str | None) -> str | None:
        return None if value is None else validation.track_id(value)

    @field_validator("path")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        return None if value is None else validation.crop_key(value)


class AddResponse(BaseModel):
    added: int = Field(description="Crops stored by this request.")
    already_stored: int = Field(description="Crops whose key was already in the gallery.")
    paths: list[str] = Field(description="The key of every uploaded crop, in upload order.")


class ForgetResponse(BaseModel):
    forgotten: int = Field(description="Crops whose embeddings and thumbnails were deleted.")
    request: dict[str, Any] = Field(
        description="What the erase selected, as the gallery understood it: a track_id, path "
        "or crop_id, the cutoff 'before' (UTC) of an age, or everything."
    )
    warning: str | None = Field(
        None, description="Set when nothing matched (a typo in a track id is not an erasure)."
    )


class GalleryStats(BaseModel):
    size: int
    cameras: list[int]
    start: datetime | None = Field(description="Earliest crop time; null for an empty gallery.")
    end: datetime | None = Field(description="Latest crop time; null for an empty gallery.")
    first: datetime | None = Field(description="Deprecated: the same as start.", deprecated=True)
    last: datetime | None = Field(description="Deprecated: the same as end.", deprecated=True)
    index: str = Field(description="Search index in use (exact or the ANN kind).")
    backend: str
    match_threshold: float | None
    model: dict[str, object] = Field(description="Model card of the gallery's embeddings.")
