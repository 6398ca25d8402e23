"""``reidkit dataset synth``: render the built-in synthetic multi-camera dataset."""

from __future__ import annotations

from pathlib import Path

from reidkit.data.synth import synthesize, synthesize_site
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
    site: bool = False,
    tracks: int = 10_000,
    hours: float = 24.0,
    dim: int = 128,
) -> str:
    """Write a Market-1501-style dataset under ``out`` (or, with ``site``, a multi-camera site
    of tracks with transit times, for scale tests); returns its one-line summary.

    Arguments are checked first, so a bad one is a one-line error naming its flag. An empty
    ``out`` (``--out "$DIR"`` with DIR unset) is refused: as a path it is the current folder.
    """
    if not str(out).strip():
        raise SpecError("dataset synth --out is empty; name the folder to write the dataset to")
    if site:
        site_bounds = {
            "--cameras": (cameras, 2, 10_000),
            "--tracks": (tracks, 1, 10_000_000),
            "--hours": (hours, 0.01, 24.0 * 366),
            "--dim": (dim, 2, 8192),
            "--seed": (seed, 0, 2**32 - 1),
        }
        _check(site_bounds)
        summary = synthesize_site(
            Path(out), cameras=cameras, tracks=tracks, hours=hours, dim=dim, seed=seed
        )
        return str(summary)
    bounds = {
        "--ids": (ids, 2, 9999),  # Market-1501 names hold a 4-digit id
        "--cameras": (cameras, 2, 99),
        "--images-per-id": (images_per_id, 2, 10_000),
        "--height": (height, 16, 2048),
        "--width": (width, 8, 2048),
        "--seed": (seed, 0, 2**32 - 1),
    }
    _check(bounds)
    return synthesize(
        Path(out), ids=ids, cameras=cameras, images_per_id=images_per_id,
        height=height, width=width, seed=seed,
    )  # fmt: skip


def _check(bounds: dict[str, tuple[float, float, float]]) -> None:
    for flag, (value, low, high) in bounds.items():
        if not low <= value <= high:
            raise SpecError(f"dataset synth {flag} {value} is outside {low}..{high}; change it")
