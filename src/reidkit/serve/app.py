"""The FastAPI application: ``create_app(settings)`` wires the model, gallery, tokens and limits.

Routes only translate HTTP to calls: images are decoded and preprocessed in a worker thread,
embedded through the micro-batcher, and searched or stored through :class:`GalleryService`,
which runs every store call on one thread of its own. Each route declares the scope it needs;
:func:`require` turns a missing token into 401 and a missing scope into 403.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import import_module, resources
from typing import Annotated, Any

import numpy as np
from fastapi import (
    Depends,
    FastAPI,
    File,
    Form,
    HTTPException,
    Path,
    Query,
    Request,
    UploadFile,
)
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from reidkit import __version__
from reidkit.data.images import decode_rgb
from reidkit.errors import ImageRefused
from reidkit.serve.embedding import ServedModel
from reidkit.serve.gallery_access import (
    GalleryService,
    RequestRefused,
    as_utc,
    make_thumbnail,
    upload_key,
)
from reidkit.serve.limits import BodyLimit
from reidkit.serve.metrics import CONTENT_TYPE, ServerMetrics
from reidkit.serve.schemas import (
    AddResponse,
    CropMeta,
    EmbedResponse,
    ForgetResponse,
    GalleryStats,
    Health,
    Me,
    SearchResponse,
)
from reidkit.serve.settings import ServeSettings
from reidkit.serve.tokens import Caller, TokenStore

_AGE = re.compile(r"^(\d+)([smhd])$")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
# The operator page loads nothing from elsewhere and is framed by nothing; thumbnails are blobs.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_bearer = HTTPBearer(auto_error=False, description="A token from 'reidkit serve token'.")


@dataclass(frozen=True)
class Services:
    """Everything a request handler needs, held on ``app.state.services``."""

    settings: ServeSettings
    model: ServedModel
    gallery: GalleryService
    tokens: TokenStore
    metrics: ServerMetrics


def _services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(_services)]


def require(scope: str) -> Callable[..., Caller]:
    """A dependency: the caller of a valid bearer token holding ``scope`` (401 / 403 if not)."""

    def check(
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


async def _embed_uploads(
    services: Services, images: list[UploadFile], *, thumbnails: bool = False
) -> tuple[np.ndarray, list[bytes], list[bytes]]:
    """Embeddings of the uploads, their raw bytes and (if asked) their JPEG thumbnails.

    413 for more images than allowed, 422 naming the first unusable one.
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


def _parse_embedding(text: str, dim: int) -> np.ndarray:
    try:
        values = json.loads(text)
    except json.JSONDecodeError:
        raise HTTPException(422, "embedding must be a JSON array of numbers") from None
    if (
        not isinstance(values, list)
        or len(values) != dim
        or not all(isinstance(v, int | float) and math.isfinite(v) for v in values)
    ):
        raise HTTPException(422, f"embedding must be a JSON array of {dim} finite numbers")
    vector = np.asarray(values, dtype=np.float32)[None, :]
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        raise HTTPException(422, "embedding must not be all zeros")
    return vector / norm


def _parse_age(text: str) -> timedelta:
    match = _AGE.match(text)
    if match is None:
        raise HTTPException(422, "older_than must be a number and a unit, e.g. 30d, 12h, 90m")
    return timedelta(**{_AGE_UNITS[match.group(2)]: int(match.group(1))})


def _mount_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["service"])
    async def healthz(services: ServicesDep) -> Health:
        """Liveness and readiness: the model is loaded and the gallery answers."""
        size = await services.gallery.size()
        return Health(gallery_size=size, embedding_dim=services.model.dim)

    @app.get("/metrics", tags=["service"], response_class=Response)
    async def metrics(services: ServicesDep) -> Response:
        """Prometheus text: requests, latency histogram, batch sizes, gallery size."""
        return Response(services.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/me", tags=["auth"])
    async def me(caller: Searcher) -> Me:
        """The token's name and scopes (the operator page signs in with this)."""
        return Me(name=caller.name, scopes=sorted(caller.scopes))

    @app.post("/v1/embed", tags=["search"])
    async def embed(
        services: ServicesDep,
        caller: Searcher,
        images: Annotated[list[UploadFile], File(description="Person crops.")],
    ) -> EmbedResponse:
        """L2-normalised embeddings of the uploaded crops, in upload order."""
        vectors, _, _ = await _embed_uploads(services, images)
        return EmbedResponse(embedding_dim=services.model.dim, embeddings=vectors.tolist())

    @app.post("/v1/search", tags=["search"])
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
            queries = _parse_embedding(embedding, services.model.dim)
        else:
            queries, _, _ = await _embed_uploads(services, images or [])
        # Several crops of one person: search with their mean direction.
        query = queries.mean(axis=0, keepdims=True)
        query /= max(float(np.linalg.norm(query)), 1e-12)
        hits = await services.gallery.search(
            query, k=k, cameras=cameras or None, since=since, until=until, who=caller.name
        )
        return SearchResponse(
            hits=hits, match_threshold=services.gallery.match_threshold, queries=len(queries)
        )

    @app.post("/v1/gallery", tags=["gallery"], status_code=201)
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
        vectors, payloads, thumbnails = await _embed_uploads(services, images, thumbnails=True)
        keys = [
            meta.path or upload_key(data, meta)
            for data, meta in zip(payloads, records, strict=True)
        ]
        added = await services.gallery.add(vectors, records, thumbnails, keys, who=caller.name)
        return AddResponse(added=added, already_stored=len(keys) - added, paths=keys)

    @app.delete("/v1/gallery", tags=["gallery"])
    async def forget(
        services: ServicesDep,
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
        count = await services.gallery.forget(
            track_id=track_id, path=path, older_than=age, who=caller.name
        )
        return ForgetResponse(forgotten=count)

    @app.get("/v1/gallery/stats", tags=["gallery"])
    async def stats(services: ServicesDep, caller: Searcher) -> GalleryStats:
        """Size, cameras, time span, index kind, threshold and model card."""
        return await services.gallery.stats()

    @app.get("/v1/crops/{crop_id}", tags=["gallery"], response_class=Response)
    async def crop(
        services: ServicesDep,
        caller: Searcher,
        crop_id: Annotated[int, Path(ge=0, le=2**62, description="A hit's crop_id.")],
    ) -> Response:
        """The stored JPEG thumbnail of a crop (the id is an integer, checked before any use)."""
        data = await services.gallery.thumbnail(crop_id)
        if data is None:
            raise HTTPException(404, f"no crop {crop_id} in the gallery")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


def create_app(
    settings: ServeSettings,
    *,
    model: ServedModel | None = None,
    gallery: GalleryService | None = None,
) -> FastAPI:
    """The app for ``settings``.

    The model, gallery and token file are opened here, before any server starts, so a wrong
    path or a gallery filled by another model is one error line, not a failed worker.
    """
    metrics = ServerMetrics()
    served = model or ServedModel(
        settings.model,
        threads=settings.threads,
        max_batch=settings.max_batch,
        max_wait_s=settings.batch_wait_ms / 1000,
        on_batch=metrics.batch_size.observe,
        explicit=settings.explicit_preprocessing(),
    )
    tokens = TokenStore(settings.tokens)
    store = gallery or GalleryService.open(
        settings.gallery, served.card.to_dict(), settings.match_threshold
    )
    metrics.report_gallery_size(store.cached_size)
    services = Services(settings, served, store, tokens, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await served.batcher.start()
        try:
            yield
        finally:
            await served.batcher.stop()
            store.close()

    app = FastAPI(
        title="reidkit search service",
        version=__version__,
        description="Person re-identification search over a site gallery. Every route under "
        "/v1 needs a bearer token; searches and forgets are audited with the token's name.",
        lifespan=lifespan,
    )

    app.state.services = services

    @app.exception_handler(RequestRefused)
    async def refused(request: Request, exc: RequestRefused) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.middleware("http")
    async def observe(request: Request, call_next: Any) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        template = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.observe(request.method, template, response.status_code, time.perf_counter() - start)
        if request.url.path.startswith("/ui"):
            response.headers.update(PAGE_HEADERS)
        return response

    # Outermost: oversized bodies are refused before anything parses them.
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    _mount_routes(app)
    app.include_router(import_module("reidkit.serve.association_routes").router)
    page = resources.files("reidkit.serve") / "static"
    app.mount("/ui", StaticFiles(directory=str(page), html=True), name="ui")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    return app
