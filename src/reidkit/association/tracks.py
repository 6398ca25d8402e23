"""A per-camera track as association sees it, and splitting a track where its person was gone.

A :class:`Track` is what any single-camera tracker produces for one person in one camera: a
run of detections (frame, box, confidence) under one local id, with the site clock's time of
each frame, the feet's ground-plane position where the camera has a homography (or the tracker
gave world coordinates), the detector's own embeddings when it sends them (DeepStream), and
where the crops come from. Readers (:mod:`reidkit.association.readers`) build tracks; nothing
downstream knows which file format they came from.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path

import numpy as np


@dataclass
class Track:
    """One tracker track (or one part of it, see :func:`split_at_gaps`) in one camera.

    Arrays are per detection, in frame order. ``embeddings`` rows are NaN where a detection
    came without one; ``crops`` holds a crop file per detection (``None`` where there is none).
    """

    camera: str
    track_id: str
    frames: np.ndarray
    times: np.ndarray
    boxes: np.ndarray
    confidence: np.ndarray
    ground: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    crops: list[Path | None] | None = None
    part: int = 0
    source: str = ""

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def start(self) -> float:
        return float(self.times[0])

    @property
    def end(self) -> float:
        return float(self.times[-1])

    def select(self, rows: np.ndarray | slice) -> Track:
        """The detections ``rows`` of this track (same camera, id and part)."""
        return replace(
            self,
            frames=self.frames[rows],
            times=self.times[rows],
            boxes=self.boxes[rows],
            confidence=self.confidence[rows],
            ground=None if self.ground is None else self.ground[rows],
            embeddings=None if self.embeddings is None else self.embeddings[rows],
            crops=None if self.crops is None else list(np.asarray(self.crops, dtype=object)[rows]),
        )


def split_at_gaps(tracks: list[Track], max_gap_s: float) -> list[Track]:
    """Tracks cut wherever a person was unseen for more than ``max_gap_s`` seconds.

    A tracker that keeps an id while someone leaves and comes back joins two visits; each part
    then gets its own global id decision (the person may even be someone else). Parts are
    numbered from 0 in time order.
    """
    out: list[Track] = []
    for track in tracks:
        cuts = np.flatnonzero(np.diff(track.times) > max_gap_s) + 1
        if len(cuts) == 0:
            out.append(track)
            continue
        bounds = [0, *cuts.tolist(), len(track)]
        for part, (lo, hi) in enumerate(pairwise(bounds)):
            out.append(replace(track.select(slice(lo, hi)), part=part))
    return out
