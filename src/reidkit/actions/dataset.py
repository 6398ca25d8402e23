"""``reidkit dataset synth``: render the built-in synthetic multi-camera dataset."""

from __future__ import annotations

from pathlib import Path

from reidkit.data.synth import synthesize
from reidkit.errors import SpecError


def synth(
    out: str | Path,
    *,
    ids: int,
    cameras: int,
    images_per_id: int,
    height: int,
    width: int,
    seed: int,
) -> str:
    """Write a Market-1501-style dataset under ``out``; returns its one-line summary.

    Arguments are checked first, so a bad one is a one-line error naming its flag.
    """
    bounds = {
        "--ids": (ids, 2, 9999),  # Market-1501 names hold a 4-digit id
        "--cameras": (cameras, 2, 99),
        "--images-per-id": (images_per_id, 2, 10_000),
        "--height": (height, 16, 2048),
        "--width": (width, 8, 2048),
        "--seed": (seed, 0, 2**32 - 1),
    }
    for flag, (value, low, high) in bounds.items():
        if not low <= value <= high:
            raise SpecError(f"dataset synth {flag} {value} is outside {low}..{high}; change it")
    return synthesize(
        Path(out), ids=ids, cameras=cameras, images_per_id=images_per_id,
        height=height, width=width, seed=seed,
    )  # fmt: skip
