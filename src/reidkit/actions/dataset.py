"""``reidkit dataset synth``: render the built-in synthetic multi-camera dataset."""

from __future__ import annotations

from pathlib import Path

from reidkit.data.synth import synthesize


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
    """Write a Market-1501-style dataset under ``out``; returns its one-line summary."""
    return synthesize(
        Path(out), ids=ids, cameras=cameras, images_per_id=images_per_id,
        height=height, width=width, seed=seed,
    )  # fmt: skip
