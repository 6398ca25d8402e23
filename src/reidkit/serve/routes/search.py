"""Routes that turn crops into embeddings and embeddings into hits."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, UploadFile

from reidkit.serve.deps import Searcher, ServicesDep, embed_uploads, parse_embedding
from reidkit.serve.gallery_access import as_utc
from reidkit.serve.schemas import EmbedResponse, SearchResponse

router = APIRouter(prefix="/v1", tags=["search"])


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
    since: Annotated[datetime | None, Form(description="Not before (ISO 8601).")] = None,
    until: Annotated[datetime | None, Form(description="Not after (ISO 8601).")] = None,
) -> SearchResponse:
    """The k closest crops to one crop, several crops of one person (averaged) or a vector.

    Each hit carries its distance and the match/unknown decision of the gallery's
    threshold. The search is written to the gallery's audit log with the token's name.
    """
    if k > services.settings.max_k:
        raise HTTPException(422, f"k={k} is over the limit of {services.settings.max_k}")
    if bool(images) == (embedding is not None):
        raise HTTPException(422, "send either images or an embedding (exactly one)")
    since, until = as_utc(since), as_utc(until)
    if since and until and since > until:
        raise HTTPException(422, "since is after until")
    if embedding is not None:
        queries = parse_embedding(embedding, services.model.dim)
    else:
        queries, _, _ = await embed_uploads(services, images or [])
    # Several crops of one person: search with their mean direction.
    query = queries.mean(axis=0, keepdims=True)
    query /= max(float(np.linalg.norm(query)), 1e-12)
    hits = await services.gallery.search(
        query, k=k, cameras=cameras or None, since=since, until=until, who=caller.name
    )
    return SearchResponse(
        hits=hits, match_threshold=services.gallery.match_threshold, queries=len(queries)
    )
