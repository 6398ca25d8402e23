"""Routes about the service itself: liveness, Prometheus metrics and who a token is."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from reidkit.serve.deps import GalleryDep, ModelDep, Searcher, ServicesDep
from reidkit.serve.metrics import CONTENT_TYPE
from reidkit.serve.schemas import Health, Me

router = APIRouter()


@router.api_route("/healthz", methods=["GET", "HEAD"], tags=["service"])
async def healthz(gallery: GalleryDep, model: ModelDep) -> Health:
    """Liveness and readiness: the model is loaded and the gallery answers (``HEAD`` too: load
    balancers and uptime checkers probe with it, and a 405 read as the service being down)."""
    size = await gallery.size()
    return Health(gallery_size=size, embedding_dim=model.dim)


@router.get("/metrics", tags=["service"], response_class=Response)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus text: requests, latency histogram, batch sizes, gallery size."""
    return Response(services.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/v1/me", tags=["auth"])
async def me(caller: Searcher) -> Me:
    """The token's name and scopes (the operator page signs in with this)."""
    return Me(name=caller.name, scopes=sorted(caller.scopes))
