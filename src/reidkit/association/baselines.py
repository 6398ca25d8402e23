"""What association is measured against, in the same run: two baselines and two bounds.

* :func:`metropolis_style`: an open implementation, written from the published description
  only, of the multi-camera step of NVIDIA's Metropolis multi-camera tracking: HDBSCAN on the
  mean embedding of each track, then, for tracks that co-exist in one camera, a Hungarian
  re-assignment to clusters on ``0.15 x trajectory distance + 0.85 x appearance distance``.
  Choices the description leaves open, made here: ``min_cluster_size=2`` (the smallest
  identity worth a cluster: one person seen twice), HDBSCAN's noise points are identities of
  their own, appearance distance is ``(1 - cos) / 2`` (in ``[0, 1]``) to the cluster's
  mean direction, trajectory distance is the median
  ground-plane distance to the cluster's tracks of other cameras at shared moments divided
  by the ground gate and capped at 1 (1 where the two never share a moment on the ground),
  and co-existing tracks are the connected groups of time overlap in one camera.
* :func:`threshold_links`: a plain threshold on mean embeddings: any two tracks closer than
  the threshold are one identity (connected components), no constraints.
* :func:`every_track_alone` (lower bound) and :func:`oracle` (upper bound: each track takes
  the ground-truth identity most of its detections have).
* :func:`best_threshold` (upper bound of a *known* threshold): our clustering at the one
  distance threshold, of a grid, that scores best against the answers. No site can choose its
  threshold that way; the bound says what knowing it would be worth, set by set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import HDBSCAN

from reidkit.association.cluster import BLOCK_ELEMENTS, associate_site
from reidkit.association.constraints import TrackSet, nearby_pairs, shared_distance

TRAJECTORY_WEIGHT = 0.15
APPEARANCE_WEIGHT = 0.85


def every_track_alone(tracks: TrackSet) -> np.ndarray:
    """Lower bound: every track its own identity."""
    return np.arange(len(tracks))


def oracle(truth: np.ndarray) -> np.ndarray:
    """Upper bound: the ground-truth identity of each track, as labels."""
    _, labels = np.unique(truth, return_inverse=True)
    return labels


def best_threshold(
    tracks: TrackSet,
    min_transit: np.ndarray,
    score: Callable[[np.ndarray], float],
    thresholds: Iterable[float],
) -> tuple[np.ndarray, float]:
    """Upper bound of any single threshold: (labels, threshold) of :func:`associate_site` at
    the ``match_threshold`` among ``thresholds`` whose labels ``score`` rates highest (the
    first on a tie). ``score`` knows the answers, which is what makes this a bound."""
    best: tuple[float, np.ndarray, float] | None = None
    for threshold in thresholds:
        labels = associate_site(tracks, min_transit, match_threshold=float(threshold))[0].labels
        value = score(labels)
        if best is None or value > best[0]:
            best = (value, labels, float(threshold))
    if best is None:
        raise ValueError("best_threshold needs at least one threshold")
    return best[1], best[2]


def threshold_links(tracks: TrackSet, threshold: float) -> np.ndarray:
    """Connected components of the pairs closer than ``threshold`` (blocked, no constraints)."""
    total = len(tracks)
    rows, cols = [], []
    step = max(1, BLOCK_ELEMENTS // max(total, 1))
    for start in range(0, total, step):
        block = 2.0 - 2.0 * tracks.embeddings[start : start + step] @ tracks.embeddings.T
        i, j = np.nonzero(block < threshold)
        rows.append(i + start)
        cols.append(j)
    graph = coo_matrix(
        (np.ones(sum(len(r) for r in rows)), (np.concatenate(rows), np.concatenate(cols))),
        shape=(total, total),
    )
    return connected_components(graph, directed=False)[1]


def metropolis_style(tracks: TrackSet, ground_gate: float | None) -> np.ndarray:
    """HDBSCAN + co-existence Hungarian re-assignment (see the module docstring)."""
    total = len(tracks)
    if total < 2:
        return np.zeros(total, dtype=np.int64)
    found = HDBSCAN(min_cluster_size=2, metric="euclidean", copy=True).fit_predict(
        tracks.embeddings
    )
    labels = found.copy()
    noise = labels < 0
    labels[noise] = labels.max() + 1 + np.arange(noise.sum())
    for group in _coexisting_groups(tracks):
        if len(np.unique(labels[group])) == len(group):
            continue  # no two co-existing tracks share a cluster: nothing to re-assign
        labels[group] = _reassign(tracks, labels, group, ground_gate)
    return labels


def _coexisting_groups(tracks: TrackSet) -> list[np.ndarray]:
    """Connected groups of time-overlapping tracks within each camera (2 or more tracks)."""
    i, j = nearby_pairs(tracks, 0.0)
    same = tracks.cameras[i] == tracks.cameras[j]
    graph = coo_matrix((np.ones(same.sum()), (i[same], j[same])), shape=(len(tracks),) * 2)
    _, component = connected_components(graph, directed=False)
    groups = [np.flatnonzero(component == c) for c in np.unique(component)]
    return [g for g in groups if len(g) > 1]


def _reassign(
    tracks: TrackSet, labels: np.ndarray, group: np.ndarray, ground_gate: float | None
) -> np.ndarray:
    """One distinct cluster per track of ``group`` by Hungarian matching (new ones if short)."""
    clusters = np.unique(labels)
    outside = np.ones(len(tracks), dtype=bool)
    outside[group] = False
    centres = np.zeros((len(clusters), tracks.embeddings.shape[1]))
    for k, cluster in enumerate(clusters):
        members = (labels == cluster) & outside
        if not members.any():
            members = labels == cluster
        mean = tracks.embeddings[members].mean(0)
        centres[k] = mean / max(np.linalg.norm(mean), 1e-12)
    appearance = np.clip(1.0 - tracks.embeddings[group] @ centres.T, 0.0, 2.0) / 2.0
    trajectory = np.ones_like(appearance)
    if ground_gate is not None:
        for r, track in enumerate(group):
            for k, cluster in enumerate(clusters):
                members = np.flatnonzero(
                    (labels == cluster) & outside & (tracks.cameras != tracks.cameras[track])
                )
                distances = [
                    shared_distance(tracks.ground[track], tracks.ground[m]) for m in members
                ]
                known = [d for d in distances if d is not None]
                if known:
                    trajectory[r, k] = min(1.0, float(np.median(known)) / ground_gate)
    cost = APPEARANCE_WEIGHT * appearance + TRAJECTORY_WEIGHT * trajectory
    rows, cols = linear_sum_assignment(cost)
    out = np.empty(len(group), dtype=np.int64)
    fresh = labels.max() + 1
    assigned = dict(zip(rows.tolist(), cols.tolist(), strict=True))
    for r in range(len(group)):
        if r in assigned:
            out[r] = clusters[assigned[r]]
        else:
            out[r] = fresh
            fresh += 1
    return out
