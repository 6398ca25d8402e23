"""A synthetic site, a NumPy brute force to check searches against, and galleries of both
backends opened through the one front."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from reidkit.data import synthesize
from reidkit.gallery.factory import open_gallery
from reidkit.gallery.front import Gallery
from reidkit.gallery.store import CropMeta

CARD = {
    "backbone": "resnet_50",
    "embedding_dim": 16,
    "input_height": 256,
    "match_threshold": 0.6,
    "weights_digest": "a" * 64,
}
DAY = 86_400.0
ORIGIN = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class TinyEmbedder(torch.nn.Module):
    """A fixed random convolutional embedder: deterministic, image-dependent. Two seeds are
    two trainings of one architecture: same card but for the weights digest."""

    def __init__(self, seed: int = 0, dim: int = 24) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, dim, 5, stride=2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert images.shape[1:] == (3, 32, 16)
        return torch.relu(self.conv(images)).mean(dim=(2, 3)) + 0.01


def tiny_card(seed: int = 0, dim: int = 24) -> dict[str, Any]:
    """The model card of ``TinyEmbedder(seed, dim)``."""
    return {
        "backbone": "tiny",
        "input_height": 32,
        "input_width": 16,
        "embedding_dim": dim,
        "pixel_mean": [0.485, 0.456, 0.406],
        "pixel_std": [0.229, 0.224, 0.225],
        "match_threshold": 0.05,
        "weights_digest": f"{seed:064x}",
    }


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 Market-named crop files: 6 people, 3 cameras."""
    root = tmp_path_factory.mktemp("site")
    synthesize(root, ids=6, cameras=3, images_per_id=4, height=64, width=32, seed=5)
    return root / "bounding_box_test"


def site(n: int, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, list[CropMeta]]:
    """``n`` crops of ``n // 5`` identities (tight clusters), 4 cameras, 10 days."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(max(1, n // 5), dim))
    person = np.arange(n) % len(centres)
    vectors = (centres[person] + 0.15 * rng.normal(size=(n, dim))).astype(np.float32)
    metas = [
        CropMeta(
            path=f"crops/{p:04d}_c{i % 4}_{i:06d}.jpg",
            camera=i % 4,
            timestamp=ORIGIN + float(rng.uniform(0, 10 * DAY)),
            track_id=f"track-{p}",
            site="depot" if i % 2 else None,
            zone="gate" if i % 3 == 0 else None,
        )
        for i, p in enumerate(person)
    ]
    return vectors, metas


def brute_force(
    gallery: np.ndarray,
    metas: list[CropMeta],
    query: np.ndarray,
    k: int,
    keep: Callable[[CropMeta], bool] | None = None,
) -> list[list[tuple[str, float]]]:
    """Top-k (path, 2 - 2 cos) in float64, over the crops ``keep`` accepts."""
    g = gallery.astype(np.float64)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = query.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    allowed = np.array([keep is None or keep(m) for m in metas])
    out = []
    for row in 2.0 - 2.0 * q @ g.T:
        row = np.where(allowed, row, np.inf)
        order = np.argsort(row, kind="stable")[:k]
        out.append([(metas[i].path, float(row[i])) for i in order if np.isfinite(row[i])])
    return out


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (recursively), by its relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(params=["embedded", "milvus"])
def backend_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """Where a gallery of each backend goes: a folder, or a Milvus Lite ``*.db``."""
    return tmp_path / ("gallery" if request.param == "embedded" else "gallery.db")


@pytest.fixture
def make_gallery(backend_uri: Path) -> Iterator[Callable[..., Gallery]]:
    """Opens the gallery at ``backend_uri`` (several handles at once if asked); closes them."""
    opened: list[Gallery] = []

    def make(card: dict[str, Any] | None = CARD, create: bool = True, **kwargs: Any) -> Gallery:
        gallery = open_gallery(backend_uri, card, create=create, **kwargs)
        opened.append(gallery)
        return gallery

    yield make
    for gallery in opened:
        gallery.close()
