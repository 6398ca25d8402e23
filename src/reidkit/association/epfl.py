"""EPFL multi-camera ground truth as a site a tracker could have produced (tests, benchmarks).

EPFL's ``terrace`` and ``laboratory`` sequences give every person's box in 4 overlapping
cameras under one global id, with each camera's image-to-ground homography, at 25 fps with
0-based frames (``<scene>/c<k>/gt.txt``: ``id xmin ymin xmax ymax frame lost occluded
generated "label"``, and ``<scene>/c<k>/Homography.txt``). :func:`write_epfl_site` cuts each
person's visible run in a camera wherever they were unseen for more than ``tracker_gap_s``
and gives every piece a tracker id of its own, what a single-camera tracker that loses people
behind occluders hands over, and writes those pieces and the ground truth as MOTChallenge
files with a ``site.yaml``: association then reads them like any site's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import yaml

from reidkit.association.readers import read_epfl
from reidkit.association.results import write_mot
from reidkit.association.site import Camera, site_from_dict
from reidkit.association.tracks import Track, split_at_gaps

EPFL_FPS = 25
EPFL_FRAME = (360, 288)


@dataclass
class EpflSite:
    """The written site, and who each tracker track really is."""

    site_file: Path
    people: dict[tuple[str, str], int]  # (camera, tracker id) -> EPFL person id

    def person_of(self, track: Track) -> int:
        return self.people[(track.camera, track.track_id)]


def epfl_cameras(scene: Path) -> dict[str, dict]:
    """Site file entries of an EPFL scene's cameras (``c0``..``c3``)."""
    width, height = EPFL_FRAME
    return {
        folder.name: {
            "fps": EPFL_FPS,
            "frame_base": 0,
            "width": width,
            "height": height,
            "homography": str((folder / "Homography.txt").resolve()),
        }
        for folder in sorted(Path(scene).iterdir())
        if (folder / "gt.txt").is_file()
    }


def _truth(scene: Path, camera: Camera, last_frame: int | None) -> list[Track]:
    tracks = read_epfl(scene / camera.name / "gt.txt", camera)
    if last_frame is None:
        return tracks
    return [t.select(t.frames <= last_frame) for t in tracks if t.frames[0] <= last_frame]


def write_epfl_site(
    scene: str | Path,
    out: str | Path,
    *,
    last_frame: int | None = None,
    tracker_gap_s: float = 0.4,
) -> EpflSite:
    """Write ``out/site.yaml``, ``out/tracks/<camera>.txt`` and ``out/truth/<camera>.txt``."""
    scene, out = Path(scene), Path(out)
    cameras = epfl_cameras(scene)
    site = site_from_dict({"cameras": cameras})
    people: dict[tuple[str, str], int] = {}
    for name, camera in site.cameras.items():
        truth = _truth(scene, camera, last_frame)
        pieces = []
        for number, piece in enumerate(split_at_gaps(truth, tracker_gap_s), 1):
            pieces.append(replace(piece, track_id=str(number), part=0))
            people[(name, str(number))] = int(piece.track_id)
        write_mot(out / "tracks", pieces, np.arange(1, len(pieces) + 1).tolist())
        write_mot(out / "truth", truth, [int(t.track_id) for t in truth])
        cameras[name] |= {"tracks": f"tracks/{name}.txt", "ground_truth": f"truth/{name}.txt"}
    site_file = out / "site.yaml"
    site_file.write_text(yaml.safe_dump({"cameras": cameras}, sort_keys=False))
    return EpflSite(site_file, people)
