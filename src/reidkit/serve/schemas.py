"""The JSON shapes of the ``/v1`` API (they are also its OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


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
    path: str = Field(description="The crop's key: its file path, or upload:<hash> for uploads.")
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


class CropMeta(BaseModel):
    """Metadata of one uploaded crop, in the order of the uploaded images."""

    camera: int = Field(ge=0, le=1_000_000)
    timestamp: datetime = Field(description="ISO 8601; without a zone it is taken as UTC.")
    track_id: str | None = Field(None, min_length=1, max_length=128)
    path: str | None = Field(
        None,
        min_length=1,
        max_length=512,
        description="The client's own key for the crop (e.g. its file path); only stored, never "
        "opened. Default: a hash of the image and metadata, so a retried add adds nothing twice.",
    )
    site: str | None = Field(None, max_length=128)
    zone: str | None = Field(None, max_length=128)


class AddResponse(BaseModel):
    added: int = Field(description="Crops stored by this request.")
    already_stored: int = Field(description="Crops whose key was already in the gallery.")
    paths: list[str] = Field(description="The key of every uploaded crop, in upload order.")


class ForgetResponse(BaseModel):
    forgotten: int = Field(description="Crops whose embeddings and thumbnails were deleted.")


class GalleryStats(BaseModel):
    size: int
    cameras: list[int]
    first: datetime | None = Field(description="Earliest crop time; null for an empty gallery.")
    last: datetime | None
    index: str = Field(description="Search index in use (exact or the ANN kind).")
    backend: str
    match_threshold: float | None
    model: dict[str, object] = Field(description="Model card of the gallery's embeddings.")
