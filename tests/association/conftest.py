"""Real multi-camera trajectories (EPFL terrace) turned into a site, as a tracker would hand them.

EPFL's ground truth gives every person's box in 4 overlapping cameras under one global id.
Each person's visible run in a camera is cut wherever they were unseen for more than 0.4 s
(:func:`split_at_gaps`), and each piece gets a tracker id of its own: what a single-camera
tracker that loses people behind occluders would write. The pieces are written as
MOTChallenge files with a site file, so tests go through the same readers as a site does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from reidkit.association.readers import read_epfl
from reidkit.association.results import write_mot
from reidkit.association.site import site_from_dict
from reidkit.association.tracks import Track, split_at_gaps
from tests.conftest import SHARED

EPFL = SHARED / "data" / "epfl_mtmc"
TRACKER_GAP_S = 0.4


@dataclass
class EpflSite:
    """A site folder (``site.yaml``, ``tracks/``, ``truth/``) and who each track really is."""

    site_file: Path
    people: dict[tuple[str, str], int]  # (camera, tracker id) -> EPFL person id


def epfl_cameras(scene: str) -> dict[str, dict]:
    return {
        f"c{c}": {
            "fps": 25,
            "frame_base": 0,
            "width": 360,
            "height": 288,
            "homography": str(EPFL / scene / f"c{c}" / "Homography.txt"),
        }
        for c in range(4)
    }


def build_epfl_site(folder: Path, scene: str = "terrace", last_frame: int = 1500) -> EpflSite:
    """Write the first ``last_frame`` frames of an EPFL scene as a MOTChallenge site."""
    cameras = epfl_cameras(scene)
    site = site_from_dict({"cameras": cameras})
    people: dict[tuple[str, str], int] = {}
    for name, camera in site.cameras.items():
        truth = [
            t.select(t.frames <= last_frame)
            for t in read_epfl(EPFL / scene / name / "gt.txt", camera)
            if t.frames[0] <= last_frame
        ]
        pieces: list[Track] = []
        for number, piece in enumerate(split_at_gaps(truth, TRACKER_GAP_S), 1):
            pieces.append(replace(piece, track_id=str(number), part=0))
            people[(name, str(number))] = int(piece.track_id)
        write_mot(folder / "tracks", pieces, [int(p.track_id) for p in pieces])
        write_mot(folder / "truth", truth, [int(t.track_id) for t in truth])
        cameras[name] |= {"tracks": f"tracks/{name}.txt", "ground_truth": f"truth/{name}.txt"}
    site_file = folder / "site.yaml"
    site_file.write_text(yaml.safe_dump({"cameras": cameras}))
    return EpflSite(site_file, people)


@pytest.fixture(scope="session")
def terrace(tmp_path_factory: pytest.TempPathFactory) -> EpflSite:
    """The first minute of EPFL terrace (9 people appear in it), as a site."""
    return build_epfl_site(tmp_path_factory.mktemp("terrace"))


def simulated_embeddings(people: np.ndarray, noise: float, seed: int, dim: int = 64) -> np.ndarray:
    """Unit vectors: a random look per person plus ``noise`` (norm) per track."""
    rng = np.random.default_rng(seed)
    looks = rng.normal(size=(int(people.max()) + 1, dim))
    looks /= np.linalg.norm(looks, axis=1, keepdims=True)
    vectors = looks[people] + rng.normal(size=(len(people), dim)) * noise / np.sqrt(dim)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
