"""Live association against one shared state: identities kept in the gallery's storage.

:class:`SharedIdentityStore` is the :class:`~reidkit.association.online.IdentityStore` of the
live service. Its state is an append-only log in the gallery backend
(:meth:`~reidkit.gallery.store.Backend.event_log`: a SQLite table beside an embedded gallery,
a collection on Milvus) of what the assigner did: ``create`` (a new identity from a track),
``attach`` (a track joins an identity) and ``merge`` (one identity absorbed into another).
Each process mirrors the log in a :class:`~reidkit.association.online.MemoryIdentityStore`
and replays what other processes appended before it decides, inside the log's exclusive
section, so several service processes assign against one state, and identity numbers are
the same in every process (they are given in log order). The log's numbers are also the
sequence numbers of corrections (``GET /v1/corrections?since=``).

:class:`LiveAssociation` is what the service calls: a closing track of a named camera with
its pooled embedding in, its global id (and any corrections) out, under the calibration an
offline ``reidkit associate`` run learned on the same site (``calibration.json``). Tracks that
arrive together are decided in order in one exclusive section and made durable by one commit
(group commit), so a burst does not queue behind one disk flush per track; a decision is
answered only once it is in the log.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reidkit.association.constraints import Rules
from reidkit.association.online import (
    Assignment,
    ClosedTrack,
    MemoryIdentityStore,
    OnlineAssigner,
)
from reidkit.errors import ReidkitError
from reidkit.evaluation.cameras import SITE, standardise_by_camera
from reidkit.gallery.store import EventLog

#: The event log of live identities in a gallery's storage.
LOG_NAME = "live_identities"


class LiveAssociationError(ReidkitError):
    """A calibration file that cannot drive live association, or a track that does not fit."""


def _encode(track: ClosedTrack) -> dict[str, Any]:
    return {
        "key": track.key,
        "camera": track.camera,
        "start": track.start,
        "end": track.end,
        "embedding": base64.b64encode(track.embedding.astype(np.float32).tobytes()).decode(),
        "ground": None if track.ground is None else track.ground.tolist(),
    }


def _decode(record: dict[str, Any]) -> ClosedTrack:
    ground = record["ground"]
    return ClosedTrack(
        key=record["key"],
        camera=int(record["camera"]),
        start=float(record["start"]),
        end=float(record["end"]),
        embedding=np.frombuffer(base64.b64decode(record["embedding"]), dtype=np.float32),
        ground=None if ground is None else np.asarray(ground, dtype=np.float64),
    )


class SharedIdentityStore:
    """Identities in an :class:`~reidkit.gallery.store.EventLog`, mirrored in memory (see the
    module docstring). Reads answer from the mirror; writes change the mirror and are queued
    until :meth:`commit` appends them. Call :meth:`sync` and :meth:`commit` inside the log's
    ``exclusive()`` section."""

    def __init__(self, log: EventLog, dim: int) -> None:
        self.log = log
        self.mirror = MemoryIdentityStore(dim=dim)
        self.seen = 0
        self._pending: list[dict[str, Any]] = []

    # reads: the mirror's
    def nearest(self, embedding: np.ndarray, count: int) -> list[tuple[int, float]]:
        return self.mirror.nearest(embedding, count)

    def distance(self, embedding: np.ndarray, identity: int) -> float:
        return self.mirror.distance(embedding, identity)

    def linkage(self, a: int, b: int) -> float:
        return self.mirror.linkage(a, b)

    def members(self, identity: int) -> list[ClosedTrack]:
        return self.mirror.members(identity)

    def overlapping(self, start: float, end: float) -> list[tuple[int, ClosedTrack]]:
        return self.mirror.overlapping(start, end)

    # writes: the mirror's, queued for the log
    def create(self, track: ClosedTrack) -> int:
        identity = self.mirror.create(track)
        self._pending.append({"op": "create", "identity": identity, "track": _encode(track)})
        return identity

    def attach(self, identity: int, track: ClosedTrack) -> None:
        self.mirror.attach(identity, track)
        self._pending.append({"op": "attach", "identity": identity, "track": _encode(track)})

    def merge(self, kept: int, absorbed: int) -> None:
        self.mirror.merge(kept, absorbed)
        self._pending.append({"op": "merge", "kept": kept, "absorbed": absorbed})

    def sync(self) -> None:
        """Replay what was appended since this mirror last saw the log."""
        if self._pending:
            raise RuntimeError("sync with uncommitted changes")  # a bug, not bad input
        for seq, record in self.log.read(self.seen):
            op = record["op"]
            if op == "create":
                made = self.mirror.create(_decode(record["track"]))
                if made != record["identity"]:
                    raise LiveAssociationError(
                        f"live identity log record {seq} made identity {made}, the log says "
                        f"{record['identity']}; the log is damaged: restore it from a backup"
                    )
            elif op == "attach":
                self.mirror.attach(int(record["identity"]), _decode(record["track"]))
            elif op == "merge":
                self.mirror.merge(int(record["kept"]), int(record["absorbed"]))
            self.seen = seq

    def commit(self) -> int:
        """Append the queued changes; returns the log's last number."""
        if self._pending:
            self.seen = self.log.append(self._pending)
            self._pending = []
        return self.seen

    def rollback(self) -> None:
        """Forget the queued changes and rebuild the mirror from the log (after a failure)."""
        self._pending = []
        self.mirror = MemoryIdentityStore(dim=self.mirror.dim)
        self.seen = 0
        self.sync()


@dataclass(frozen=True)
class LiveCalibration:
    """What the live assigner takes from an offline run's ``calibration.json``."""

    cameras: tuple[str, ...]
    threshold: float
    veto: float | None
    ground_gate: float | None
    camera_means: dict[int, np.ndarray]
    min_transit: np.ndarray
    camera_scales: dict[int, np.ndarray]

    @property
    def dim(self) -> int | None:
        return next((len(m) for m in self.camera_means.values()), None)


def load_calibration(path: str | Path) -> LiveCalibration:
    """Read ``calibration.json`` (written by ``reidkit associate``); one line if it cannot
    drive a live assigner."""
    path = Path(path)
    fix = "point serve.association_calibration at an associate run's calibration.json"
    try:
        record = json.loads(path.read_text())
        cameras = tuple(str(c) for c in record["cameras"])
        # the live assigner's own where the run measured one (see calibrate_live_threshold)
        threshold = _optional_number(record.get("live_threshold"))
        if threshold is None:
            threshold = _optional_number(record["threshold"])
        veto = _optional_number(record.get("veto"))
        ground_gate = _optional_number(record.get("ground_gate"))
        means = {
            cameras.index(name): np.asarray(mean, dtype=np.float32)
            for name, mean in record["camera_means"].items()
        }
        scales = {  # absent from calibrations written when cameras were only centred
            cameras.index(name): np.asarray(scale, dtype=np.float32)
            for name, scale in record.get("camera_scales", {}).items()
        }
        for key, table in (("site_mean", means), ("site_scale", scales)):
            if record.get(key) is not None:  # absent before small cameras took the site's
                table[SITE] = np.asarray(record[key], dtype=np.float32)
        transit = np.asarray(record["min_transit_s"], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LiveAssociationError(f"{path}: not a calibration.json ({exc}); {fix}") from None
    vectors = [*means.values(), *scales.values()]
    if (
        len({vector.shape for vector in vectors}) > 1
        or any(vector.ndim != 1 or not np.isfinite(vector).all() for vector in vectors)
        or any((scale <= 0).any() for scale in scales.values())
    ):
        raise LiveAssociationError(
            f"{path}: its camera and site statistics are not finite vectors of one length "
            f"(with positive spreads); {fix}"
        )
    if transit.shape != (len(cameras), len(cameras)):
        raise LiveAssociationError(f"{path}: min_transit_s is not a camera x camera table; {fix}")
    if threshold is None:
        raise LiveAssociationError(
            f"{path}: this run had no distance threshold (open set 'stability': no track pairs "
            "the site proves different); rerun reidkit associate with associate.open_set: site "
            "or associate.match_threshold"
        )
    if not all(np.isfinite(v) for v in (threshold, veto, ground_gate) if v is not None):
        raise LiveAssociationError(f"{path}: a threshold, veto or ground gate is not finite; {fix}")
    return LiveCalibration(
        cameras=cameras,
        threshold=threshold,
        veto=veto,
        ground_gate=ground_gate,
        camera_means=means,
        min_transit=transit,
        camera_scales=scales,
    )


def _optional_number(value: object) -> float | None:
    """``value`` as a float, None as None; anything else raises ValueError or TypeError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{value!r} is not a number")
    return float(value)


@dataclass(frozen=True)
class Decision:
    """A closing track's global id, the corrections it caused, and the log's number after it."""

    assignment: Assignment
    seq: int


class LiveAssociation:
    """Closing tracks in, global ids out, against the identities in ``log`` (see the module
    docstring). Not thread-safe by itself: callers serialise calls (the service runs them on
    one thread); processes are serialised by the log."""

    def __init__(self, log: EventLog, calibration: LiveCalibration, dim: int) -> None:
        if calibration.dim is not None and calibration.dim != dim:
            raise LiveAssociationError(
                f"the calibration's camera means have {calibration.dim} dimensions, the "
                f"embeddings {dim}; calibrate with the model that serves"
            )
        self.calibration = calibration
        self.log = log
        self.store = SharedIdentityStore(log, dim)
        self.assigner = OnlineAssigner(
            Rules(calibration.min_transit, calibration.ground_gate),
            calibration.threshold,
            veto=calibration.veto,
            store=self.store,
        )
        self._camera = {name: n for n, name in enumerate(calibration.cameras)}

    def camera_number(self, name: str) -> int:
        if name not in self._camera:
            raise LiveAssociationError(
                f"camera '{name}' is not in the calibrated site (cameras: "
                f"{', '.join(self.calibration.cameras)}); calibrate on a site that has it"
            )
        return self._camera[name]

    def track(
        self,
        camera: str,
        track_id: str,
        start: float,
        end: float,
        embedding: np.ndarray,
        ground: np.ndarray | None = None,
    ) -> ClosedTrack:
        """A closing track as :meth:`decide` takes it, from its pooled unit ``embedding`` (raw,
        as the model gives it: the camera's mean and spread are taken out here, as offline);
        one line if it does not fit the calibrated site."""
        number = self.camera_number(camera)
        if end < start:
            raise LiveAssociationError(f"track {track_id} of camera {camera} ends before it starts")
        centred, _, _ = standardise_by_camera(
            embedding[None].astype(np.float32),
            np.array([number]),
            self.calibration.camera_means,
            self.calibration.camera_scales,
        )
        return ClosedTrack([camera, track_id], number, start, end, centred[0], ground)

    def decide(self, tracks: Sequence[ClosedTrack]) -> list[Decision | Exception]:
        """The global ids of ``tracks``, decided in their order as one group (see
        :meth:`_decide_group`). If the group fails, nothing of it is kept and each track is
        decided alone, so a track that cannot be decided fails alone: its error is returned
        in its place."""
        try:
            return list(self._decide_group(tracks))
        except Exception as exc:
            if len(tracks) == 1:
                return [exc]
        outcomes: list[Decision | Exception] = []
        for track in tracks:
            try:
                outcomes += self._decide_group([track])
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def _decide_group(self, tracks: Sequence[ClosedTrack]) -> list[Decision]:
        """Decisions in one exclusive section of the log, made durable by its one commit
        (group commit: a burst of tracks costs one write to disk, not one each). Either every
        decision is in the log when this returns, or none is and the error is raised (the
        mirror is then rebuilt from the log)."""
        decisions = []
        try:
            with self.log.exclusive():
                self.store.sync()
                for track in tracks:
                    assignment = self.assigner.assign(track)
                    decisions.append(Decision(assignment, self.store.commit()))
        except BaseException:
            # after the log's own rollback, so the mirror holds exactly what the log kept
            self.store.rollback()
            raise
        return decisions

    def corrections(self, since: int) -> tuple[list[dict[str, int]], int]:
        """Merges logged after ``since`` (``seq``, ``absorbed``, ``kept``) and the log's end."""
        found, last = [], since
        for seq, record in self.log.read(since):
            last = seq
            if record["op"] == "merge":
                found.append({"seq": seq, "absorbed": record["absorbed"], "kept": record["kept"]})
        return found, last
