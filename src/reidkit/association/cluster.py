"""Offline association: constrained average-linkage clustering of tracks into identities.

Three steps, each chosen for a reason a site can check:

1. **Same place, same moment.** Pairs of tracks that two cameras saw within the ground gate
   at one moment (see :mod:`reidkit.association.constraints`) are joined first, closest first.
   This is the strongest evidence a site has, and it needs no appearance at all; a pair is
   skipped only when its appearance distance exceeds the *veto* (the median distance of pairs
   proven to be two people: "looks more different than two typical strangers").
2. **Appearance, average linkage.** Groups are merged while the average squared distance of
   their members' unit embeddings stays under the match threshold. Average linkage is the one
   that keeps its meaning as groups grow (single linkage chains strangers through look-alikes,
   complete linkage splits a person whose look changes across cameras), and for unit vectors it
   is exact from each group's sum: ``2 - 2 <S_a, S_b> / (n_a n_b)``, so a merge costs one dot
   product per neighbouring group instead of a pass over all member pairs.
3. **Cannot-links hold at every merge.** Two groups with one cannot-link between any of their
   members never merge (a person is not twice in one camera at one moment, nor faster than the
   site's transit minima, nor in two places at once), so no identity ever holds two co-existing
   tracks of one camera, by construction rather than by later repair.

The threshold is a distance between unit vectors, the same quantity the model's calibrated
``match_threshold`` is, but measured on the site itself (:func:`learn_threshold`): the pairs
every camera proves to be two people (two tracks at one moment in one camera) give the
distribution of stranger distances on this site, with its cameras and its crowd, and the
threshold admits a fixed expected number of strangers per track. Sets where nothing proves
two tracks different (crops without time) are cut where the tree is most stable instead
(:func:`stability_cut`), after joining the pairs of one camera's tracks that are each other's
nearest (a tracker's pieces of one visit, :func:`_join_camera_twins`), and a sighting that no
other member of its identity has among its nearest tracks is released as a person of its own
(:func:`_release_outsiders`). Nothing here is tuned to a data set.

Candidate merges come from each track's nearest neighbours (a blocked matrix product whose
block holds a fixed number of similarities), which keeps 10,000 tracks within seconds.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
from scipy.stats import norm

from reidkit.association.constraints import (
    MIN_LEARNING_PAIRS,
    PairEvidence,
    Rules,
    TrackSet,
    learn_ground_gate,
    pair_evidence,
)
from reidkit.evaluation.cameras import standardise_by_camera

#: Nearest neighbours per track proposed as merge candidates.
NEIGHBOURS = 24
#: Similarities held at once by the neighbour search (a block of rows x all tracks): 64 MB
#: of float32 plus the selection's int64 indices, whatever the number of tracks.
BLOCK_ELEMENTS = 1 << 24
#: Tracks a camera needs before its mean and spread are taken as the camera's own.
MIN_CAMERA_TRACKS = 8
#: Smallest identity the stability cut keeps, in sightings: one person seen twice. A sighting is
#: one of the tree's starting groups (a track, or the tracks joined before the tree as one visit).
MIN_IDENTITY_SIGHTINGS = 2


@dataclass
class Association:
    """Identity labels ``0..K-1`` per track (in order of first appearance) and what decided them."""

    labels: np.ndarray
    threshold: float | None  # None: the stability cut decided
    veto: float | None
    merges_by_place: int = 0
    merges_by_appearance: int = 0
    refused_by_constraints: int = 0

    @property
    def identities(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0


def pair_distances(embeddings: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances of unit rows ``i`` and ``j`` (``2 - 2 cos``)."""
    return np.clip(2.0 - 2.0 * np.einsum("ij,ij->i", embeddings[i], embeddings[j]), 0.0, 4.0)


def learn_threshold(
    tracks: TrackSet, evidence: PairEvidence, strangers_per_track: float
) -> tuple[float | None, float | None]:
    """(threshold, veto) from the pairs the site proves to be two people, or (None, None).

    The distances between two strangers' unit embeddings are close to normal (a sum over
    many dimensions); fitted on the proven pairs, the threshold is the distance below which
    ``strangers_per_track`` of a track's ``T - 1`` others are expected to fall. Scaling with
    ``T`` keeps a 10,000-track day as clean as a 100-track clip, and the fit extrapolates
    where the few proven pairs cannot reach a quantile that small. The veto is their median.
    """
    if len(evidence.proven_i) < MIN_LEARNING_PAIRS:
        return None, None
    strangers = pair_distances(tracks.embeddings, evidence.proven_i, evidence.proven_j)
    share = min(strangers_per_track / max(len(tracks) - 1, 1), 0.5)
    threshold = float(strangers.mean() + norm.ppf(share) * strangers.std())
    return max(threshold, 0.0), float(np.median(strangers))


def nearest_neighbours(embeddings: np.ndarray, count: int) -> np.ndarray:
    """``[T, count]`` indices of each row's most similar other rows (unit vectors), nearest
    first."""
    total = len(embeddings)
    count = min(count, total - 1)
    if count <= 0:
        return np.empty((total, 0), dtype=np.int64)
    out = np.empty((total, count), dtype=np.int64)
    rows_per_block = max(1, BLOCK_ELEMENTS // total)
    for start in range(0, total, rows_per_block):
        block = embeddings[start : start + rows_per_block] @ embeddings.T
        rows = np.arange(len(block))
        block[rows, start + rows] = -np.inf
        top = np.argpartition(-block, count - 1, axis=1)[:, :count]
        rank = np.argsort(-np.take_along_axis(block, top, axis=1), axis=1, kind="stable")
        out[start : start + rows_per_block] = np.take_along_axis(top, rank, axis=1)
    return out


class _Groups:
    """Disjoint groups of tracks with their embedding sums and lifted cannot-links."""

    def __init__(self, embeddings: np.ndarray) -> None:
        total = len(embeddings)
        self.parent = np.arange(total)
        self.sums = embeddings.astype(np.float64)
        self.counts = np.ones(total)
        self.version = np.zeros(total, dtype=np.int64)
        self.cannot: dict[int, set[int]] = defaultdict(set)
        self.near: dict[int, set[int]] = defaultdict(set)
        #: appearance merges in order: (root a, root b, new root, linkage distance)
        self.log: list[tuple[int, int, int, float]] = []

    def find(self, item: int) -> int:
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:
            self.parent[item], item = root, self.parent[item]
        return int(root)

    def distance(self, a: int, b: int) -> float:
        return float(2.0 - 2.0 * self.sums[a] @ self.sums[b] / (self.counts[a] * self.counts[b]))

    def distances(self, a: int, others: np.ndarray) -> np.ndarray:
        return 2.0 - 2.0 * (self.sums[others] @ self.sums[a]) / (
            self.counts[others] * self.counts[a]
        )

    def forbid(self, i: np.ndarray, j: np.ndarray) -> None:
        for a, b in zip(i.tolist(), j.tolist(), strict=True):
            self.cannot[a].add(b)
            self.cannot[b].add(a)

    def merge(self, a: int, b: int) -> int:
        """Join the groups rooted at ``a`` and ``b``; returns the new root."""
        if self.counts[a] < self.counts[b]:
            a, b = b, a
        self.parent[b] = a
        self.sums[a] += self.sums[b]
        self.counts[a] += self.counts[b]
        self.version[a] += 1
        for table in (self.cannot, self.near):
            moved = table.pop(b, set())
            for other in moved:
                table[other].discard(b)
                table[other].add(a)
            table[a] |= moved
            table[a].discard(a)
            table[a].discard(b)
        return a

    def labels(self) -> np.ndarray:
        return first_seen_labels(np.array([self.find(i) for i in range(len(self.parent))]))


def first_seen_labels(groups: np.ndarray) -> np.ndarray:
    """Group ids renumbered ``0..K-1`` in order of each group's first row."""
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse]


def associate(
    tracks: TrackSet,
    rules: Rules,
    threshold: float | None,
    *,
    veto: float | None = None,
    evidence: PairEvidence | None = None,
    neighbours: int = NEIGHBOURS,
) -> Association:
    """Global identities for ``tracks`` (see the module docstring for the method).

    ``threshold`` None cuts the tree where its groups are most stable instead
    (:func:`stability_cut`): for sets where the site proves no two tracks different.
    """
    total = len(tracks)
    evidence = evidence if evidence is not None else pair_evidence(tracks, rules)
    groups = _Groups(tracks.embeddings)
    groups.forbid(evidence.cannot_i, evidence.cannot_j)
    result = Association(np.arange(total), threshold, veto)
    order = np.argsort(evidence.same_place_distance, kind="stable")
    for a, b in zip(evidence.same_place_i[order], evidence.same_place_j[order], strict=True):
        ra, rb = groups.find(int(a)), groups.find(int(b))
        if ra == rb:
            continue
        if rb in groups.cannot[ra]:
            result.refused_by_constraints += 1
            continue
        if veto is not None and groups.distance(ra, rb) > veto:
            continue
        groups.merge(ra, rb)
        result.merges_by_place += 1
    near = nearest_neighbours(tracks.embeddings, neighbours)
    if threshold is None:
        result.merges_by_appearance += _join_camera_twins(groups, tracks.cameras, near)
    roots = np.array([groups.find(i) for i in range(total)])
    if total > 1:
        limit = np.inf if threshold is None else threshold
        _link_by_appearance(groups, near, limit, result)
    if threshold is not None:
        result.labels = groups.labels()
    else:
        result.labels = _release_outsiders(stability_cut(roots, groups.log), roots, near)
    return result


def _join_camera_twins(groups: _Groups, cameras: np.ndarray, near: np.ndarray) -> int:
    """Join each pair of one camera's tracks that are each other's nearest track (before the
    stability cut's tree); returns how many pairs were joined.

    A tracker that loses someone for a moment hands one visit over as several tracks, and a
    person who comes back is seen again by the same view. Such pieces are far closer to each
    other than to anything else, and the stability cut, which keeps the groups that hold
    together longest, would keep them apart as people of their own (BENCHMARKS.md: the
    crop-only sets with each tracklet cut in pieces). Two tracks of one camera that are each
    other's nearest among all the site's tracks are taken as one person, never across a
    cannot-link, and the pair enters the tree as one sighting (:func:`stability_cut`). The
    rule has no parameter to tune to a set. ``near``: each track's nearest tracks, nearest first.
    """
    if len(cameras) < 3:  # two tracks are each other's nearest whatever they look like
        return 0
    nearest = near[:, 0]
    rows = np.arange(len(nearest))
    twins = (nearest[nearest] == rows) & (rows < nearest)
    twins &= cameras[nearest] == cameras
    joined = 0
    for a, b in zip(rows[twins].tolist(), nearest[twins].tolist(), strict=True):
        root_a, root_b = groups.find(a), groups.find(b)
        if root_a != root_b and root_b not in groups.cannot[root_a]:
            groups.merge(root_a, root_b)
            joined += 1
    return joined


def _link_by_appearance(
    groups: _Groups, near: np.ndarray, threshold: float, result: Association
) -> None:
    """Average-linkage merges under ``threshold``, cannot-links respected (step 2); candidate
    pairs are each track and its ``near`` tracks."""
    for i, row in enumerate(near):
        ri = groups.find(i)
        for j in row.tolist():
            rj = groups.find(j)
            if rj != ri:
                groups.near[ri].add(rj)
                groups.near[rj].add(ri)
    heap: list[tuple[float, int, int, int, int]] = []

    def offer(root: int) -> None:
        others = np.fromiter(groups.near[root] - groups.cannot[root], dtype=np.int64)
        if len(others) == 0:
            return
        distances = groups.distances(root, others)
        keep = distances < threshold
        for other, distance in zip(others[keep].tolist(), distances[keep].tolist(), strict=True):
            entry = (distance, root, other, int(groups.version[root]), int(groups.version[other]))
            heapq.heappush(heap, entry)

    for root in list(groups.near):
        offer(root)
    while heap:
        _, a, b, version_a, version_b = heapq.heappop(heap)
        if (
            groups.parent[a] != a
            or groups.parent[b] != b
            or groups.version[a] != version_a
            or groups.version[b] != version_b
        ):
            continue  # one side has merged since: its new distances were offered then
        if b in groups.cannot[a]:
            result.refused_by_constraints += 1
            continue
        distance = groups.distance(a, b)
        merged = groups.merge(a, b)
        groups.log.append((a, b, merged, distance))
        offer(merged)
        result.merges_by_appearance += 1


def holds_constraints(labels: np.ndarray, evidence: PairEvidence) -> bool:
    """Whether no identity holds both tracks of any cannot-link pair."""
    return not np.any(labels[evidence.cannot_i] == labels[evidence.cannot_j])


def learn_transit(
    tracks: TrackSet, labels: np.ndarray, camera_names: list[str]
) -> list[dict[str, float | int | str]]:
    """Observed transit times between camera pairs: consecutive tracks of one identity in two
    cameras with a gap between them, per ordered pair (count, shortest, median, 90th pct)."""
    gaps: dict[tuple[int, int], list[float]] = defaultdict(list)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[np.argsort(tracks.start[members], kind="stable")]
        for a, b in pairwise(members.tolist()):
            gap = tracks.start[b] - tracks.end[a]
            if tracks.cameras[a] != tracks.cameras[b] and gap > 0:
                gaps[(int(tracks.cameras[a]), int(tracks.cameras[b]))].append(float(gap))
    return [
        {
            "from": camera_names[a],
            "to": camera_names[b],
            "count": len(values),
            "min_s": round(min(values), 3),
            "median_s": round(float(np.median(values)), 3),
            "p90_s": round(float(np.quantile(values, 0.9)), 3),
        }
        for (a, b), values in sorted(gaps.items())
    ]


@dataclass
class _Condensed:
    """A cluster of the condensed tree: its members' summed entry levels, size, children."""

    entry_sum: float
    size: int
    children: list[int]
    members: list[int] | None = None
    stability: float | None = None


def stability_cut(roots: np.ndarray, log: list[tuple[int, int, int, float]]) -> np.ndarray:
    """Identities where the merge tree's groups are most stable (HDBSCAN's "excess of mass").

    The tree is the average-linkage merges in ``log`` (union-find roots: the two merged and
    the one kept, and the distance) over the starting groups ``roots`` (each track's root). A
    group's stability is how long, in ``1 / distance``, its tracks stay together before it
    joins another group of :data:`MIN_IDENTITY_SIGHTINGS` or more; a group is kept when it is
    more stable than the best cut of its sub-groups (Campello et al., 2013). Unlike a global
    threshold this adapts to how tight each identity is, which is all a set without time has
    to go on. Groups never merged (refused, or too far) are cut at the largest merge distance.

    Size is counted in sightings (starting groups), not tracks: a visit a tracker handed over
    in pieces, joined before the tree, is one sighting. Counted in tracks, each such visit
    would be a candidate identity of its own, every merge of two visits a split, and the
    selection, whose levels grow as ``1 / distance``, would keep a person's tight one-camera
    visits apart rather than the person (BENCHMARKS.md: MARS-mini cut in 2, 36 to 42 identities
    for 16 people). Counted in sightings, a set cut in pieces gives the tree of the uncut set.
    """
    members: dict[int, list[int]] = {}
    for track, root in enumerate(roots.tolist()):
        members.setdefault(root, []).append(track)
    sightings = dict.fromkeys(members, 1)
    cluster_of: dict[int, int] = {}
    reached: dict[int, float] = {}
    clusters: list[_Condensed] = []

    def close(node: int, level: float) -> int:
        cid = cluster_of[node]  # a node of two sightings or more was made by a merge below
        clusters[cid].stability = clusters[cid].entry_sum - clusters[cid].size * level
        clusters[cid].members = members[node]
        return cid

    for a, b, kept, distance in log:
        # average linkage under constraints may invert; the tree's levels must not
        distance = max(distance, reached.get(a, 0.0), reached.get(b, 0.0))
        level = 1.0 / max(distance, 1e-6)
        big = [n for n in (a, b) if sightings[n] >= MIN_IDENTITY_SIGHTINGS]
        size = len(members[a]) + len(members[b])
        if len(big) == 2:
            children = [close(n, level) for n in big]
            clusters.append(_Condensed(size * level, size, children))
            cid = len(clusters) - 1
        elif big:
            cid = cluster_of[big[0]]
            clusters[cid].entry_sum += (size - len(members[big[0]])) * level
            clusters[cid].size = size
        else:
            clusters.append(_Condensed(size * level, size, []))
            cid = len(clusters) - 1
        gone = b if kept == a else a
        members[kept] = members[a] + members[b] if kept == a else members[b] + members[a]
        sightings[kept] = sightings[a] + sightings[b]
        del members[gone], sightings[gone]
        cluster_of.pop(gone, None)
        cluster_of[kept] = cid
        reached[kept] = distance
    top_level = 1.0 / max(max(reached.values(), default=1.0), 1e-6)
    tops = [close(n, top_level) for n in members if sightings[n] >= MIN_IDENTITY_SIGHTINGS]
    best: dict[int, tuple[float, list[int]]] = {}
    for cid, node in enumerate(clusters):  # children are always created before their parents
        below = sum(best[c][0] for c in node.children)
        own = node.stability if node.stability is not None else -np.inf
        if own >= below or not node.children:
            best[cid] = (max(own, 0.0), [cid])
        else:
            best[cid] = (below, [k for c in node.children for k in best[c][1]])
    labels = np.full(len(roots), -1, dtype=np.int64)
    for number, cid in enumerate(k for top in tops for k in best[top][1]):
        labels[clusters[cid].members] = number
    alone = labels < 0  # a sighting in no kept group is a person of its own, pieces together
    labels[alone] = labels.max(initial=-1) + 1 + np.unique(roots[alone], return_inverse=True)[1]
    return first_seen_labels(labels)


def _release_outsiders(labels: np.ndarray, roots: np.ndarray, near: np.ndarray) -> np.ndarray:
    """``labels`` with each sighting that no other member of its identity counts among its
    ``n - 1`` nearest tracks (``n``: the identity's tracks) made an identity of its own.

    Average linkage joins a group to another by their average distance, so a person seen once
    can join the identity of a look-alike while no member of it has them near: they were
    nearer to that group than to any other, not near to anyone in it. If the identity were one
    person, each member's ``n - 1`` nearest tracks would be the others; a sighting (a starting
    group of the tree, as in :func:`stability_cut`) that is in no member's list is released,
    and an identity that lost one is asked again at its new size, until none is released.
    Identities of two sightings are left as the cut kept them (no third member to ask), and so
    are those larger than the neighbour lists ``near`` hold. k-reciprocal neighbours (Zhong et
    al., 2017) test the same thing for a query; here ``k`` is the identity's own size, not a
    parameter.
    """
    labels = labels.copy()
    fresh = labels.max(initial=-1) + 1
    released = True
    while released:
        released = False
        order = np.argsort(labels, kind="stable")
        for members in np.split(order, np.flatnonzero(np.diff(labels[order])) + 1):
            size, sightings = len(members), np.unique(roots[members])
            if len(sightings) < 3 or size - 1 > near.shape[1]:
                continue
            named = near[members, : size - 1]
            for root in sightings.tolist():
                own = roots[members] == root
                if not np.isin(named[~own], members[own]).any():
                    labels[members[own]] = fresh
                    fresh += 1
                    released = True
    return first_seen_labels(labels)


OPEN_SET_RULES = ("auto", "site", "stability", "card")


@dataclass
class Calibration:
    """What one association run learned, which a live assigner reuses on the same site.

    ``threshold`` None means the stability cut decided identities. ``camera_means`` and
    ``camera_scales`` are the per-camera statistics embeddings were standardised with (camera
    index -> vector, and the site's under :data:`~reidkit.evaluation.cameras.SITE` for cameras
    without their own; :func:`standardise_by_camera`), empty when not standardised.
    """

    threshold: float | None
    source: str
    veto: float | None
    ground_gate: float | None
    camera_means: dict[int, np.ndarray]
    proven_pairs: int
    camera_scales: dict[int, np.ndarray] = field(default_factory=dict)
    #: the stricter threshold a live assigner joins tracks under (None: ``threshold``); see
    #: :func:`reidkit.association.online.calibrate_live_threshold`
    live_threshold: float | None = None


def associate_site(
    tracks: TrackSet,
    min_transit: np.ndarray,
    *,
    open_set: str = "auto",
    match_threshold: float | None = None,
    card_threshold: float | None = None,
    strangers_per_track: float = 1.0,
    centre_cameras: bool = True,
    ground_gate: float | None = None,
) -> tuple[Association, Calibration, PairEvidence]:
    """Associate ``tracks`` (raw unit embeddings) the way ``reidkit associate`` does.

    The open-set rule: ``match_threshold`` when given, else by ``open_set``: ``site`` learns
    it from the pairs the site proves different (:func:`learn_threshold`), ``stability`` cuts
    the tree where it is most stable, ``card`` takes the model's calibrated threshold, and
    ``auto`` is ``site`` when the site proves at least :data:`MIN_LEARNING_PAIRS` pairs,
    else ``stability``. A model-calibrated distance (``match_threshold``, ``card``) is a raw
    model distance, so cameras are not standardised then.
    """
    if open_set not in OPEN_SET_RULES:
        raise ValueError(f"open_set must be one of {OPEN_SET_RULES}, got {open_set!r}")
    raw = match_threshold is not None or open_set == "card"
    means: dict[int, np.ndarray] = {}
    scales: dict[int, np.ndarray] = {}
    if centre_cameras and not raw:
        standardised, means, scales = standardise_by_camera(
            tracks.embeddings, tracks.cameras, min_rows=MIN_CAMERA_TRACKS
        )
        tracks = TrackSet(tracks.cameras, tracks.start, tracks.end, standardised, tracks.ground)
    if ground_gate is None and any(g is not None for g in tracks.ground):
        ground_gate = learn_ground_gate(tracks)
    rules = Rules(min_transit, ground_gate)
    evidence = pair_evidence(tracks, rules)
    learned, veto = learn_threshold(tracks, evidence, strangers_per_track)
    if match_threshold is not None:
        threshold, source = match_threshold, "match_threshold"
    elif open_set == "card":
        if card_threshold is None:
            raise ValueError("open_set 'card' needs a model card with a match_threshold")
        threshold, source = card_threshold, "card"
    elif open_set == "site" or (open_set == "auto" and learned is not None):
        if learned is None:
            raise ValueError(
                f"open_set 'site' needs {MIN_LEARNING_PAIRS} pairs of tracks that share a "
                f"moment in one camera; this site has {len(evidence.proven_i)}"
            )
        threshold, source = learned, "site"
    else:
        threshold, source = None, "stability"
    result = associate(tracks, rules, threshold, veto=veto, evidence=evidence)
    calibration = Calibration(
        threshold, source, veto, ground_gate, means, len(evidence.proven_i), scales
    )
    return result, calibration, evidence
