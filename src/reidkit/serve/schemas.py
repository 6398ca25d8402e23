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
    crop_id: str = Field(description="Id of the stored crop; its thumbnail is /v1/crops/{id}.")
    distance: float = Field(description="Cosine distance to the query (0 = identical).")
    camera: str
    timestamp: datetime
    track_id: str
    decision: Literal["match", "unknown"] = Field(
        description="'match' when the distance is within the gallery's calibrated threshold."
    )


class SearchResponse(BaseModel):
    hits: list[Hit] = Field(description="Closest first.")
    match_threshold: float | None = Field(
        description="Distance at or below which a hit is a match; null when uncalibrated."
    )
    queries: int = Field(description="Images (or embeddings) averaged into the query.")


class CropMeta(BaseModel):
    """Metadata of one uploaded crop, in the order of the uploaded images."""

    camera: str = Field(min_length=1, max_length=64)
    timestamp: datetime
    track_id: str = Field(min_length=1, max_length=128)
    site: str | None = Field(None, max_length=128)
    zone: str | None = Field(None, max_length=128)


class AddResponse(BaseModel):
    added: int
    crop_ids: list[str]


class ForgetResponse(BaseModel):
    forgotten: int = Field(description="Crops whose embeddings and thumbnails were deleted.")


class GalleryStats(BaseModel):
    size: int
    cameras: list[str]
    first: datetime | None = Field(description="Earliest crop time; null for an empty gallery.")
    last: datetime | None
    index: str = Field(description="Search index in use (exact or the ANN kind).")
    match_threshold: float | None
    model: dict[str, object] = Field(description="Model card of the gallery's embeddings.")
