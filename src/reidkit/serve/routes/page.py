"""The operator page: static files under ``/ui`` (served with strict headers) and ``/`` to it."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

# The operator page loads nothing from elsewhere and is framed by nothing; thumbnails are blobs.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
PAGE_PREFIX = "/ui"

router = APIRouter(include_in_schema=False)


def page_files() -> StaticFiles:
    """The page's packaged files (mounted at :data:`PAGE_PREFIX`; a router cannot carry a mount)."""
    return StaticFiles(directory=str(resources.files("reidkit.serve") / "static"), html=True)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse(f"{PAGE_PREFIX}/")
