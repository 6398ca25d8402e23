"""Live association: each track gets its global id as it closes, with corrections later.

:class:`OnlineAssigner` applies the offline method's rules one track at a time, so a site
replayed through it and the same tracks associated offline should mostly agree (the benchmark
measures how much):

* a closing track joins the identity it shares a place with at one moment in another camera
  (the ground gate), unless their looks differ beyond the veto; identities with tracks near
  in time are looked at as well as the nearest in look, since only they can be at its place
  or be cannot-linked to it;
* else the identity with the nearest average-linkage distance (``2 - 2 <e, S> / n``, the
  offline linkage between one track and a group) under the threshold;
* never an identity one of whose tracks it cannot be (the same cannot-links as offline,
  computed by the same code: :func:`reidkit.association.constraints.pair_evidence`);
* else a new identity;
* a track already decided (the same key, camera and span: a client's retry) gets the
  identity it now has, and nothing changes; one of the same key and camera that overlaps it
  in time without being it is refused (:class:`TrackConflict`).

When a track joins an identity, any other identity it stands at one place with, or that is now
within the threshold of that one (and with no cannot-link between them), is merged into it:
the later id is absorbed into the earlier and a :class:`Correction` says so, so a live
consumer can relabel what it showed.

A live decision is final where an offline merge is not: a track that joins the wrong identity
stays there, while a track kept apart is joined later by a correction. So the live assigner
joins under a threshold of its own, measured on the site's recording by
:func:`calibrate_live_threshold`: of the offline threshold and stricter ones, the one under
which replaying the recording agrees best with the offline result.

Where identities live is an :class:`IdentityStore`: :class:`MemoryIdentityStore` holds them in
this process; a store over the gallery backend lets several service processes assign against
one shared state (the live endpoint's job).
"""

from __future__ import annotations

import time
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from reidkit.association.cluster import Calibration, learn_threshold
from reidkit.association.constraints import PairEvidence, Rules, TrackSet, pair_evidence
from reidkit.association.metrics import pairwise_scores
from reidkit.errors import ReidkitError
from reidkit.evaluation.cameras import standardise_by_camera

#: Identities looked at per closing track (nearest centroids first).
CANDIDATES = 16
#: How much stricter than offline the live threshold may be: each admits this share of the
#: strangers per track the offline threshold admits (:func:`calibrate_live_threshold`).
LIVE_STRICTNESS = (1.0, 1 / 2, 1 / 4, 1 / 8, 1 / 16)
#: Closing tracks a live calibration replays at most (the first to close): its cost is
#: bounded on a day of any length, and this many decisions show how a threshold behaves.
LIVE_CALIBRATION_TRACKS = 1000
#: Share of the ground gate within which a live decision trusts a shared place. Offline
#: weighs every same-place pair against all the others (closest first, cannot-links
#: refusing the rest); a track deciding alone acts only on a place that is clearly shared.
CLEAR_PLACE = 0.5


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
    reason: str  # "place", "appearance", "new", or "repeat" (the track was decided before)
    distance: float | None
    corrections: tuple[Correction, ...] = ()


class IdentityStore(Protocol):
    """Where identities (embedding sums, member tracks) live; the assigner's only state."""

    def nearest(self, embedding: np.ndarray, count: int) -> list[tuple[int, float]]:
        """Up to ``count`` (identity, average-linkage distance) pairs, nearest first."""
        ...

    def distance(self, embedding: np.ndarray, identity: int) -> float:
        """Average-linkage distance of one track's embedding to an identity."""
        ...

    def linkage(self, a: int, b: int) -> float:
        """Average-linkage distance between two identities."""
        ...

    def members(self, identity: int) -> list[ClosedTrack]: ...

    def overlapping(self, start: float, end: float) -> list[tuple[int, ClosedTrack]]:
        """(identity, track) of every stored track whose span meets ``[start, end]``."""
        ...

    def create(self, track: ClosedTrack) -> int:
        """A new identity holding ``track``; returns its id."""
        ...

    def attach(self, identity: int, track: ClosedTrack) -> None: ...

    def merge(self, kept: int, absorbed: int) -> None:
        """Move every track of ``absorbed`` into ``kept``; ``absorbed`` ceases to exist."""
        ...


class TrackConflict(ReidkitError):
    """A closing track that overlaps a decided track of the same key and camera."""


def _name(key: object) -> str:
    """A track key as a message names it: ``[camera, id]`` lists as ``id of camera camera``."""
    if isinstance(key, list | tuple) and len(key) == 2:
        return f"{key[1]} of camera {key[0]}"
    return str(key)


@dataclass
class MemoryIdentityStore:
    """Identities in this process: a growing matrix of embedding sums, member lists, and the
    tracks ordered by their end (tracks close roughly in that order) for time look-ups."""

    dim: int
    sums: np.ndarray = field(init=False)
    counts: np.ndarray = field(init=False)
    alive: np.ndarray = field(init=False)
    tracks: dict[int, list[ClosedTrack]] = field(init=False, default_factory=dict)
    size: int = field(init=False, default=0)
    _ends: list[float] = field(init=False, default_factory=list)
    _by_end: list[ClosedTrack] = field(init=False, default_factory=list)
    _owner: dict[int, int] = field(init=False, default_factory=dict)  # id(track) -> identity
    _longest: float = field(init=False, default=0.0)

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

    def distance(self, embedding: np.ndarray, identity: int) -> float:
        row = identity - 1
        return float(2.0 - 2.0 * (self.sums[row] @ embedding) / self.counts[row])

    def linkage(self, a: int, b: int) -> float:
        sa, sb = self.sums[a - 1], self.sums[b - 1]
        return float(2.0 - 2.0 * (sa @ sb) / (self.counts[a - 1] * self.counts[b - 1]))

    def members(self, identity: int) -> list[ClosedTrack]:
        return self.tracks[identity]

    def overlapping(self, start: float, end: float) -> list[tuple[int, ClosedTrack]]:
        # a track meets [start, end] when it ends after start and starts before end; no
        # stored track is longer than _longest, so only ends up to end + _longest qualify
        low = bisect_left(self._ends, start)
        high = bisect_right(self._ends, end + self._longest)
        return [(self._owner[id(t)], t) for t in self._by_end[low:high] if t.start <= end]

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
        self._owner[id(track)] = identity
        place = bisect_right(self._ends, track.end)
        self._ends.insert(place, track.end)
        self._by_end.insert(place, track)
        self._longest = max(self._longest, track.end - track.start)

    def merge(self, kept: int, absorbed: int) -> None:
        self.sums[kept - 1] += self.sums[absorbed - 1]
        self.counts[kept - 1] += self.counts[absorbed - 1]
        self.alive[absorbed - 1] = False
        moved = self.tracks.pop(absorbed)
        for track in moved:
            self._owner[id(track)] = kept
        self.tracks[kept].extend(moved)


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


@dataclass
class _Candidate:
    identity: int
    distance: float
    cannot: bool = False
    place: float = np.inf


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

    def _candidates(self, track: ClosedTrack) -> list[_Candidate]:
        """Identities near in look, and identities with tracks near in time (which alone can
        be cannot-linked to this track, or stand at its place), with what they prove."""
        horizon = self.rules.horizon
        found = {
            i: _Candidate(i, d) for i, d in self.store.nearest(track.embedding, self.candidates)
        }
        nearby: dict[int, list[ClosedTrack]] = {}
        for identity, other in self.store.overlapping(track.start - horizon, track.end + horizon):
            nearby.setdefault(identity, []).append(other)
        for identity, others in nearby.items():
            if identity not in found:
                found[identity] = _Candidate(
                    identity, self.store.distance(track.embedding, identity)
                )
            cannot, place = _relations(track, others, self.rules)
            found[identity].cannot = bool(np.any(cannot))
            closest = float(np.min(place))
            gate = self.rules.ground_gate
            found[identity].place = closest if gate and closest <= CLEAR_PLACE * gate else np.inf
        return sorted(found.values(), key=lambda c: c.distance)

    def _vetoed(self, distance: float) -> bool:
        return self.veto is not None and distance > self.veto

    def assign(self, track: ClosedTrack) -> Assignment:
        """The global id of ``track`` (now stored under it) and the corrections it caused."""
        repeated = self._decided_before(track)
        if repeated is not None:
            return Assignment(repeated, "repeat", None)
        candidates = [c for c in self._candidates(track) if not c.cannot]
        at_place = [c for c in candidates if np.isfinite(c.place) and not self._vetoed(c.distance)]
        if at_place:
            chosen, reason = min(at_place, key=lambda c: c.place), "place"
        elif candidates and candidates[0].distance < self.threshold:
            chosen, reason = candidates[0], "appearance"
        else:
            nearest = candidates[0].distance if candidates else None
            return Assignment(self.store.create(track), "new", nearest)
        self.store.attach(chosen.identity, track)
        others = [c for c in candidates if c.identity != chosen.identity]
        identity, corrections = self._merge_into(chosen.identity, others)
        return Assignment(identity, reason, chosen.distance, tuple(corrections))

    def _decided_before(self, track: ClosedTrack) -> int | None:
        """The identity already holding this very track (same key, camera and span), if any.

        A client that sends a track again because its answer never came (a timeout, a
        restart) must get the identity it got, not a new one: a second copy of a track shares
        its camera and moment with the first, so the cannot-links would keep it apart for
        good, a ghost identity that no later track could merge back. For the same reason a
        track of the same key and camera whose span overlaps a decided one's without being
        it (a tracker's update of a closed track, or a client's bug) is refused with
        :class:`TrackConflict`: one tracker id at one moment is one person."""
        for identity, other in self.store.overlapping(track.start, track.end):
            if other.key != track.key or other.camera != track.camera:
                continue
            if (other.start, other.end) == (track.start, track.end):
                return identity
            raise TrackConflict(
                f"track {_name(track.key)} was decided with the span {other.start}..{other.end} "
                f"(identity {identity}); a track of the same id overlapping it must be that "
                "track: send it again with the same start and end, or under a new track id"
            )
        return None

    def _merge_into(self, identity: int, others: list[_Candidate]) -> tuple[int, list[Correction]]:
        """Merge into ``identity`` every other candidate the new track proves to be the same
        person: one standing at its place (offline's first step), or one now within the
        threshold of it. Returns the surviving id (the earliest) and the corrections."""
        corrections: list[Correction] = []
        for other in others:
            linkage = self.store.linkage(identity, other.identity)
            same_place = np.isfinite(other.place) and not self._vetoed(linkage)
            if not same_place and linkage >= self.threshold:
                continue
            if self._conflict(identity, other.identity):
                continue
            kept, absorbed = min(identity, other.identity), max(identity, other.identity)
            self.store.merge(kept, absorbed)
            corrections.append(Correction(absorbed, kept))
            identity = kept
        return identity, corrections

    def _conflict(self, a: int, b: int) -> bool:
        """Whether any track of identity ``a`` cannot be the person of any track of ``b``."""
        horizon = self.rules.horizon
        small, large = sorted((a, b), key=lambda i: len(self.store.members(i)))
        for track in self.store.members(small):
            near = [
                other
                for identity, other in self.store.overlapping(
                    track.start - horizon, track.end + horizon
                )
                if identity == large
            ]
            if near and np.any(_relations(track, near, self.rules)[0]):
                return True
        return False


def replay(
    tracks: TrackSet, min_transit: np.ndarray, calibration: Calibration
) -> tuple[np.ndarray, np.ndarray]:
    """A site's tracks fed to a live assigner in closing order, with an offline run's
    calibration (its live threshold where it has one): the final global id of each track
    (corrections applied) and the seconds each decision took. What a site replayed through
    the live service should answer."""
    centred, _, _ = standardise_by_camera(
        tracks.embeddings, tracks.cameras, calibration.camera_means, calibration.camera_scales
    )
    if calibration.threshold is None:
        raise ValueError("a live assigner needs a distance threshold (open set 'stability')")
    own = calibration.live_threshold
    live = OnlineAssigner(
        Rules(min_transit, calibration.ground_gate),
        own if own is not None else calibration.threshold,
        veto=calibration.veto,
        store=MemoryIdentityStore(dim=centred.shape[1]),
    )
    given, renamed, seconds = {}, {}, []
    for i in np.argsort(tracks.end, kind="stable").tolist():
        closing = ClosedTrack(
            i,
            int(tracks.cameras[i]),
            float(tracks.start[i]),
            float(tracks.end[i]),
            centred[i],
            tracks.ground[i],
        )
        began = time.perf_counter()
        answer = live.assign(closing)
        seconds.append(time.perf_counter() - began)
        given[i] = answer.global_id
        renamed |= {c.absorbed: c.kept for c in answer.corrections}
    return np.array([final_identity(given[i], renamed) for i in range(len(tracks))]), np.array(
        seconds
    )


def calibrate_live_threshold(
    tracks: TrackSet,
    min_transit: np.ndarray,
    calibration: Calibration,
    evidence: PairEvidence,
    offline_labels: np.ndarray,
    strangers_per_track: float = 1.0,
) -> float | None:
    """The threshold a live assigner on this site joins a closing track under.

    Offline, average linkage merges closest first over the whole recording, so a threshold
    that admits ``strangers_per_track`` strangers per track costs little there. A live
    decision is final: a track joined to the wrong identity stays (corrections only merge
    identities), and it then blocks its own person's later tracks through the cannot-links.
    A track kept apart costs less, since a later track that shows two identities are one
    merges them. How much stricter the live threshold should be depends on the site (its
    crowd, its cameras), so it is measured on the recording itself: the thresholds admitting
    :data:`LIVE_STRICTNESS` times as many strangers are each replayed on the first
    :data:`LIVE_CALIBRATION_TRACKS` tracks to close, and the one whose identities agree best
    with the offline result (pairwise F1; on a tie the more lenient) is kept. The offline
    result is the reference: no ground truth is needed. ``evidence`` is the offline run's
    (its proven-different pairs give the thresholds). None when offline had no threshold
    learned from the site (the stability cut, or a threshold the user set, which is kept).
    """
    if calibration.threshold is None or calibration.source != "site":
        return None
    standardised, _, _ = standardise_by_camera(
        tracks.embeddings, tracks.cameras, calibration.camera_means, calibration.camera_scales
    )
    learned_on = TrackSet(tracks.cameras, tracks.start, tracks.end, standardised, tracks.ground)
    first = np.sort(np.argsort(tracks.end, kind="stable")[:LIVE_CALIBRATION_TRACKS])
    recording = TrackSet(
        tracks.cameras[first],
        tracks.start[first],
        tracks.end[first],
        tracks.embeddings[first],
        [tracks.ground[i] for i in first],
    )
    best: tuple[float, float] | None = None
    for share in LIVE_STRICTNESS:
        threshold, _ = learn_threshold(learned_on, evidence, share * strangers_per_track)
        if threshold is None:
            return None
        trial = replace(calibration, threshold=threshold, live_threshold=None)
        live, _ = replay(recording, min_transit, trial)
        agreement = pairwise_scores(offline_labels[first], live)["pair_F1"]
        if best is None or agreement > best[0]:
            best = (agreement, threshold)
    return None if best is None else best[1]


def final_identity(identity: int, renamed: dict[int, int]) -> int:
    """The identity ``identity`` became after the corrections ``renamed`` (absorbed -> kept)."""
    while identity in renamed:
        identity = renamed[identity]
    return identity
