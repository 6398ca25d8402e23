"""The gallery's contract: its records, and the narrow :class:`Backend` every storage implements.

A gallery is a site's crops, each stored as one L2-normalised embedding plus its metadata
(crop path, camera, time, track, optional site/zone and a JPEG thumbnail). Everything above the
storage (the ``gallery`` actions, the HTTP service) talks to the :class:`~reidkit.gallery.front.
Gallery` front, which validates, normalises, checks the model's identity, decides match or
unknown and writes the audit log once for every backend; a backend only stores rows and finds
neighbours (in the spirit of faiss, where ``IndexIDMap`` wraps a thin index). A site moves from
the embedded folder to a Milvus fleet by changing one URI (:mod:`reidkit.gallery.factory`).

This module imports no backend, and no backend imports the factory: the floors are
``store`` <- backends <- ``factory``, and ``store`` <- ``front`` <- ``factory``.

Distances are the squared Euclidean distance between L2-normalised embeddings (``2 - 2 cos``,
in ``[0, 4]``), the same figure :func:`reidkit.evaluation.metrics.pairwise_distance` gives to
evaluation, so a threshold calibrated by ``evaluate`` applies to a gallery unchanged.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

import numpy as np

from reidkit.errors import ReidkitError

Decision = Literal["match", "unknown"]


class GalleryError(ReidkitError):
    """A gallery is unreadable, from a newer reidkit, filled by another model, or misused."""


@dataclass(slots=True)
class CropMeta:
    """What a gallery keeps about one crop besides its embedding (not frozen: a frozen
    dataclass costs three times as much to build, and a search builds one per hit).

    ``path`` identifies the crop: adding a path that is already stored is a no-op, which is
    what makes an interrupted ``add`` safe to rerun. ``timestamp`` is unix seconds (UTC).
    """

    path: str
    camera: int
    timestamp: float
    track_id: str | None = None
    site: str | None = None
    zone: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Hit:
    """One search result: the stored crop, its distance to the query, and the decision.

    ``decision`` is ``"match"`` when ``distance <= threshold`` (the calibrated
    ``match_threshold`` of the gallery's model card, or the one passed to ``search``),
    ``"unknown"`` above it, and ``None`` when no threshold is known.
    """

    crop_id: int
    distance: float
    meta: CropMeta
    decision: Decision | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "crop_id": self.crop_id,
            "distance": self.distance,
            "decision": self.decision,
            **self.meta.to_dict(),
        }


@dataclass(slots=True)
class IdentityHit:
    """One person among a query's hits: the hits of crops that carry one global identity
    (nearest first), and where and when the gallery saw that identity (all its crops, not
    only the hits). ``global_id`` is ``None`` for a hit whose crop has no identity yet."""

    global_id: str | None
    hits: list[Hit]
    cameras: tuple[int, ...]
    start: float
    end: float
    crops: int

    def to_dict(self) -> dict[str, Any]:
        best = self.hits[0]
        return {
            "global_id": self.global_id,
            "distance": best.distance,
            "decision": best.decision,
            "cameras": list(self.cameras),
            "start": self.start,
            "end": self.end,
            "crops": self.crops,
            "hits": [h.to_dict() for h in self.hits],
        }


@dataclass(frozen=True, slots=True)
class ForgottenIdentity:
    """What forgetting one global identity removed: crops, and the cameras and tracks they
    were in."""

    global_id: str
    removed: int
    cameras: tuple[int, ...]
    tracks: tuple[str, ...]


@dataclass(frozen=True)
class GalleryStats:
    """What ``reidkit gallery stats`` reports; times are unix seconds, ``None`` when empty."""

    size: int
    cameras: tuple[int, ...]
    start: float | None
    end: float | None
    index_kind: str
    backend: str
    card: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class CropFilter:
    """Which stored crops a search looks at: every condition given holds (``None``: any).

    ``cameras``: the crop's camera is one of these; ``start`` / ``end``: its timestamp (unix
    seconds) is in ``[start, end]``. A new condition (e.g. a global identity) is a new field
    here and a clause in each backend's ``nearest`` and ``count``.
    """

    cameras: tuple[int, ...] | None = None
    start: float | None = None
    end: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "cameras": None if self.cameras is None else sorted(self.cameras),
            "start": self.start,
            "end": self.end,
        }


@dataclass(frozen=True, slots=True)
class Selection:
    """Crops to delete: every crop that matches ANY of the fields.

    ``before`` is an absolute cutoff (unix seconds: crops taken earlier go); an age such as
    "30 days" is turned into it by the caller.
    """

    crop_ids: tuple[int, ...] = ()
    paths: tuple[str, ...] = ()
    track_ids: tuple[str, ...] = ()
    before: float | None = None

    def is_empty(self) -> bool:
        return not (self.crop_ids or self.paths or self.track_ids) and self.before is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "track_ids": list(self.track_ids),
            "paths": list(self.paths),
            "crop_ids": list(self.crop_ids),
            "before": self.before,
        }


@dataclass(frozen=True, slots=True)
class Settings:
    """What a gallery records about itself: the card of the model whose embeddings fill it
    (``None`` until the first add), their width, and the layout version of its storage."""

    card: dict[str, Any] | None
    dim: int | None
    format_version: int


@dataclass(frozen=True, slots=True)
class Summary:
    """A backend's part of :class:`GalleryStats`."""

    size: int
    cameras: tuple[int, ...]
    start: float | None
    end: float | None
    index_kind: str


@dataclass(frozen=True, slots=True)
class StoredCrop:
    """One stored row as :meth:`Backend.fetch` returns it."""

    crop_id: int
    meta: CropMeta
    thumbnail: bytes | None = None


class EventLog(Protocol):
    """An append-only log of JSON records in a gallery's storage, numbered in order (from 1):
    the shared state of live association (:mod:`reidkit.association.shared`), which every
    service process replays. ``exclusive`` holds off other writers (other processes too,
    where the storage can) between reading the log's end and appending to it."""

    def exclusive(self) -> AbstractContextManager[None]: ...

    def append(self, records: Sequence[dict[str, Any]]) -> int:
        """Append ``records`` after the last one; returns the number of the last."""
        ...

    def read(self, after: int) -> list[tuple[int, dict[str, Any]]]:
        """(number, record) of every record numbered above ``after``, in order."""
        ...

    def close(self) -> None: ...


class Backend(Protocol):
    """Where a gallery's rows live. The :class:`~reidkit.gallery.front.Gallery` front hands it
    only valid input: float32 ``[N, D]`` rows that are L2-normalised and finite, of the
    gallery's width, with one :class:`CropMeta` (finite timestamp) per row and ``k >= 1``.

    A backend implements every method without a body below; ``optimise`` and the four
    version methods (for ``reidkit gallery rebuild``) have defaults a backend may keep.
    """

    #: Short name for stats and messages (``embedded``, ``milvus``).
    kind: str
    #: Where the gallery is (its URI), for messages.
    location: str

    def settings(self) -> Settings:
        """The recorded settings, as committed now (another process may have changed them)."""
        ...

    def record_card(self, card: dict[str, Any]) -> None:
        """Record the model card of the gallery's embeddings (once, before the first insert)."""
        ...

    def insert(
        self, vectors: np.ndarray, metas: Sequence[CropMeta], thumbnails: Sequence[bytes | None]
    ) -> int:
        """Store the crops whose path is not stored yet (the first of repeated paths); returns
        how many were stored. The first insert fixes the gallery's width (``settings().dim``).
        All-or-nothing where the storage allows it."""
        ...

    def contains(self, paths: Sequence[str]) -> list[bool]:
        """Whether each crop path is stored."""
        ...

    def nearest(
        self, queries: np.ndarray, k: int, where: CropFilter | None, exact: bool
    ) -> list[list[Hit]]:
        """Per query, the (up to) ``k`` stored crops nearest to it among those ``where``
        accepts, nearest first, as hits whose distance is ``2 - 2 cos`` (unclamped) and whose
        decision is left to the front (``None``): a search builds no other object per hit.
        ``exact`` asks for an exhaustive search (no ANN index)."""
        ...

    def count(self, where: CropFilter | None = None) -> int:
        """How many stored crops ``where`` accepts (all of them for ``None``)."""
        ...

    def crop_ids(self) -> np.ndarray:
        """Every stored crop id (int64)."""
        ...

    def fetch(self, crop_ids: Sequence[int], *, thumbnails: bool = False) -> list[StoredCrop]:
        """The stored rows among ``crop_ids`` (unknown ids are left out), with their JPEG
        thumbnails if asked."""
        ...

    def vectors(self, crop_ids: Sequence[int]) -> np.ndarray:
        """The stored embeddings of these crops, ``[len, D]`` float32, in order; an unknown id
        is a :class:`GalleryError`."""
        ...

    def delete(self, selection: Selection) -> int:
        """Remove the selected crops from every file the backend keeps (not only hide them);
        returns how many were removed."""
        ...

    def label_identities(self, labels: dict[int, str]) -> int:
        """Record each stored crop's global identity (``crop id -> global id``, replacing an
        earlier one; ids not stored are skipped); returns how many were labelled. A deleted
        crop's label goes with it."""
        ...

    def identities(self, crop_ids: Sequence[int] | None = None) -> dict[int, str]:
        """The global identity of each labelled crop among ``crop_ids`` (every labelled crop
        for ``None``)."""
        ...

    def summary(self) -> Summary: ...

    def append_audit(self, record: str, *, durable: bool) -> None:
        """Append one record (a JSON object's text, one line) to the gallery's audit log,
        visible to every reader once this returns (a process killed next keeps it); flushed to
        the disk too if ``durable`` (the front asks it for everything but searches)."""
        ...

    def audit_records(self) -> list[dict[str, Any]]:
        """Every audit record, oldest first."""
        ...

    def close(self) -> None: ...

    def event_log(self, name: str) -> EventLog:
        """The gallery's append-only log called ``name`` (created empty on first use)."""
        ...

    # ------------------------------------------------------------- optional steps
    def optimise(self) -> None:
        """Bring the search structures up to date after a bulk add (e.g. build an ANN index).
        Default: nothing to do."""
        return None

    def staging(self, create: bool) -> Backend | None:
        """The gallery's next version (what ``gallery rebuild`` fills while this one serves):
        the one left by an interrupted rebuild, a new empty one if ``create``, else ``None``."""
        if create:
            raise GalleryError(
                f"the {self.kind} gallery backend cannot hold two versions; rebuild into a new "
                "gallery.uri instead"
            )
        return None

    def discard_staging(self) -> None:
        """Remove the next version and everything in it."""
        return None

    def state(self) -> Hashable:
        """A token that changes whenever a crop is stored or deleted (by any process)."""
        return None

    def promote(self, staged: Backend, expected_state: Hashable) -> bool:
        """Make ``staged`` the gallery, atomically, if ``state()`` still equals
        ``expected_state`` (else change nothing and return ``False``); then remove this
        version's files."""
        raise GalleryError(f"the {self.kind} gallery backend cannot switch versions")
