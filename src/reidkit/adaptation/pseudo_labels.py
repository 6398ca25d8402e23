"""Pseudo-labels for unlabelled target crops: clusters of k-reciprocal neighbours, constrained.

The recipe of SpCL (Ge et al., NeurIPS 2020) and Cluster Contrast (Dai et al., 2021): embed
every crop with the current model, measure k-reciprocal Jaccard distances among all of them
(the same encoding as evaluation's re-ranking, :func:`reidkit.evaluation.rerank.jaccard_graph`)
and cluster with DBSCAN. Crops that no dense cluster reaches are *outliers*: they are left out
of training rather than forced into a cluster (both papers find forcing them costs accuracy),
and so are the crops of a cluster too big to be one person (:data:`MAX_CLUSTER_SHARE`: DBSCAN
chains look-alikes into one giant cluster when the model cannot yet tell them apart).

What a site knows for free is used when the crops carry it:

* **must-links**: crops of one track are one person. A track takes part in the neighbourhood
  graph through at most ``k1 / 2`` evenly spaced crops (so a 200-frame track does not fill
  every neighbourhood with copies of itself, while a neighbourhood still sees the track and
  about one other: on ``mars_mini`` 4 crops per track merged 16 people into 11 clusters, 8-16
  crops found them almost exactly), each weighing for the crops it stands for, and every crop
  of the track gets the label of the majority of them. The link is not put into the graph
  itself: DBSCAN would chain through it, and one track whose crops fall into two clusters of
  different people would merge those two people.
* **cannot-links**: two tracks seen at the same time by one camera are two people. A cluster
  holding such a pair is split: its tracks are dealt, largest first, to the most similar part
  that holds no track they conflict with.

What a camera does to every crop it takes is taken out before clustering: the embeddings are
**standardised within each camera** (each dimension centred on that camera's mean and divided by
its spread there), as the intra-inter camera similarity method normalises features per camera
before comparing across cameras (Xuan and Zhang, CVPR 2021). A source model trained elsewhere
embeds a camera's light, background and angle along with the person, so a site's crops first
group by camera: on ``pku_views`` the source model's clusters held 1 % of the true cross-camera
pairs, 14 % after standardisation, and the adapted model's mAP went from 32.6 to 51.5
(``bench_adapt.py``, seed 1; BENCHMARKS.md, "Unsupervised domain adaptation"). A camera's
statistics describe the camera only when it saw enough people: the one rule association uses
(:func:`reidkit.evaluation.cameras.standardise_by_camera`, 8 people), counted here as the
tracks, or else the clusters of the embedding as it is, that the camera's crops fall into.
A camera that saw a handful of people takes the statistics of all crops together (so it is on
the same scale as the others), and with fewer than two measured cameras nothing is
standardised: on ``mars_mini``'s train split (16 people, 32 tracklets over 6 cameras: 17 in
one, 1-6 in the others) a camera's mean is a few people's look, and taking it out merged
strangers across cameras (adapted mAP 54.8 against 61.8 direct, where the raw clusters kept
the source model). One camera: nothing to take out.

The label-free quality signal of a clustering is ``linked x silhouette``. The silhouette is the
mean simplified silhouette of the clustered crops (cosine distance to their own cluster's centre
against the nearest other centre; Hruschka et al. 2004): it drops when clusters blur into each
other. ``linked`` is the share of all crops that sit in a cluster seen by two or more cameras
(on a single-camera site: the share in any cluster). Re-identification is matching people
*across* cameras, and a cluster confined to one camera is as likely that camera's look (its
light, background, angle) as a person: a model trained to tighten such clusters scores a higher
silhouette while it forgets how to match across cameras (measured on ``mars_mini``'s train
split, whose clusters were its tracklets and never left their camera: silhouette 0.70 -> 0.80
while mAP fell 61.8 -> 52.9). Only a
cluster that two cameras agree on is evidence about identity, so only those count, only those
train (:meth:`~reidkit.adaptation.loop.PseudoLabeller.training_crops`), and a round is kept
only when it puts more crops in them than round 0 did, by more than chance (:func:`links_more`):
the silhouette of the clusters a round trained on rises anyway. The DBSCAN
radius, which shapes the pseudo-labels rather than judges a model, is still picked by the
clustering's own ``coverage x silhouette`` (:attr:`Clustering.structure`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse import coo_matrix
from sklearn.cluster import DBSCAN
from sklearn.metrics import cohen_kappa_score
from torch import Tensor

from reidkit.errors import ReidkitError
from reidkit.evaluation.cameras import SITE, standardise_by_camera
from reidkit.evaluation.metrics import normalize_features
from reidkit.evaluation.rerank import jaccard_graph

#: A cluster holding more than this share of all crops is not one person but a chain of many
#: (or of noise): its crops are outliers. No site's crops are a quarter one person's.
MAX_CLUSTER_SHARE = 0.25
#: The smallest distance stored in the graph (DBSCAN may read a stored 0 as "no edge").
_LINKED = 1e-6
OUTLIER = -1


class AdaptationError(ReidkitError):
    """The target crops or the adaptation settings cannot give a better model."""


#: DBSCAN radii tried when none is given; Cluster Contrast and SpCL use 0.6 (SpCL also 0.58 and
#: 0.62) on Market-sized sets with a ResNet-50.
EPS_GRID = (0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)


@dataclass(frozen=True)
class ClusterSettings:
    """DBSCAN on k-reciprocal Jaccard distances (k1, k2 and min_samples of Cluster Contrast).

    ``eps`` None tries every radius of :data:`EPS_GRID` and keeps the clustering of highest
    quality: the radius that fits depends on how well the model already separates the site's
    people (a weak source model chains everyone into a few giant clusters at 0.6), and the
    quality signal needs no labels to tell.
    """

    k1: int = 20
    k2: int = 6
    eps: float | None = None
    min_samples: int = 4
    #: Standardise the embeddings within each camera first (module docstring).
    per_camera: bool = True


@dataclass(frozen=True)
class Clustering:
    """One clustering of the target crops and its label-free quality."""

    #: Cluster of every crop (0..num_clusters-1), :data:`OUTLIER` for crops left out.
    labels: np.ndarray
    num_clusters: int
    #: Share of crops in a cluster.
    coverage: float
    #: Share of crops in a cluster seen by two or more cameras (``coverage`` on one camera).
    linked: float
    #: Mean simplified silhouette of the clustered crops.
    silhouette: float
    #: Clusters that had to be split because they held a cannot-link pair.
    splits: int = 0
    #: The DBSCAN radius that made it.
    eps: float = 0.0

    @property
    def outliers(self) -> int:
        return int((self.labels == OUTLIER).sum())

    @property
    def structure(self) -> float:
        """``coverage x silhouette``: how clearly the crops group, what picks the radius."""
        return self.coverage * self.silhouette

    @property
    def quality(self) -> float:
        """``linked x silhouette``: the guard's label-free signal (module docstring)."""
        return self.linked * self.silhouette


def track_groups(tracks: Sequence[str | None]) -> list[np.ndarray]:
    """Indices of the crops of each track (in first-seen order); crops without one are alone."""
    groups: dict[str | int, list[int]] = {}
    for index, track in enumerate(tracks):
        groups.setdefault(track if track is not None else -1 - index, []).append(index)
    return [np.asarray(members) for members in groups.values()]


def _representatives(group: np.ndarray, count: int) -> np.ndarray:
    """At most ``count`` crops spread evenly over a track."""
    if len(group) <= count:
        return group
    return group[np.linspace(0, len(group) - 1, count).round().astype(int)]


def cluster(
    features: Tensor,
    settings: ClusterSettings,
    tracks: Sequence[str | None] | None = None,
    conflicts: set[tuple[str, str]] | None = None,
    cameras: np.ndarray | None = None,
) -> Clustering:
    """Cluster L2-normalisable ``features`` (one row per crop) under the site's constraints.

    ``tracks`` gives each crop's track (None: unknown) and ``conflicts`` the pairs of tracks
    that cannot be one person. Without tracks every crop stands alone. ``cameras`` (each crop's
    camera) lets the quality count only clusters seen by two or more cameras, and, with
    ``settings.per_camera``, standardises the embeddings of every camera that saw enough people
    (module docstring) before they are clustered again.
    """
    feats = normalize_features(features.float())
    found = _clustered(feats, settings, tracks, conflicts, cameras)
    if not settings.per_camera or cameras is None or len(np.unique(cameras)) < 2:
        return found
    standardised, means, _ = standardise_by_camera(
        feats.cpu().numpy(), np.asarray(cameras), units=_visits(found.labels, tracks)
    )
    if len(means.keys() - {SITE}) < 2:  # under two cameras with statistics of their own
        return found
    feats = torch.as_tensor(standardised, device=feats.device)
    return _clustered(feats, settings, tracks, conflicts, cameras)


def _visits(labels: np.ndarray, tracks: Sequence[str | None] | None) -> np.ndarray:
    """Each crop's person-visit, to count the people a camera saw: its track where known, else
    its cluster in the embedding as it is (-1: an outlier, not counted)."""
    keys: dict[tuple[str, object], int] = {}
    visits = np.full(len(labels), -1, dtype=np.int64)
    for index, label in enumerate(labels.tolist()):
        track = tracks[index] if tracks is not None else None
        if track is not None:
            visits[index] = keys.setdefault(("track", track), len(keys))
        elif label != OUTLIER:
            visits[index] = keys.setdefault(("cluster", label), len(keys))
    return visits


def _clustered(
    feats: Tensor,
    settings: ClusterSettings,
    tracks: Sequence[str | None] | None,
    conflicts: set[tuple[str, str]] | None,
    cameras: np.ndarray | None,
) -> Clustering:
    """One clustering of unit ``feats`` (see :func:`cluster`), the radius picked by structure."""
    groups = track_groups(tracks if tracks is not None else [None] * len(feats))
    reps = [_representatives(g, max(1, settings.k1 // 2)) for g in groups]
    rep_index = np.concatenate(reps)
    rep_group = np.repeat(np.arange(len(groups)), [len(r) for r in reps])
    # A neighbourhood is only telling while it is a small part of everything: at most a quarter.
    k1 = max(1, min(settings.k1, len(rep_index) // 4))
    k2 = min(settings.k2, k1 + 1)
    radii = EPS_GRID if settings.eps is None else (settings.eps,)
    rows, cols, dist = (
        t.cpu().numpy()
        for t in jaccard_graph(feats[torch.as_tensor(rep_index)], k1, k2, max(radii) + 1e-3)
    )
    graph = coo_matrix((np.maximum(dist, _LINKED), (rows, cols)), shape=(len(rep_index),) * 2)
    # A track counts as many crops as it has towards a core point's min_samples.
    weights = np.array([len(g) / len(r) for g, r in zip(groups, reps, strict=True)])[rep_group]
    best: Clustering | None = None
    for eps in radii:
        rep_labels = (
            DBSCAN(eps=eps, min_samples=settings.min_samples, metric="precomputed")
            .fit(graph.tocsr(), sample_weight=weights)
            .labels_
        )
        labels = np.full(len(feats), OUTLIER, dtype=np.int64)
        for g, group in enumerate(groups):
            labels[group] = _majority(rep_labels[rep_group == g])
        splits = 0
        if conflicts and tracks is not None:
            labels, splits = _split_conflicts(labels, feats, tracks, conflicts)
        found = _scored(_compact_labels(_without_giants(labels)), feats, cameras, splits, eps)
        if best is None or found.structure > best.structure:
            best = found
    assert best is not None
    return best


def _majority(labels: np.ndarray) -> int:
    """The most common cluster among a track's representatives (outliers only if all are)."""
    clustered = labels[labels != OUTLIER]
    if len(clustered) == 0:
        return OUTLIER
    values, counts = np.unique(clustered, return_counts=True)
    return int(values[np.argmax(counts)])


def _split_conflicts(
    labels: np.ndarray,
    feats: Tensor,
    tracks: Sequence[str | None],
    conflicts: set[tuple[str, str]],
) -> tuple[np.ndarray, int]:
    """Split every cluster holding two tracks that cannot be one person (see module doc)."""
    labels = labels.copy()
    next_label = int(labels.max()) + 1 if len(labels) else 0
    splits = 0
    for label in np.unique(labels[labels != OUTLIER]):
        members = np.flatnonzero(labels == label)
        units = track_groups([tracks[i] for i in members])
        names = [tracks[members[u[0]]] for u in units]
        if not any((a, b) in conflicts for a in names for b in names if a is not None):
            continue
        splits += 1
        order = sorted(range(len(units)), key=lambda u: -len(units[u]))
        parts: list[list[int]] = []  # unit numbers per part
        centres: list[Tensor] = []
        for u in order:
            centre = feats[members[units[u]]].mean(0)
            allowed = [
                p
                for p, part in enumerate(parts)
                if not any((names[u], names[v]) in conflicts for v in part if names[u] is not None)
            ]
            if allowed:
                best = max(allowed, key=lambda p: float(centres[p] @ centre))
                parts[best].append(u)
                centres[best] = centres[best] + centre
            else:
                parts.append([u])
                centres.append(centre)
        for part in parts[1:]:
            for u in part:
                labels[members[units[u]]] = next_label
            next_label += 1
    return labels, splits


def _without_giants(labels: np.ndarray) -> np.ndarray:
    """Clusters above :data:`MAX_CLUSTER_SHARE` of the crops turned into outliers."""
    sizes = np.bincount(labels[labels != OUTLIER], minlength=1)
    giants = np.flatnonzero(sizes > MAX_CLUSTER_SHARE * len(labels))
    return np.where(np.isin(labels, giants), OUTLIER, labels)


def _compact_labels(labels: np.ndarray) -> np.ndarray:
    """Cluster numbers 0..C-1 in order of first appearance; outliers stay :data:`OUTLIER`."""
    out = np.full_like(labels, OUTLIER)
    kept = labels != OUTLIER
    _, first, inverse = np.unique(labels[kept], return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    out[kept] = rank[inverse]
    return out


def centres(feats: Tensor, labels: np.ndarray, num_clusters: int) -> Tensor:
    """The L2-normalised mean feature of each cluster ([num_clusters, d])."""
    kept = torch.as_tensor(labels != OUTLIER)
    index = torch.as_tensor(labels[labels != OUTLIER], device=feats.device)
    sums = torch.zeros(num_clusters, feats.shape[1], dtype=feats.dtype, device=feats.device)
    sums.index_add_(0, index, feats[kept.to(feats.device)])
    return normalize_features(sums)


def mirror_agreement(clustering: Clustering, feats: Tensor, mirrored: Tensor) -> float:
    """How far beyond chance clustered crops' mirror images stay nearest their own cluster's
    centre: Cohen's kappa of each crop's cluster against its mirror image's nearest centre.

    A person mirrored is the same person, so a model that clusters people keeps a mirrored crop
    in its cluster, while clusters a model finds in random pixels are made of details that
    mirroring scrambles. Kappa rather than the share that stays, because that share is high by
    chance when one cluster holds most crops (random pixels standardised per camera fell into a
    cluster of 19 and one of 3: 86 % stayed, kappa 0.59). The adaptation's "no structure" test,
    on the clusters of the embedding as it is (not standardised per camera)."""
    if clustering.num_clusters < 2:
        return 0.0
    kept = torch.as_tensor(clustering.labels != OUTLIER, device=feats.device)
    nearest = (
        normalize_features(mirrored.float())[kept]
        @ centres(normalize_features(feats.float()), clustering.labels, clustering.num_clusters).T
    ).argmax(1)
    own = clustering.labels[clustering.labels != OUTLIER]
    return float(cohen_kappa_score(own, nearest.cpu().numpy()))


def cross_camera_members(labels: np.ndarray, cameras: np.ndarray) -> np.ndarray:
    """Whether each crop sits in a cluster seen by two or more cameras (outliers never do)."""
    kept = labels != OUTLIER
    if not kept.any():
        return kept
    pairs = np.unique(np.stack([labels[kept], cameras[kept]], 1), axis=0)
    multi_camera = np.bincount(pairs[:, 0], minlength=int(labels.max()) + 1) >= 2
    return kept & multi_camera[np.maximum(labels, 0)]


#: One-sided 97.5 % point of the normal distribution: how far above its own spread a rise of the
#: cross-camera share must be to count (:func:`links_more`).
LINK_EVIDENCE_Z = 1.96


def links_more(before: np.ndarray, after: np.ndarray, units: Sequence[np.ndarray]) -> bool:
    """Whether ``after`` puts more crops in cross-camera clusters than ``before`` by more than
    chance: a one-sided paired z-test over ``units`` (the crops of each track, or single
    crops), each weighing as many crops as it holds. ``before`` and ``after`` say for every
    crop whether its cluster was seen by two or more cameras (:func:`cross_camera_members`).

    A track's crops always share a label, so the share moves in steps of whole tracks: on a
    gallery of 32 tracklets, one more tracklet joining a cross-camera cluster lifts it by a
    few points, whether the tracklet joined its own person or a stranger. The test asks the
    rise to clear the spread of the tracks' own moves (standard error of the weighted mean of
    their changes) by :data:`LINK_EVIDENCE_Z`; a rise that every unit shares clears it.
    """
    weights = np.array([len(unit) for unit in units], dtype=np.float64)
    change = np.array(
        [after[unit].mean() - before[unit].mean() for unit in units], dtype=np.float64
    )
    total = weights.sum()
    rise = float(weights @ change / total)
    if rise <= 0:
        return False
    count = len(units)
    if count < 2:
        return True
    variance = float((weights**2) @ (change - rise) ** 2) / total**2 * count / (count - 1)
    return rise > LINK_EVIDENCE_Z * variance**0.5


def _scored(
    labels: np.ndarray, feats: Tensor, cameras: np.ndarray | None, splits: int, eps: float
) -> Clustering:
    """The clustering with its coverage, cross-camera share and simplified silhouette."""
    num_clusters = int(labels.max()) + 1 if (labels != OUTLIER).any() else 0
    kept = labels != OUTLIER
    coverage = float(kept.mean()) if len(labels) else 0.0
    linked = coverage
    if cameras is not None and len(np.unique(cameras)) >= 2:
        linked = float(cross_camera_members(labels, cameras).mean())
    silhouette = 0.0
    if num_clusters >= 2:
        clustered = feats[torch.as_tensor(kept).to(feats.device)]
        own = torch.as_tensor(labels[kept], device=feats.device)
        distance = 1.0 - clustered @ centres(feats, labels, num_clusters).T
        a = distance.gather(1, own[:, None]).squeeze(1)
        b = distance.scatter(1, own[:, None], float("inf")).amin(1)
        silhouette = float(((b - a) / torch.maximum(a, b).clamp_min(1e-12)).mean())
    return Clustering(labels, num_clusters, coverage, linked, silhouette, splits, eps)


def co_occurring_tracks(
    tracks: Sequence[str | None],
    cameras: Sequence[int],
    timestamps: Sequence[float | None],
) -> set[tuple[str, str]]:
    """Cannot-links: pairs of tracks whose time spans overlap in one camera (both orders).

    A track's span runs from its first to its last crop's timestamp; crops without a track or
    a timestamp say nothing. One camera cannot see one person twice at the same moment.
    """
    spans: dict[tuple[int, str], list[float]] = {}
    for track, camera, moment in zip(tracks, cameras, timestamps, strict=True):
        if track is None or moment is None:
            continue
        span = spans.setdefault((int(camera), track), [moment, moment])
        span[0], span[1] = min(span[0], moment), max(span[1], moment)
    conflicts: set[tuple[str, str]] = set()
    by_camera: dict[int, list[tuple[float, float, str]]] = {}
    for (camera, track), (start, end) in spans.items():
        by_camera.setdefault(camera, []).append((start, end, track))
    for intervals in by_camera.values():
        intervals.sort()
        open_tracks: list[tuple[float, str]] = []  # (end, track) of spans still running
        for start, end, track in intervals:
            open_tracks = [(e, t) for e, t in open_tracks if e >= start]
            for _, other in open_tracks:
                if other != track:
                    conflicts.update({(track, other), (other, track)})
            open_tracks.append((end, track))
    return conflicts
