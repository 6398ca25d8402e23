"""What a site knows that appearance does not: who cannot be whom, and who stood where.

Association works on a :class:`TrackSet`, plain arrays with one row per track (camera index,
first and last moment, unit embedding, a few ground-plane samples), so the offline command, the
live assigner and the benchmarks feed it the same way, whatever file the tracks came from.

Two tracks **cannot** be one person (a *cannot-link*) when

* they are in one camera and share a moment (a tracker gives two people two ids);
* they are in two cameras that share a moment, and the site says nobody is seen by both at
  once (a transit window with ``min_s > 0``), or both cameras map feet to the ground and the
  two stand farther apart than twice the ground gate for most of that moment;
* one ends in camera A and the other starts in camera B sooner than the shortest transit
  from A to B (``min_s`` is the shortest time *by any route*, so the check holds for any two
  tracks of a person, not only consecutive ones).

And two tracks are **likely** one person when their cameras share a moment and their feet
stand within the ground gate for it. The gate (ground-plane units) comes from the site file,
or from the data: the 5th percentile of how close two *different* people come, measured on
the pairs every camera proves different (two tracks of one camera at one moment).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reidkit.association.tracks import Track

#: Ground samples kept per track (evenly spaced): enough for a median, cheap to compare.
GROUND_SAMPLES = 64
#: Shared moments needed before a ground distance counts as evidence.
MIN_SHARED_SAMPLES = 3
#: Same-camera pairs needed before a threshold or gate is learned from them.
MIN_LEARNING_PAIRS = 20
#: Quantile of different-people ground distances taken as the gate.
GATE_QUANTILE = 0.05
#: A co-occurring pair farther apart than this many gates is two people.
APART_GATES = 2.0


@dataclass
class TrackSet:
    """What association needs of each track, as plain arrays (row ``i`` is track ``i``).

    ``ground[i]`` is an ``[n, 3]`` array of (time, x, y) samples in time order, or None where
    the camera has no homography.
    """

    cameras: np.ndarray
    start: np.ndarray
    end: np.ndarray
    embeddings: np.ndarray
    ground: list[np.ndarray | None]

    def __len__(self) -> int:
        return len(self.cameras)

    @classmethod
    def from_tracks(
        cls, tracks: Sequence[Track], embeddings: np.ndarray, camera_names: Sequence[str]
    ) -> TrackSet:
        index = {name: i for i, name in enumerate(camera_names)}
        return cls(
            cameras=np.array([index[t.camera] for t in tracks], dtype=np.int64),
            start=np.array([t.start for t in tracks], dtype=np.float64),
            end=np.array([t.end for t in tracks], dtype=np.float64),
            embeddings=np.ascontiguousarray(embeddings, dtype=np.float32),
            ground=[ground_samples(t.times, t.ground) for t in tracks],
        )


def ground_samples(times: np.ndarray, ground: np.ndarray | None) -> np.ndarray | None:
    """Up to :data:`GROUND_SAMPLES` evenly spaced finite (time, x, y) rows, or None."""
    if ground is None:
        return None
    finite = np.flatnonzero(np.isfinite(ground).all(1))
    if len(finite) == 0:
        return None
    if len(finite) > GROUND_SAMPLES:
        finite = finite[np.linspace(0, len(finite) - 1, GROUND_SAMPLES).round().astype(int)]
    return np.column_stack([times[finite], ground[finite]])


@dataclass(frozen=True)
class Rules:
    """The site's constraints as numbers.

    ``min_transit[a, b]``: shortest seconds from camera ``a``'s view to ``b``'s (0: unknown,
    or the views overlap). ``ground_gate``: same-place distance in ground units (None: no
    geometry is used).
    """

    min_transit: np.ndarray
    ground_gate: float | None = None

    @property
    def horizon(self) -> float:
        """The longest gap a transit rule can forbid."""
        return float(self.min_transit.max()) if self.min_transit.size else 0.0


def shared_distance(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    """Median ground distance of two tracks over the moments both are seen, or None."""
    if a is None or b is None:
        return None
    low, high = max(a[0, 0], b[0, 0]), min(a[-1, 0], b[-1, 0])
    if high < low:
        return None
    moments = a[(a[:, 0] >= low) & (a[:, 0] <= high)]
    if len(moments) < MIN_SHARED_SAMPLES:
        moments = b[(b[:, 0] >= low) & (b[:, 0] <= high)]
        other = a
    else:
        other = b
    if len(moments) < MIN_SHARED_SAMPLES:
        return None
    x = np.interp(moments[:, 0], other[:, 0], other[:, 1])
    y = np.interp(moments[:, 0], other[:, 0], other[:, 2])
    return float(np.median(np.hypot(moments[:, 1] - x, moments[:, 2] - y)))


def nearby_pairs(tracks: TrackSet, horizon: float) -> tuple[np.ndarray, np.ndarray]:
    """Every pair ``i < j`` (as indices) whose time spans come within ``horizon`` seconds."""
    order = np.argsort(tracks.start, kind="stable")
    starts = tracks.start[order]
    ends = tracks.end[order]
    # Sorted by start, a later span q is near p exactly when start_q <= end_p + horizon: for
    # each p that is a contiguous run of the following spans.
    limits = np.searchsorted(starts, ends + horizon, side="right")
    counts = np.maximum(limits - np.arange(len(order)) - 1, 0)
    first = np.repeat(np.arange(len(order)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    second = first + 1 + offsets
    i, j = order[first], order[second]
    return np.minimum(i, j), np.maximum(i, j)


def learn_ground_gate(tracks: TrackSet) -> float | None:
    """The gate from data (see the module docstring), or None with too few same-camera pairs."""
    i, j = nearby_pairs(tracks, 0.0)
    same = tracks.cameras[i] == tracks.cameras[j]
    distances = [
        shared_distance(tracks.ground[a], tracks.ground[b])
        for a, b in zip(i[same], j[same], strict=True)
    ]
    known = np.array([d for d in distances if d is not None])
    if len(known) < MIN_LEARNING_PAIRS:
        return None
    return float(np.quantile(known, GATE_QUANTILE))


@dataclass
class PairEvidence:
    """Cannot-links and likely-same pairs of a track set (index arrays, ``i < j``)."""

    cannot_i: np.ndarray
    cannot_j: np.ndarray
    #: pairs whose cameras saw them at one place at one moment, with that distance
    same_place_i: np.ndarray
    same_place_j: np.ndarray
    same_place_distance: np.ndarray
    #: same-camera co-existing pairs: certainly two people (what thresholds are learned from)
    proven_i: np.ndarray
    proven_j: np.ndarray


def pair_evidence(tracks: TrackSet, rules: Rules) -> PairEvidence:
    """Every cannot-link and same-place pair (see the module docstring)."""
    i, j = nearby_pairs(tracks, rules.horizon)
    ci, cj = tracks.cameras[i], tracks.cameras[j]
    overlap = np.minimum(tracks.end[i], tracks.end[j]) - np.maximum(
        tracks.start[i], tracks.start[j]
    )
    together = overlap >= 0
    same_camera = ci == cj
    proven = same_camera & together
    # Which one of the pair comes first decides the transit direction.
    first_is_i = tracks.start[i] <= tracks.start[j]
    src = np.where(first_is_i, ci, cj)
    dst = np.where(first_is_i, cj, ci)
    transit = rules.min_transit[src, dst] if rules.min_transit.size else np.zeros(len(i))
    too_fast = ~same_camera & ~together & (-overlap < transit)
    apart_views = ~same_camera & together & (transit > 0)
    cannot = proven | too_fast | apart_views
    same_i, same_j, same_d = [], [], []
    if rules.ground_gate is not None:
        candidates = np.flatnonzero(~same_camera & together & ~apart_views)
        for k in candidates:
            a, b = i[k], j[k]
            distance = shared_distance(tracks.ground[a], tracks.ground[b])
            if distance is None:
                continue
            if distance > APART_GATES * rules.ground_gate:
                cannot[k] = True
            elif distance <= rules.ground_gate:
                same_i.append(a)
                same_j.append(b)
                same_d.append(distance)
    return PairEvidence(
        i[cannot], j[cannot],
        np.asarray(same_i, dtype=np.int64), np.asarray(same_j, dtype=np.int64),
        np.asarray(same_d, dtype=np.float64),
        i[proven], j[proven],
    )  # fmt: skip
