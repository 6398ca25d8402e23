"""Real multi-camera trajectories (EPFL terrace, as a tracker would hand them over) and
simulated looks, shared by the association tests."""

from __future__ import annotations

import numpy as np
import pytest

from reidkit.association.epfl import EpflSite, write_epfl_site
from tests.conftest import SHARED

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
