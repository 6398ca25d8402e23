"""Run the app under uvicorn: one process, or several workers rebuilt from the environment."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import uvicorn
from fastapi import FastAPI

from reidkit.errors import ReidkitError
from reidkit.serve.app import create_app
from reidkit.serve.settings import ServeSettings

SETTINGS_VARIABLE = "REIDKIT_SERVE_SETTINGS"


def app_from_environment() -> FastAPI:
    """The app of a uvicorn worker process: its settings travel in an environment variable."""
    app = create_app(ServeSettings.from_json(os.environ[SETTINGS_VARIABLE]))
    _freeze_startup_objects()
    return app


def _freeze_startup_objects() -> None:
    """Take what startup built (libraries, model, app: about half a million objects) out of
    the garbage collector's sight. They live as long as the process, yet every full
    collection would walk them all again: a pause of 100 to 300 ms on 2 busy cores, the
    slowest answers of the live endpoint. Collections then walk only what requests made."""
    gc.collect()
    gc.freeze()


def _check_address(host: str, port: int) -> None:
    """Refuse a busy or unknown address with one line (uvicorn would log and exit)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise ReidkitError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another serve.port "
            "or serve.host"
        ) from None


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextmanager
def _signals_stop_serving() -> Iterator[None]:
    """SIGTERM (a service manager's stop) and Ctrl-C end the server as a normal stop.

    uvicorn shuts down gracefully on either, then re-raises the signal it caught; with the
    default SIGTERM action that would kill the process before the caller records the stop, and
    the CLI's own Ctrl-C handler would record a failed run (exit 130).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, _stop) for signum in stops}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_server(settings: ServeSettings, *, log_level: str = "info") -> None:
    """Serve until stopped by Ctrl-C or SIGTERM, then return normally (a stop is no error).

    The app is built first, here, so a wrong model, gallery or token file is one error line;
    with several workers each process then builds its own from the same settings.
    """
    _check_address(settings.host, settings.port)
    with contextlib.suppress(KeyboardInterrupt), _signals_stop_serving():
        _run(settings, log_level)


def _run(settings: ServeSettings, log_level: str) -> None:
    app = create_app(settings)
    _freeze_startup_objects()
    common = {
        "host": settings.host,
        "port": settings.port,
        "log_level": log_level,
        "server_header": False,
        "limit_concurrency": 256,
        "timeout_graceful_shutdown": 5,
    }
    if settings.workers == 1:
        uvicorn.run(app, **common)
        return
    app.state.services.gallery.close()
    os.environ[SETTINGS_VARIABLE] = settings.to_json()
    uvicorn.run(
        "reidkit.serve.runner:app_from_environment",
        factory=True,
        workers=settings.workers,
        **common,
    )
