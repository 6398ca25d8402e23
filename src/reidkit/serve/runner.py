"""Run the app under uvicorn: one process, or several workers rebuilt from the environment."""

from __future__ import annotations

import os

import uvicorn
from fastapi import FastAPI

from reidkit.serve.app import create_app
from reidkit.serve.settings import ServeSettings

SETTINGS_VARIABLE = "REIDKIT_SERVE_SETTINGS"


def app_from_environment() -> FastAPI:
    """The app of a uvicorn worker process: its settings travel in an environment variable."""
    return create_app(ServeSettings.from_json(os.environ[SETTINGS_VARIABLE]))


def run_server(settings: ServeSettings, *, log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM stop it cleanly)."""
    common = {
        "host": settings.host,
        "port": settings.port,
        "log_level": log_level,
        "server_header": False,
        "limit_concurrency": 256,
        "timeout_graceful_shutdown": 5,
    }
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **common)
        return
    os.environ[SETTINGS_VARIABLE] = settings.to_json()
    uvicorn.run(
        "reidkit.serve.runner:app_from_environment",
        factory=True,
        workers=settings.workers,
        **common,
    )
