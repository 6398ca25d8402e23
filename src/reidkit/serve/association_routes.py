"""Live association routes: a closing track in, its global id out; corrections by sequence.

``POST /v1/tracks`` (``write`` scope, like every write) takes one closed track of a camera:
its start and end, and either the embeddings its pipeline already computed (one row per
detection, as DeepStream sends them) or crops as base64 images, which the service embeds with
its model. The rows are pooled (the mean of unit rows, as offline association pools a track's
crops) and :class:`~reidkit.association.shared.LiveAssociation` answers the global id.
``GET /v1/corrections?since=<seq>`` (``search`` scope) lists the merges (``absorbed`` ->
``kept``) logged after ``seq``, so a consumer polling it relabels what it showed.

Identities live in the gallery's storage (the service's ``gallery``), so several service
processes assign against one state; the calibration is an offline ``reidkit associate`` run's
``calibration.json`` (``serve.association_calibration``). The live state opens on the first
request, on one thread of its own (decisions are serialised, as they must be); tracks that
arrive while it decides are decided next, together, with one durable commit of the log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import pathlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, Strict
from starlette.concurrency import run_in_threadpool

from reidkit.association.features import pool
from reidkit.association.online import ClosedTrack
from reidkit.association.shared import (
    LOG_NAME,
    Decision,
    LiveAssociation,
    LiveAssociationError,
    load_calibration,
)
from reidkit.config.times import within_clock
from reidkit.data.images import decode_rgb
from reidkit.errors import ImageRefused, ReidkitError
from reidkit.gallery.factory import open_backend
from reidkit.gallery.front import Gallery
from reidkit.serve.deps import Services, ServicesDep, require
from reidkit.serve.gallery_access import as_utc

#: Most embedding rows one track may bring (a minute of a 25 fps camera is 1,500).
MAX_TRACK_ROWS = 4096
#: Seconds a ground row's time may lie outside its track's span (float rounding of ISO times).
GROUND_TIME_SLACK = 1e-3

router = APIRouter(tags=["association"])

#: A JSON number and nothing else: lax validation reads ``true`` as 1.0 and ``"0.5"`` as 0.5,
#: and a pipeline sending booleans or text would be embedded as if it had sent numbers.
Number = Annotated[float, Strict()]


class ClosedTrackIn(BaseModel):
    """One closed track of one camera."""

    model_config = ConfigDict(extra="forbid")

    camera: str = Field(min_length=1, max_length=128, description="Camera name in site.yaml.")
    track_id: str = Field(min_length=1, max_length=128, description="The tracker's local id.")
    start: datetime | Number = Field(description="First sighting: ISO 8601 or unix seconds.")
    end: datetime | Number = Field(description="Last sighting: ISO 8601 or unix seconds.")
    embeddings: list[list[Number]] | None = Field(
        None, max_length=MAX_TRACK_ROWS, description="The pipeline's embeddings, one per row."
    )
    crops: list[str] | None = Field(
        None, description="Crops as base64 JPEG/PNG (instead of embeddings): the model embeds."
    )
    ground: list[tuple[Number, Number, Number]] | None = Field(
        None,
        max_length=MAX_TRACK_ROWS,
        description="Ground-plane positions (time, x, y) in the site's homography units.",
    )


class CorrectionOut(BaseModel):
    seq: int = Field(description="Position in the identity log (poll corrections after it).")
    absorbed: int = Field(description="This global id ...")
    kept: int = Field(description="... is the same person as this one: relabel it.")


class TrackAnswer(BaseModel):
    global_id: int
    reason: str = Field(
        description="'place', 'appearance', 'new', or 'repeat' (this very track was decided "
        "before: a retry gets the identity it has now, and nothing is logged)."
    )
    distance: float | None = Field(description="Distance to the identity chosen (or nearest).")
    seq: int = Field(description="The identity log's position after this decision.")
    corrections: list[CorrectionOut]


class CorrectionsAnswer(BaseModel):
    corrections: list[CorrectionOut]
    last_seq: int = Field(description="Pass it as since= next time.")


class IdentityAnswer(BaseModel):
    global_id: str | None = Field(description="null: the crop has no global id yet.")
    cameras: list[int] = Field(description="Every camera the gallery holds this person in.")
    start: datetime | None
    end: datetime | None
    crops: int


class _Live:
    """The live state of one app: its own thread, gallery handle and association.

    Closing tracks wait in arrival order; the association thread takes every track waiting
    when it is free and decides them in one group (:meth:`LiveAssociation.decide`: one durable
    commit), so a burst, or a slow disk flush, does not queue one flush per track behind it.
    Each answer is sent only once its decision is in the log."""

    def __init__(self, services: Services) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reidkit-associate")
        self.services = services
        self.association: LiveAssociation | None = None
        self.gallery: Gallery | None = None
        self._waiting: deque[tuple[Callable[[LiveAssociation], ClosedTrack], Future[Decision]]]
        self._waiting = deque()

    def _gallery(self) -> Gallery:
        if self.gallery is None:
            self.gallery = Gallery(open_backend(self.services.settings.gallery, create=True))
        return self.gallery

    def _open(self) -> LiveAssociation:
        if self.association is None:
            settings = self.services.settings
            if settings.association_calibration is None:
                raise LiveAssociationError(
                    "live association is off: set serve.association_calibration to an "
                    "associate run's calibration.json"
                )
            where = settings.association_calibration
            try:
                calibration = load_calibration(where)
            except LiveAssociationError as exc:  # clients get the setting, not a server path
                message = str(exc).replace(
                    str(pathlib.Path(where)), "serve.association_calibration"
                )
                raise LiveAssociationError(message) from None
            self.association = LiveAssociation(
                self._gallery().backend.event_log(LOG_NAME), calibration, self.services.model.dim
            )
        return self.association

    async def decide(self, track: Callable[[LiveAssociation], ClosedTrack]) -> Decision:
        """The decision on ``track(live association)``, in arrival order, in the next group."""
        done: Future[Decision] = Future()
        self._waiting.append((track, done))  # on the event loop: arrival order is kept
        self.executor.submit(self._decide_waiting)
        try:
            return await asyncio.wrap_future(done)
        except ReidkitError as exc:
            raise HTTPException(422, str(exc)) from None

    def _decide_waiting(self) -> None:
        """On the association thread: decide every track waiting now, as one group."""
        batch = []
        while self._waiting:
            batch.append(self._waiting.popleft())
        if not batch:
            return  # an earlier call took these tracks into its group
        try:
            association = self._open()
        except Exception as exc:
            for _, done in batch:
                _settle(done, exc)
            return
        tracks, waiting = [], []
        for make_track, done in batch:
            try:
                tracks.append(make_track(association))
                waiting.append(done)
            except Exception as exc:  # a track that does not fit the site: its own 422
                _settle(done, exc)
        outcomes = association.decide(tracks) if tracks else []
        for done, outcome in zip(waiting, outcomes, strict=True):
            _settle(done, outcome)

    async def call(self, work: Any) -> Any:
        """``work(live association)`` on this app's association thread."""
        return await self._run(lambda: work(self._open()))

    async def in_gallery(self, work: Any) -> Any:
        """``work(gallery front)`` on the same thread (identity look-ups need no calibration)."""
        return await self._run(lambda: work(self._gallery()))

    async def _run(self, work: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, work)
        except ReidkitError as exc:
            raise HTTPException(422, str(exc)) from None


def _settle(done: Future[Decision], outcome: Decision | Exception) -> None:
    """Hand a waiting request its decision or error (a request whose client gave up was
    cancelled: its track is decided all the same, and nobody is told)."""
    try:
        if isinstance(outcome, Exception):
            done.set_exception(outcome)
        else:
            done.set_result(outcome)
    except InvalidStateError:
        pass


async def _live(request: Request, services: ServicesDep) -> _Live:
    # async: resolved on the event loop, so tracks reach the queue in the order they arrived
    state = request.app.state
    if getattr(state, "association_live", None) is None:
        state.association_live = _Live(services)
    return state.association_live


LiveDep = Annotated[_Live, Depends(_live)]


def _seconds(moment: datetime | float) -> float:
    aware = as_utc(moment) if isinstance(moment, datetime) else None
    seconds = aware.timestamp() if aware is not None else float(moment)  # type: ignore[arg-type]
    try:
        return within_clock(seconds)
    except ValueError as exc:
        raise HTTPException(422, f"start and end: {exc}") from None


def _rows(rows: list[list[float]], dim: int) -> np.ndarray:
    if not rows or any(len(row) != dim for row in rows):  # ragged rows make no matrix
        raise HTTPException(422, f"embeddings must be rows of {dim} numbers (the served model's)")
    matrix = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1)
    if not np.isfinite(norms).all() or (norms == 0).any():
        raise HTTPException(422, "embeddings must be finite and not all zeros")
    return matrix


def _ground(
    rows: list[tuple[float, float, float]] | None, start: float, end: float
) -> np.ndarray | None:
    """The track's (time, x, y) rows, or a 422 for rows that would mislead the place rules.

    Positions are compared at the moments two tracks share by interpolating each track's
    rows in time, which silently gives nonsense for rows out of time order; and a row outside
    the track's own span places the person where the track never saw them. Either could join
    two people by place (a merge no later track undoes), so they are refused, not repaired.
    Times may stray from ``start``..``end`` by a millisecond: ISO times and float seconds
    round differently."""
    if not rows:
        return None
    ground = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(ground).all():
        raise HTTPException(422, "ground positions must be finite")
    times = ground[:, 0]
    if np.any(np.diff(times) < 0):
        raise HTTPException(422, "ground rows must be in time order (their first column)")
    if times[0] < start - GROUND_TIME_SLACK or times[-1] > end + GROUND_TIME_SLACK:
        raise HTTPException(
            422, "ground times must lie within the track's start..end (unix seconds)"
        )
    return ground


async def _embed_crops(services: Services, crops: list[str]) -> np.ndarray:
    limit = services.settings.max_images
    if not crops or len(crops) > limit:
        raise HTTPException(413 if crops else 422, f"send 1 to {limit} crops per track")

    def prepare() -> np.ndarray:
        images = []
        for number, text in enumerate(crops, 1):
            try:
                data = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise HTTPException(422, f"crop {number} is not base64") from None
            images.append(
                decode_rgb(data, f"crop {number}", max_pixels=services.settings.max_image_pixels)
            )
        return services.model.preprocess(images)

    try:
        batch = await run_in_threadpool(prepare)
    except ImageRefused as exc:
        raise HTTPException(422, str(exc)) from None
    return await services.model.embed(batch)


@router.post("/v1/tracks")
async def close_track(
    services: ServicesDep,
    live: LiveDep,
    caller: Annotated[Any, Depends(require("write"))],
    track: ClosedTrackIn,
) -> TrackAnswer:
    """The global id of a track as it closes (and the corrections it caused)."""
    if (track.embeddings is None) == (track.crops is None):
        raise HTTPException(422, "send either embeddings or crops (exactly one)")
    start, end = _seconds(track.start), _seconds(track.end)
    if track.embeddings is not None:
        rows = _rows(track.embeddings, services.model.dim)
    else:
        rows = await _embed_crops(services, track.crops or [])
    embedding = pool(rows, np.ones(len(rows), dtype=np.float32))
    if np.linalg.norm(embedding) < 0.5:  # pool gives a zero vector when the unit rows sum to 0
        raise HTTPException(422, "embeddings cancel out (their mean is zero): no look to match")
    ground = _ground(track.ground, start, end)
    decision = await live.decide(
        lambda association: association.track(
            track.camera, track.track_id, start, end, embedding, ground
        )
    )
    answer = decision.assignment
    return TrackAnswer(
        global_id=answer.global_id,
        reason=answer.reason,
        distance=answer.distance,
        seq=decision.seq,
        corrections=[
            CorrectionOut(seq=decision.seq, absorbed=c.absorbed, kept=c.kept)
            for c in answer.corrections
        ],
    )


@router.get("/v1/corrections")
async def corrections(
    live: LiveDep,
    caller: Annotated[Any, Depends(require("search"))],
    since: Annotated[int, Query(ge=0, le=2**62, description="Last seq seen (0: all).")] = 0,
) -> CorrectionsAnswer:
    """Merges (absorbed -> kept) logged after ``since``, oldest first.

    A ``since`` past the log's end is a 422, not an empty answer: echoed back as
    ``last_seq``, it would have the consumer skip every correction until the log caught up
    with it (a cursor from another gallery, or a log restored from a backup)."""

    def poll(association: LiveAssociation) -> tuple[list[dict[str, int]], int]:
        found, last = association.corrections(since)
        if last == since > 0 and not association.log.read(since - 1):  # no record ``since``
            raise HTTPException(
                422,
                f"since={since} is past the end of the identity log (a cursor from another "
                "gallery, or a log restored from a backup); poll again from since=0",
            )
        return found, last

    found, last = await live.call(poll)
    return CorrectionsAnswer(corrections=[CorrectionOut(**c) for c in found], last_seq=last)


@router.get("/v1/crops/{crop_id}/identity")
async def crop_identity(
    live: LiveDep,
    caller: Annotated[Any, Depends(require("search"))],
    crop_id: Annotated[int, Path(ge=0, le=2**62, description="A hit's crop_id.")],
) -> IdentityAnswer:
    """The person a crop belongs to (``reidkit associate`` wrote it): global id, every camera
    and the time span the gallery holds them in (``global_id`` null: not associated yet)."""

    def look_up(gallery: Gallery) -> IdentityAnswer:
        global_id = gallery.identities([crop_id]).get(crop_id)
        if global_id is None:
            return IdentityAnswer(global_id=None, cameras=[], start=None, end=None, crops=0)
        crops = gallery.members({global_id})[global_id]
        times = [c.meta.timestamp for c in crops]
        return IdentityAnswer(
            global_id=global_id,
            cameras=sorted({c.meta.camera for c in crops}),
            start=datetime.fromtimestamp(min(times), tz=timezone.utc),
            end=datetime.fromtimestamp(max(times), tz=timezone.utc),
            crops=len(crops),
        )

    return await live.in_gallery(look_up)
