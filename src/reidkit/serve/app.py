"""The FastAPI application: ``create_app(settings)`` opens the model, gallery and tokens and
includes the route modules of :mod:`reidkit.serve.routes`.

Routes only translate HTTP to calls (see :mod:`reidkit.serve.deps` for what they share): images
are decoded and preprocessed in a worker thread, embedded through the micro-batcher, and
searched or stored through :class:`GalleryService`, which runs every store call on one thread
of its own. Each route declares the scope it needs; a missing token is 401, a missing scope 403.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reidkit import __version__
from reidkit.serve import association_routes
from reidkit.serve.deps import Services, single_values
from reidkit.serve.embedding import ServedModel
from reidkit.serve.gallery_access import GalleryService, RequestRefused
from reidkit.serve.limits import BodyLimit
from reidkit.serve.metrics import ServerMetrics
from reidkit.serve.routes import gallery as gallery_routes
from reidkit.serve.routes import page, search, service
from reidkit.serve.settings import ServeSettings
from reidkit.serve.tokens import TokenStore


class ObserveRequests:
    """ASGI middleware: counts each request by route template and latency, and gives the
    operator page its headers. Plain ASGI rather than ``@app.middleware("http")``, whose
    per-request task and streams cost the event loop more than a live decision does."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        on_page = scope["path"].startswith(page.PAGE_PREFIX)
        status = 500  # what the client gets if the app fails before answering

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if on_page:
                    MutableHeaders(scope=message).update(page.PAGE_HEADERS)
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            template = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe(scope["method"], template, status, time.perf_counter() - start)


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
        settings.gallery,
        served.card.to_dict(),
        settings.match_threshold,
        crop_root=settings.crop_root,
        audit_file=settings.audit_file,
    )
    metrics.report_gallery_size(store.cached_size)

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
        # Every route: a single-valued query parameter or form field sent twice is a 422, not its
        # last value.
        dependencies=[Depends(single_values)],
    )
    app.state.services = Services(settings, served, store, tokens, metrics)

    @app.exception_handler(RequestRefused)
    async def refused(request: Request, exc: RequestRefused) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 without each error's ``input``: echoing the input back cannot be
        done for NaN or infinity (JSON has neither: the answer was a 500) and would send a
        client's whole upload back to it. Where and why stay: ``loc``, ``msg``, ``type``."""
        errors = [{k: v for k, v in error.items() if k != "input"} for error in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    app.add_middleware(ObserveRequests, metrics=metrics)
    # Outermost: oversized bodies are refused before anything parses them.
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    # One line per route module; a new concern is a new module and a new line here.
    app.include_router(service.router)
    app.include_router(search.router)
    app.include_router(gallery_routes.router)
    app.include_router(page.router)
    app.include_router(association_routes.router)
    app.mount(page.PAGE_PREFIX, page.page_files(), name="ui")
    return app
