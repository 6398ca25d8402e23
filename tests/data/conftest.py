"""Shared fixtures for the data tests: real image files and a small synthetic dataset."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidkit.data.synth import synthesize

ImageWriter = Callable[..., Path]


@pytest.fixture
def write_image() -> ImageWriter:
    """Write a real, decodable image (format from the suffix) with random pixels."""
    rng = np.random.default_rng(0)

    def write(path: Path, size: tuple[int, int] = (32, 64)) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        return path

    return write


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Market-layout dataset shared read-only by the tests that only read it."""
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, ids=12, cameras=3, images_per_id=6, height=64, width=32, seed=3)
    return root
