"""Real multi-camera trajectories (EPFL terrace, as a tracker would hand them over) and
simulated looks, shared by the association tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from reidkit.association.epfl import EpflSite, write_epfl_site
from tests.conftest import SHARED, run_cli

EPFL = SHARED / "data" / "epfl_mtmc"


@pytest.fixture(scope="session")
def terrace(tmp_path_factory: pytest.TempPathFactory) -> EpflSite:
    """The first minute of EPFL terrace (9 people appear in it), as a site."""
    return write_epfl_site(EPFL / "terrace", tmp_path_factory.mktemp("terrace"), last_frame=1500)


def simulated_embeddings(people: np.ndarray, noise: float, seed: int, dim: int = 64) -> np.ndarray:
    """Unit vectors: a random look per person plus ``noise`` (norm) per track."""
    rng = np.random.default_rng(seed)
    looks = rng.normal(size=(int(people.max()) + 1, dim))
    looks /= np.linalg.norm(looks, axis=1, keepdims=True)
    vectors = looks[people] + rng.normal(size=(len(people), dim)) * noise / np.sqrt(dim)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def make_synthetic_site(
    folder: Path, *, cameras: int, tracks: int, hours: float, dim: int, seed: int
) -> Path:
    """A synthetic site in ``folder`` (DeepStream JSON lines with embeddings), made by the CLI
    as a user makes one."""
    result = run_cli(
        "dataset", "synth", "--site", "--out", str(folder), "--cameras", str(cameras),
        "--tracks", str(tracks), "--hours", str(hours), "--dim", str(dim), "--seed", str(seed),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return folder
