"""What the route modules share: the services of one app and the dependencies that hand them out.

A route module never reaches for ``app.state`` itself: it declares what it needs (``SettingsDep``,
``GalleryDep``, ``ModelDep``, a scope such as ``Searcher``) and FastAPI resolves it per request,
as in FastAPI's "bigger applications" layout. A new router (e.g. live association) needs only
these names and one ``include_router`` line in :mod:`reidkit.serve.app`.

The dependencies are ``async``: they do no blocking work (a token check is a stat and a hash),
and FastAPI runs a plain function in its thread pool, a hop to another thread and back for
each one on every request (and requests can overtake each other there).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import Depends, HTTPException, Request, UploadFile
from fastapi.dependencies.utils import field_annotation_is_sequence, get_flat_params
from fastapi.params import Form, Query
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from reidkit.data.images import decode_rgb
from reidkit.errors import ImageRefused
from reidkit.serve.embedding import ServedModel
from reidkit.serve.gallery_access import GalleryService, make_thumbnail
from reidkit.serve.metrics import ServerMetrics
from reidkit.serve.settings import ServeSettings
from reidkit.serve.tokens import Caller, TokenStore

_bearer = HTTPBearer(auto_error=False, description="A token from 'reidkit serve token'.")


@dataclass(frozen=True)
class Services:
    """Everything a request handler needs, held on ``app.state.services``."""

    settings: ServeSettings
    model: ServedModel
    gallery: GalleryService
    tokens: TokenStore
    metrics: ServerMetrics


async def _services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(_services)]


async def _settings(services: ServicesDep) -> ServeSettings:
    return services.settings


async def _gallery(services: ServicesDep) -> GalleryService:
    return services.gallery


async def _model(services: ServicesDep) -> ServedModel:
    return services.model


SettingsDep = Annotated[ServeSettings, Depends(_settings)]
GalleryDep = Annotated[GalleryService, Depends(_gallery)]
ModelDep = Annotated[ServedModel, Depends(_model)]


def _single_valued(route: APIRoute) -> tuple[list[str], list[str]]:
    """The query parameters and the form fields of ``route`` (its dependencies' too) that take
    one value: (query names, form names)."""
    query = [
        field.alias
        for field in get_flat_params(route.dependant)
        if isinstance(field.field_info, Query)
        and not field_annotation_is_sequence(field.field_info.annotation)
    ]
    form = [
        field.alias
        for field in route.dependant.body_params
        if isinstance(field.field_info, Form)
        and not field_annotation_is_sequence(field.field_info.annotation)
    ]
    return query, form


_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


async def single_values(request: Request) -> None:
    """An app-wide dependency: 422 for a single-valued query parameter or form field given more
    than once.

    FastAPI reads the last of repeated values, so ``DELETE /v1/gallery?track_id=a&track_id=b``
    forgot ``b`` alone while the client meant both, and a search form with ``k`` twice returned
    the last one's count; the client is told to send one value (one request per value). List
    parameters (``list[...]``) still take every value. The form looked at is the one FastAPI
    parsed for the route (Starlette keeps it on the request), and the route's parameters are
    looked up only when a name repeats, so other requests pay one comparison per source.
    """
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    sources = [(0, request.query_params)]  # 0 and 1: _single_valued's query and form names
    content = request.headers.get("content-type", "").lower()
    if route.dependant.body_params and content.startswith(_FORM_TYPES):
        sources.append((1, await request.form()))
    for kind, values in sources:
        if len(values.multi_items()) == len(values):
            continue
        for name in _single_valued(route)[kind]:
            given = len(values.getlist(name))
            if given > 1:
                raise HTTPException(422, f"{name} is given {given} times; give {name} once")


def require(scope: str) -> Callable[..., Caller]:
    """A dependency: the caller of a valid bearer token holding ``scope`` (401 / 403 if not)."""

    async def check(
        services: ServicesDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Caller:
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None:
            raise HTTPException(401, "missing bearer token", headers=challenge)
        caller = services.tokens.verify(credentials.credentials)
        if caller is None:
            raise HTTPException(401, "unknown or revoked token", headers=challenge)
        if not caller.allows(scope):
            raise HTTPException(403, f"token '{caller.name}' lacks the '{scope}' scope")
        return caller

    return check


Searcher = Annotated[Caller, Depends(require("search"))]
Writer = Annotated[Caller, Depends(require("write"))]
Admin = Annotated[Caller, Depends(require("admin"))]


async def embed_uploads(
    services: Services, images: list[UploadFile], *, thumbnails: bool = False
) -> tuple[np.ndarray, list[bytes], list[bytes]]:
    """Embeddings of the uploads, their raw bytes and (if asked) their JPEG thumbnails.

    413 for more images than allowed, 422 naming the first unusable one. Decoding runs in a
    worker thread; the embedding goes through the micro-batcher.
    """
    limit = services.settings.max_images
    if len(images) > limit:
        raise HTTPException(413, f"{len(images)} images in one request; the limit is {limit}")
    payloads = [await upload.read() for upload in images]

    def prepare() -> tuple[np.ndarray, list[bytes]]:
        decoded = [
            decode_rgb(data, f"image {i + 1}", max_pixels=services.settings.max_image_pixels)
            for i, data in enumerate(payloads)
        ]
        small = [make_thumbnail(image) for image in decoded] if thumbnails else []
        return services.model.preprocess(decoded), small

    try:
        batch, small = await run_in_threadpool(prepare)
    except ImageRefused as exc:
        raise HTTPException(422, str(exc)) from None
    return await services.model.embed(batch), payloads, small


def parse_embedding(text: str, dim: int) -> np.ndarray:
    """A client's query vector: a JSON array of ``dim`` finite numbers, returned L2-normalised.

    ``true``/``false`` are no numbers (Python counts them as ints: ``true`` was searched as
    1). Only the direction counts, so the vector is scaled by its largest value and
    normalised in float64 before it becomes float32: values past float32's range, or so small
    that their squares underflow, are searched by their direction, not turned into NaN or a
    zero query (every hit at distance 2.0).
    """
    try:
        values = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise HTTPException(422, "embedding must be a JSON array of numbers") from None
    shape = f"embedding must be a JSON array of {dim} finite numbers"
    if not isinstance(values, list) or len(values) != dim:
        raise HTTPException(422, shape)
    if any(isinstance(v, bool) for v in values):
        raise HTTPException(422, f"{shape}, not true/false")
    try:
        vector = np.asarray(
            [float(v) if isinstance(v, int | float) else math.nan for v in values],
            dtype=np.float64,
        )
    except OverflowError:  # an integer past float64's range
        raise HTTPException(422, shape) from None
    if not np.isfinite(vector).all():
        raise HTTPException(422, shape)
    largest = float(np.abs(vector).max())
    if largest == 0.0:
        raise HTTPException(422, "embedding must not be all zeros")
    vector /= largest
    return (vector / np.linalg.norm(vector)).astype(np.float32)[None, :]
