"""Real servers for the API and page tests: ``python -m reidkit.serve run`` on a free port.

The model is a small ResNet-18 exported exactly as ``reidkit export`` exports it; the crops are
the suite's synthetic Market-style dataset. Servers run as subprocesses so the tests speak real
HTTP over loopback and can kill a server the way a power cut would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from reidkit.actions.export import export
from reidkit.serve.tokens import create_token
from tests.export.conftest import make_checkpoint

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Model:
    checkpoint: Path
    onnx: Path
    overrides: tuple[str, ...]  # the spec keys the model fits


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    """A ResNet-18 (64x32, 64-d) checkpoint and its verified ONNX export."""
    folder = tmp_path_factory.mktemp("serve-model")
    spec = make_checkpoint(folder, "model.backbone=resnet_18")
    assert spec.export.checkpoint is not None
    overrides = (
        "model.backbone=resnet_18",
        "model.input_height=64",
        "model.input_width=32",
        "model.feat_dim=64",
    )
    return Model(Path(spec.export.checkpoint), export(spec).onnx_file, overrides)


@pytest.fixture(scope="session")
def onnx_model(model: Model) -> Path:
    return model.onnx


@dataclass(frozen=True)
class Tokens:
    path: Path
    search: str
    write: str
    admin: str


@pytest.fixture(scope="session")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Tokens:
    path = tmp_path_factory.mktemp("serve-tokens") / "tokens.json"
    return Tokens(
        path,
        search=create_token(path, "desk-operator", ["search"]),
        write=create_token(path, "camera-ingest", ["write"]),
        admin=create_token(path, "privacy-officer", ["admin"]),
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """One ``reidkit serve -e spec.yaml`` process, as a user starts it, and a client for it."""

    def __init__(self, model: Path, gallery: Path, tokens: Path, *overrides: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.gallery = gallery
        self.results = gallery.parent / f"results-{self.port}"
        self.log = gallery.parent / f"server-{self.port}.log"
        spec = gallery.parent / "serve_spec.yaml"
        spec.write_text("serve:\n  threads: 1\n  log_level: warning\n")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
        command = [
            sys.executable, "-m", "reidkit", "serve", "-e", str(spec),
            f"results_dir={self.results}", f"serve.model={model}", f"serve.gallery_uri={gallery}",
            f"serve.token_file={tokens}", f"serve.port={self.port}", *overrides,
        ]  # fmt: skip
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.kill()
        raise AssertionError(f"server not ready in {timeout}s:\n{self.log.read_text()}")

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0)

    def stop(self) -> None:
        """SIGTERM, as a service manager stops it."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=20)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash or power cut."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=20)


@pytest.fixture
def start_server(onnx_model: Path, tokens: Tokens) -> Iterator:
    """A factory: ``start_server(gallery_folder, *overrides)``; all are stopped at the end."""
    started: list[Server] = []

    def start(gallery: Path, *overrides: str) -> Server:
        server = Server(onnx_model, gallery, tokens.path, *overrides)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()
