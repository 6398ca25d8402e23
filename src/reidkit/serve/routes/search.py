"""Routes that turn crops into embeddings and embeddings into hits."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, UploadFile
from pydantic import BeforeValidator

from reidkit.config.times import parse_time
from reidkit.gallery import validation
from reidkit.serve.deps import Searcher, ServicesDep, embed_uploads, parse_embedding
from reidkit.serve.gallery_access import as_utc, unix_seconds
from reidkit.serve.schemas import EmbedResponse, SearchResponse

router = APIRouter(prefix="/v1", tags=["search"])


def _number_as_unix_seconds(value: object) -> object:
    """A window end written as a number is unix seconds, read by the rule of an add's metadata
    and the manifest (1970..2200); pydantic would read one past 2e10 as milliseconds, so the
    year 3000 in seconds became 1971. ISO 8601 text is left to pydantic."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        return datetime.fromtimestamp(parse_time(value), tz=timezone.utc)
    return value


#: A time window end: ISO 8601, or unix seconds (see :func:`_number_as_unix_seconds`).
WindowEnd = Annotated[datetime | None, BeforeValidator(_number_as_unix_seconds)]


def _one_of(name: datetime | None, alias: datetime | None, key: str, old: str) -> datetime | None:
    """A window end given by its name or by the deprecated name the API first documented."""
    if name is not None and alias is not None:
        raise HTTPException(422, f"give {key} or its deprecated name {old}, not both")
    return name if name is not None else alias


@router.post("/embed")
async def embed(
    services: ServicesDep,
    caller: Searcher,
    images: Annotated[list[UploadFile], File(description="Person crops.")],
) -> EmbedResponse:
    """L2-normalised embeddings of the uploaded crops, in upload order."""
    vectors, _, _ = await embed_uploads(services, images)
    return EmbedResponse(embedding_dim=services.model.dim, embeddings=vectors.tolist())


@router.post("/search")
async def search(
    services: ServicesDep,
    caller: Searcher,
    images: Annotated[list[UploadFile] | None, File(description="Query crops.")] = None,
    embedding: Annotated[str | None, Form(description="JSON array, instead of images.")] = None,
    k: Annotated[int, Form(ge=1, le=10_000, description="Hits to return.")] = 10,
    cameras: Annotated[list[int] | None, Form(description="Only these cameras.")] = None,
    start: Annotated[WindowEnd, Form(description="Not before (ISO 8601 or unix seconds).")] = None,
    end: Annotated[WindowEnd, Form(description="Not after (ISO 8601 or unix seconds).")] = None,
    since: Annotated[
        WindowEnd, Form(description="Deprecated name of start.", deprecated=True)
    ] = None,
    until: Annotated[
        WindowEnd, Form(description="Deprecated name of end.", deprecated=True)
    ] = None,
) -> SearchResponse:
    """The k closest crops to one crop, several crops of one person (averaged) or a vector.

    Each hit carries its distance and the match/unknown decision of the gallery's
    threshold. The search is written to the gallery's audit log with the token's name.
    """
    if k > services.settings.max_k:
        raise HTTPException(422, f"k={k} is over the limit of {services.settings.max_k}")
    if bool(images) == (embedding is not None):
        raise HTTPException(422, "send either images or an embedding (exactly one)")
    start = as_utc(_one_of(start, since, "start", "since"))
    end = as_utc(_one_of(end, until, "end", "until"))
    try:
        validation.window(unix_seconds(start), unix_seconds(end))
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    if embedding is not None:
        queries = parse_embedding(embedding, services.model.dim)
    else:
        queries, _, _ = await embed_uploads(services, images or [])
    # Several crops of one person: search with their mean direction.
    query = queries.mean(axis=0, keepdims=True)
    query /= max(float(np.linalg.norm(query)), 1e-12)
    hits = await services.gallery.search(
        query,
        k=k,
        cameras=cameras or None,
        start=start,
        end=end,
        who=caller.name,
        full_paths=caller.allows("admin"),  # where a crop lives on disk is the admin's business
    )
    return SearchResponse(
        hits=hits, match_threshold=services.gallery.match_threshold, queries=len(queries)
    )
