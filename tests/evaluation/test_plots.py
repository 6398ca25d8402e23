"""The CMC curve and sampled-matches PNGs: valid, sensibly sized, colour-coded, atomic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidkit.evaluation.plots import plot_cmc_curve, plot_sampled_matches

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path, min_width: int, min_height: int) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        assert image.width >= min_width and image.height >= min_height
        pixels = np.asarray(image.convert("RGB")).astype(int)
    assert not list(path.parent.glob(".*.tmp")), "a temporary file was left behind"
    return pixels


def count_near(pixels: np.ndarray, hex_color: str) -> int:
    rgb = np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels - rgb).sum(axis=2) < 30).sum())


def test_cmc_curve_png(tmp_path: Path) -> None:
    cmc = np.minimum(1.0, np.linspace(0.6, 1.2, 50))
    out = plot_cmc_curve(cmc, tmp_path / "plots" / "cmc.png", title="CMC on test split")
    assert out == tmp_path / "plots" / "cmc.png"
    assert_png(out, 600, 400)


def test_cmc_curve_rejects_empty(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        plot_cmc_curve(np.array([]), tmp_path / "cmc.png")


@pytest.fixture
def crops(tmp_path: Path) -> list[str]:
    """Six flat grey 'person crops' (64x128) so that only the frames carry colour."""
    paths = []
    for i in range(6):
        path = tmp_path / f"{i:04d}_c{i % 3 + 1}s1_000001_00.jpg"
        Image.new("RGB", (64, 128), (90 + 20 * i,) * 3).save(path)
        paths.append(str(path))
    return paths


def test_sampled_matches_png(tmp_path: Path, crops: list[str]) -> None:
    gallery_pids = [1, 2, 1, 3, 2]
    ranked = np.array([[0, 1, 2, 3], [1, 4, 0, 3]])
    out = plot_sampled_matches(
        crops[:2], [1, 2], [1, 2], crops[1:], gallery_pids, [2, 1, 3, 1, 3], ranked,
        tmp_path / "matches.png",
    )  # fmt: skip
    pixels = assert_png(out, 5 * 100, 2 * 200)
    # Blue query frames, green same-id frames, red other-id frames are all drawn.
    for color in ("#1f5fd6", "#1a9e3a", "#d62728"):
        assert count_near(pixels, color) > 200, color
    # The title (top 30 px) and the captions under the first row's crops are drawn in black.
    dark = (pixels < 80).all(axis=2)
    assert dark[:30].sum() > 100
    assert dark[30 + 20 + 138 : 30 + 20 + 138 + 20].sum() > 100
    # Re-writing the same path replaces it in place.
    assert (
        plot_sampled_matches(
            crops[:2], [1, 2], [1, 2], crops[1:], gallery_pids, [2, 1, 3, 1, 3], ranked[:, :2], out
        )
        == out
    )
    with Image.open(out) as image:
        assert image.width < pixels.shape[1]


def test_sampled_matches_checks_shape(tmp_path: Path, crops: list[str]) -> None:
    with pytest.raises(ValueError, match="ranked_indices"):
        plot_sampled_matches(
            crops[:2], [1, 2], [1, 1], crops, [1] * 6, [1] * 6, np.zeros((3, 2)), tmp_path / "m.png"
        )
