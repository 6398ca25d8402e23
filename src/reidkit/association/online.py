"""Live association: each track gets its global id as it closes, with corrections later.

:class:`OnlineAssigner` applies the offline method's rules one track at a time, so a site
replayed through it and the same tracks associated offline should mostly agree (the benchmark
measures how much):

* a closing track joins the identity it shares a place with at one moment in another camera
  (the ground gate), unless their looks differ beyond the veto;
* else the identity with the nearest average-linkage distance (``2 - 2 <e, S> / n``, the
  offline linkage between one track and a group) under the threshold;
* never an identity one of whose tracks it cannot be (the same cannot-links as offline,
  computed by the same code: :func:`reidkit.association.constraints.pair_evidence`);
* else a new identity.

When a track joins an identity, any other identity within the threshold of that one (and with
no cannot-link between them) is merged into it: the later id is absorbed into the earlier and
a :class:`Correction` says so, so a live consumer can relabel what it showed.

Where identities live is an :class:`IdentityStore`: :class:`MemoryIdentityStore` holds them in
this process; a store over the gallery backend lets several service processes assign against
one shared state (the live endpoint's job).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from reidkit.association.constraints import Rules, TrackSet, pair_evidence

#: Identities looked at per closing track (nearest centroids first).
CANDIDATES = 16


@dataclass(frozen=True)
class ClosedTrack:
    """A track as it closes: where and when it was seen, and its pooled unit embedding.

    ``ground`` holds (time, x, y) rows in time order, or None. ``key`` is the caller's name
    for the track (e.g. camera, tracker id, part).
    """

    key: object
    camera: int
    start: float
    end: float
    embedding: np.ndarray
    ground: np.ndarray | None = None


@dataclass(frozen=True)
class Correction:
    """Identity ``absorbed`` turned out to be identity ``kept``: relabel it everywhere."""

    absorbed: int
    kept: int


@dataclass(frozen=True)
class Assignment:
    """The global id of a closing track, how it was decided, and any corrections it caused."""

    global_id: int
    reason: str  # "place", "appearance" or "new"
    distance: float | None
    corrections: tuple[Correction, ...] = ()


class IdentityStore(Protocol):
    """Where identities (embedding sums, member tracks) live; the assigner's only state."""

    def nearest(self, embedding: np.ndarray, count: int) -> list[tuple[int, float]]:
        """Up to ``count`` (identity, average-linkage distance) pairs, nearest first."""
        ...

    def linkage(self, a: int, b: int) -> float:
        """Average-linkage distance between two identities."""
        ...

    def members(self, identity: int) -> list[ClosedTrack]: ...

    def create(self, track: ClosedTrack) -> int:
        """A new identity holding ``track``; returns its id."""
        ...

    def attach(self, identity: int, track: ClosedTrack) -> None: ...

    def merge(self, kept: int, absorbed: int) -> None:
        """Move every track of ``absorbed`` into ``kept``; ``absorbed`` ceases to exist."""
        ...


@dataclass
class MemoryIdentityStore:
    """Identities in this process: a growing matrix of embedding sums, member lists."""

    dim: int
    sums: np.ndarray = field(init=False)
    counts: np.ndarray = field(init=False)
    alive: np.ndarray = field(init=False)
    tracks: dict[int, list[ClosedTrack]] = field(init=False, default_factory=dict)
    size: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.sums = np.zeros((1024, self.dim), dtype=np.float32)
        self.counts = np.zeros(1024, dtype=np.float32)
        self.alive = np.zeros(1024, dtype=bool)

    def nearest(self, embedding: np.ndarray, count: int) -> list[tuple[int, float]]:
        live = np.flatnonzero(self.alive[: self.size])
        if len(live) == 0:
            return []
        distances = 2.0 - 2.0 * (self.sums[live] @ embedding) / self.counts[live]
        if len(live) > count:
            top = np.argpartition(distances, count - 1)[:count]
        else:
            top = np.arange(len(live))
        top = top[np.argsort(distances[top], kind="stable")]
        return [(int(live[k]) + 1, float(distances[k])) for k in top]

    def linkage(self, a: int, b: int) -> float:
        sa, sb = self.sums[a - 1], self.sums[b - 1]
        return float(2.0 - 2.0 * (sa @ sb) / (self.counts[a - 1] * self.counts[b - 1]))

    def members(self, identity: int) -> list[ClosedTrack]:
        return self.tracks[identity]

    def create(self, track: ClosedTrack) -> int:
        if self.size == len(self.counts):
            grow = len(self.counts)
            self.sums = np.concatenate([self.sums, np.zeros((grow, self.dim), np.float32)])
            self.counts = np.concatenate([self.counts, np.zeros(grow, np.float32)])
            self.alive = np.concatenate([self.alive, np.zeros(grow, bool)])
        self.size += 1
        self.alive[self.size - 1] = True
        self.tracks[self.size] = []
        self.attach(self.size, track)
        return self.size

    def attach(self, identity: int, track: ClosedTrack) -> None:
        self.sums[identity - 1] += track.embedding
        self.counts[identity - 1] += 1
        self.tracks[identity].append(track)

    def merge(self, kept: int, absorbed: int) -> None:
        self.sums[kept - 1] += self.sums[absorbed - 1]
        self.counts[kept - 1] += self.counts[absorbed - 1]
        self.alive[absorbed - 1] = False
        self.tracks[kept].extend(self.tracks.pop(absorbed))


def _relations(
    track: ClosedTrack, others: list[ClosedTrack], rules: Rules
) -> tuple[np.ndarray, np.ndarray]:
    """(cannot-link, same-place distance or inf) of ``track`` with each of ``others``."""
    every = [track, *others]
    subset = TrackSet(
        cameras=np.array([t.camera for t in every], dtype=np.int64),
        start=np.array([t.start for t in every]),
        end=np.array([t.end for t in every]),
        embeddings=np.zeros((len(every), 1), dtype=np.float32),
        ground=[t.ground for t in every],
    )
    evidence = pair_evidence(subset, rules)
    cannot = np.zeros(len(others), dtype=bool)
    cannot[evidence.cannot_j[evidence.cannot_i == 0] - 1] = True
    place = np.full(len(others), np.inf)
    mine = evidence.same_place_i == 0
    place[evidence.same_place_j[mine] - 1] = evidence.same_place_distance[mine]
    return cannot, place


def _near_in_time(
    tracks: list[ClosedTrack], start: float, end: float, horizon: float
) -> list[ClosedTrack]:
    return [t for t in tracks if t.start <= end + horizon and t.end >= start - horizon]


class OnlineAssigner:
    """Assign closing tracks to global identities (see the module docstring)."""

    def __init__(
        self,
        rules: Rules,
        threshold: float,
        *,
        store: IdentityStore,
        veto: float | None = None,
        candidates: int = CANDIDATES,
    ) -> None:
        self.rules = rules
        self.threshold = threshold
        self.veto = veto
        self.store = store
        self.candidates = candidates

    def assign(self, track: ClosedTrack) -> Assignment:
        """The global id of ``track`` (now stored under it) and the corrections it caused."""
        nearest = self.store.nearest(track.embedding, self.candidates)
        horizon = self.rules.horizon
        best_place: tuple[float, int, float] | None = None
        best_look: tuple[float, int] | None = None
        for identity, distance in nearest:
            members = _near_in_time(self.store.members(identity), track.start, track.end, horizon)
            cannot, place = _relations(track, members, self.rules) if members else ([], [])
            if np.any(cannot):
                continue
            closest = float(np.min(place)) if len(place) else np.inf
            if np.isfinite(closest) and (self.veto is None or distance <= self.veto):
                if best_place is None or closest < best_place[0]:
                    best_place = (closest, identity, distance)
            elif distance < self.threshold and best_look is None:
                best_look = (distance, identity)
        if best_place is not None:
            _, identity, distance = best_place
            reason = "place"
        elif best_look is not None:
            distance, identity = best_look
            reason = "appearance"
        else:
            return Assignment(self.store.create(track), "new", nearest[0][1] if nearest else None)
        self.store.attach(identity, track)
        identity, corrections = self._merge_into(identity, [i for i, _ in nearest if i != identity])
        return Assignment(identity, reason, distance, tuple(corrections))

    def _merge_into(self, identity: int, others: list[int]) -> tuple[int, list[Correction]]:
        """Merge every other candidate identity now within the threshold of ``identity``;
        returns the surviving id (the earliest) and the corrections."""
        corrections: list[Correction] = []
        for other in others:
            if self.store.linkage(identity, other) >= self.threshold:
                continue
            if self._conflict(identity, other):
                continue
            kept, absorbed = min(identity, other), max(identity, other)
            self.store.merge(kept, absorbed)
            corrections.append(Correction(absorbed, kept))
            identity = kept
        return identity, corrections

    def _conflict(self, a: int, b: int) -> bool:
        """Whether any track of identity ``a`` cannot be the person of any track of ``b``."""
        horizon = self.rules.horizon
        theirs = self.store.members(b)
        for track in self.store.members(a):
            near = _near_in_time(theirs, track.start, track.end, horizon)
            if near and np.any(_relations(track, near, self.rules)[0]):
                return True
        return False
