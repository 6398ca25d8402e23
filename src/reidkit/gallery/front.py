"""The :class:`Gallery` front: what every gallery does, whatever stores its rows.

In the spirit of faiss's wrappers (``IndexIDMap`` around a thin index), the front does once,
for every :class:`~reidkit.gallery.store.Backend`: input validation (shapes, NaN/inf, ``k``,
dimension, cameras of a filter), L2 normalisation, the model identity check, the match/unknown
decision against the threshold, and the audit record of each add/search/forget with the
operator passed to that very call. A backend stores rows and finds neighbours, nothing else.

The per-query path works in NumPy float32: a torch round trip costs about 50 microseconds per
query, a third of what the front may add to a FAISS search (see ``benchmarks/bench_gallery.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import getpass
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from reidkit.gallery import validation
from reidkit.gallery.store import (
    Backend,
    CropFilter,
    CropMeta,
    ForgottenIdentity,
    GalleryError,
    GalleryStats,
    Hit,
    IdentityHit,
    Selection,
    Settings,
    StoredCrop,
)
from reidkit.models.card import IDENTITY_FIELDS

#: How an unfiltered search reads in the audit log.
_NO_FILTER = CropFilter().to_dict()
#: Characters of a weights digest shown in a refusal (enough to tell two models apart).
_DIGEST_SHOWN = 12
#: A row whose squared norm is this close to 1 is already of unit length (a model's output
#: usually is) and is kept as it is: dividing by a norm of 1 +- 5e-7 moves no distance by more
#: than 1e-6, and a search gets the very row it was given.
_UNIT_SLACK = 1e-6


def unit_rows(vectors: np.ndarray | torch.Tensor, what: str) -> np.ndarray:
    """C-contiguous float32 ``[N, D]`` rows of unit length; one line on a wrong shape or NaN."""
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().to("cpu", torch.float32).numpy()
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise GalleryError(f"{what} must be a [N, D] matrix, got shape {tuple(matrix.shape)}")
    if len(matrix) == 1:
        # One query, a service's usual call: one BLAS dot product and no temporary array (each
        # NumPy temporary costs microseconds right after a FAISS search has evicted the caches,
        # and this was the front's largest step on a single query).
        squared = float(np.vdot(matrix, matrix))
        if not squared < math.inf:
            raise GalleryError(f"{what} contain NaN or infinite values; check the model's output")
        if abs(squared - 1.0) > _UNIT_SLACK:
            # The same rule as torch's F.normalize: divide by max(norm, 1e-12).
            matrix = matrix / math.sqrt(max(squared, 1e-24))
        return matrix if matrix.flags.c_contiguous else np.ascontiguousarray(matrix)
    # A batch: np.linalg.norm(matrix, axis=1)'s own arithmetic, without its dispatch.
    squares = np.add.reduce(matrix * matrix, axis=1, keepdims=True)
    if not squares.max(initial=0.0) < math.inf:
        raise GalleryError(f"{what} contain NaN or infinite values; check the model's output")
    # Rows already of unit length are kept bit for bit, as a single query is.
    already_unit = np.abs(squares - 1.0) <= _UNIT_SLACK
    # The same rule as torch's F.normalize (reidkit.evaluation.metrics.normalize_features):
    # divide by max(norm, 1e-12), here sqrt(max(norm^2, 1e-24)).
    norms = np.sqrt(np.maximum(squares, 1e-24, out=squares), out=squares)
    norms[already_unit] = 1.0
    unit = matrix / norms
    return unit if unit.flags.c_contiguous else np.ascontiguousarray(unit)


def rows_to_add(
    vectors: np.ndarray | torch.Tensor,
    metas: Sequence[CropMeta],
    thumbnails: Sequence[bytes | None] | None,
    dim: int | None,
    where: str,
) -> np.ndarray:
    """What every add checks first: unit rows of width ``dim`` (any for ``None``), one per
    crop (and thumbnail), finite timestamps."""
    rows = unit_rows(vectors, "embeddings")
    if len(rows) != len(metas) or (thumbnails is not None and len(thumbnails) != len(metas)):
        raise GalleryError(
            f"add got {len(rows)} embeddings for {len(metas)} crops"
            + ("" if thumbnails is None else f" and {len(thumbnails)} thumbnails")
            + "; pass one of each per crop"
        )
    if dim is not None and rows.shape[1] != dim:
        raise GalleryError(
            f"embeddings have {rows.shape[1]} dimensions, gallery '{where}' holds {dim}; use "
            "the model that filled it"
        )
    for meta in metas:
        if not math.isfinite(meta.timestamp):
            raise GalleryError(f"crop '{meta.path}' has timestamp {meta.timestamp}; fix it")
    return rows


def _shown(key: str, value: Any) -> str:
    if key == "weights_digest" and isinstance(value, str):
        return repr(value[:_DIGEST_SHOWN])
    return repr(value)


def check_identity(stored: dict[str, Any] | None, given: dict[str, Any] | None, where: str) -> None:
    """Refuse a model whose embeddings live in another space than the gallery's.

    Compares :data:`~reidkit.models.card.IDENTITY_FIELDS` (weights digest, backbone, input
    size, width, normalisation, neck side); a recalibrated threshold or a newer reidkit is the
    same model. A field the stored card does not record (a gallery filled before reidkit
    recorded weight digests) is not compared.
    """
    if stored is None or given is None:
        return
    differing = [
        key
        for key in IDENTITY_FIELDS
        if stored.get(key) is not None and _comparable(given.get(key)) != stored.get(key)
    ]
    if differing:
        what = "; ".join(
            f"{key}: gallery {_shown(key, stored.get(key))}, this model "
            f"{_shown(key, given.get(key))}"
            for key in differing[:2]  # the message stays one line a terminal shows whole
        ) + (f"; {len(differing) - 2} more" if len(differing) > 2 else "")
        raise GalleryError(
            f"gallery '{where}' was filled by another model ({what}); use the model that filled "
            "it, or move the gallery to this model with 'reidkit gallery rebuild'"
        )


def _comparable(value: Any) -> Any:
    """A card value as JSON stores it (tuples read back as lists)."""
    return list(value) if isinstance(value, tuple) else value


@functools.cache
def _login() -> str:
    """The default operator (looked up once: it costs a fifth of a FAISS search)."""
    return getpass.getuser()


class Gallery:
    """A gallery: one backend behind the checks every gallery needs (see the module docstring).

    ``card`` is the model card (``ModelCard.to_dict()``) of the model about to add or search:
    the first add records it, and every add and search compares its identity with the
    recorded one. ``match_threshold`` overrides the recorded card's calibrated threshold.
    Every audited call takes ``operator`` (who acts; default: the login name).
    """

    def __init__(
        self,
        backend: Backend,
        card: dict[str, Any] | None = None,
        *,
        match_threshold: float | None = None,
    ) -> None:
        self._backend = backend
        self._card = card
        self._threshold = match_threshold
        self._verified: dict[str, Any] | None = None
        self._stamp, self._stamped = "", -1  # the audit's UTC time, and the second it names
        # This second's search records by what they say (operator, queries, k, filter, hits):
        # a service answers the same kind of search many times a second, and building the
        # JSON costs as much as the rest of the front.
        self._search_lines: dict[tuple[Any, ...], str] = {}
        self._settings()  # another model's gallery is refused at open, before any work

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def location(self) -> str:
        return self._backend.location

    @property
    def card(self) -> dict[str, Any] | None:
        """The model card recorded by the first add (``None``: still empty)."""
        return self._backend.settings().card

    @property
    def match_threshold(self) -> float | None:
        """The threshold given at open, else the calibrated one of the recorded card."""
        if self._threshold is not None:
            return self._threshold
        return (self.card or {}).get("match_threshold")

    def _settings(self) -> Settings:
        """The backend's settings, the recorded card checked against ours once per change."""
        settings = self._backend.settings()
        if settings.card is not None and settings.card is not self._verified:
            check_identity(settings.card, self._card, self._backend.location)
            self._verified = settings.card
        return settings

    def audit(self, action: str, operator: str | None, **what: Any) -> None:
        """Append one audit record: who (default: the login name), when (UTC), what was
        asked; never an embedding. The front writes add/search/forget records itself."""
        self._backend.append_audit(self._record(action, operator, what), durable=True)

    def _record(self, action: str, operator: str | None, what: dict[str, Any]) -> str:
        """One audit record as a line of JSON, stamped with this second."""
        now = int(time.time())
        if now != self._stamped:  # formatted once a second: a search writes one record
            self._stamp, self._stamped = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), now
            self._search_lines.clear()
        record = {"time": self._stamp, "operator": operator or _login(), "action": action}
        record.update(what)
        return json.dumps(record)

    def _audit_search(
        self, operator: str | None, queries: int, k: int, where: CropFilter | None, hits: int
    ) -> None:
        """The search's audit record, written before the search returns (not fsynced)."""
        key = (operator, queries, k, where, hits)
        line = self._search_lines.get(key) if int(time.time()) == self._stamped else None
        if line is None:
            shown = _NO_FILTER if where is None else where.to_dict()
            what = {"queries": queries, "k": k, **shown, "hits": hits}
            line = self._search_lines[key] = self._record("search", operator, what)
        self._backend.append_audit(line, durable=False)

    # --------------------------------------------------------------------------- add
    def add(
        self,
        vectors: np.ndarray | torch.Tensor,
        metas: Sequence[CropMeta],
        thumbnails: Sequence[bytes | None] | None = None,
        *,
        operator: str | None = None,
    ) -> int:
        """Store the crops whose path is not stored yet; returns how many were added.

        All-or-nothing per call where the backend allows it (the embedded one does: after a
        crash the gallery holds either none or all of them).
        """
        settings = self._settings()
        rows = rows_to_add(
            vectors,
            metas,
            thumbnails,
            settings.dim or (self._card or {}).get("embedding_dim"),
            self.location,
        )
        if settings.card is None and self._card is not None:
            self._backend.record_card(self._card)
            self._settings()  # another process may have recorded its card first
        added = self._backend.insert(rows, metas, thumbnails or [None] * len(metas))
        self.audit("add", operator, added=added, skipped=len(metas) - added)
        return added

    def contains(self, paths: Sequence[str]) -> list[bool]:
        """Whether each crop path is stored (a resumed ``add`` embeds only the others)."""
        return self._backend.contains(paths)

    # ------------------------------------------------------------------------ search
    def search(
        self,
        vectors: np.ndarray | torch.Tensor,
        k: int = 10,
        *,
        where: CropFilter | None = None,
        threshold: float | None = None,
        exact: bool = False,
        operator: str | None = None,
    ) -> list[list[Hit]]:
        """The ``k`` nearest stored crops per query, nearest first, among those ``where``
        accepts; ``threshold`` overrides the gallery's for the decisions, ``exact`` skips an
        ANN index."""
        queries = unit_rows(vectors, "query embeddings")
        if k < 1:
            raise GalleryError(f"top-k must be at least 1, got {k}")
        settings = self._settings()
        if settings.dim is None:  # nothing stored yet
            hits: list[list[Hit]] = [[] for _ in range(len(queries))]
        else:
            if queries.shape[1] != settings.dim:
                raise GalleryError(
                    f"query embeddings have {queries.shape[1]} dimensions, gallery "
                    f"'{self.location}' holds {settings.dim}; use the model that filled it"
                )
            if where is not None:
                self._check_filter(where)
            hits = self._backend.nearest(queries, k, where, exact)
        if threshold is None:
            threshold = self._threshold
        if threshold is None and settings.card is not None:
            threshold = settings.card.get("match_threshold")
        for row in hits:
            for hit in row:
                # 2 - 2 q.g of a crop with itself can come out a hair below 0 in float32.
                if hit.distance < 0.0:
                    hit.distance = 0.0
                # "match" at or below the threshold, "unknown" above it, None without one.
                if threshold is not None:
                    hit.decision = "match" if hit.distance <= threshold else "unknown"
        self._audit_search(operator, len(queries), k, where, sum(map(len, hits)))
        return hits

    def _check_filter(self, where: CropFilter) -> None:
        """A camera the gallery never saw is a typo, not an empty answer."""
        try:
            validation.window(where.start, where.end)
        except ValueError as exc:
            raise GalleryError(str(exc)) from None
        for camera in where.cameras or ():
            if not self._backend.count(CropFilter(cameras=(camera,))):
                raise GalleryError(
                    f"camera {camera} is not in gallery '{self.location}'; check the camera filter"
                )

    # ------------------------------------------------------------------------ forget
    def forget(self, selection: Selection, *, operator: str | None = None) -> int:
        """Remove the selected crops from every file of the gallery, and from its next version
        if a rebuild is under way; returns how many were removed from the gallery."""
        if selection.is_empty():
            raise GalleryError("nothing to forget: name tracks, crops or a cutoff time")
        return self._erase(lambda backend: selection, selection.to_dict(), operator)

    def forget_all(self, *, operator: str | None = None) -> int:
        """Remove every crop (and from a rebuild under way): the explicit request for what no
        selection or age may do by accident; returns how many were removed."""

        def everything(backend: Backend) -> Selection:
            return Selection(crop_ids=tuple(int(i) for i in backend.crop_ids()))

        return self._erase(everything, {"everything": True}, operator)

    def _erase(
        self, select: Callable[[Backend], Selection], asked: dict[str, Any], operator: str | None
    ) -> int:
        """Delete ``select(backend)`` from the gallery and its staged next version; audit it."""
        chosen = select(self._backend)
        removed = 0 if chosen.is_empty() else self._backend.delete(chosen)
        staged = self._backend.staging(create=False)
        if staged is not None:  # forgotten data must not come back with a rebuilt gallery
            try:
                chosen = select(staged)
                if not chosen.is_empty():
                    staged.delete(chosen)
            finally:
                staged.close()
        self.audit("forget", operator, **asked, removed=removed)
        return removed

    # ------------------------------------------------------------ global identities
    def assign_identities(self, labels: Mapping[int, str], *, operator: str | None = None) -> int:
        """Write each crop's global identity (``crop id -> global id``, e.g. from ``reidkit
        associate``), replacing an earlier one; returns how many stored crops were labelled."""
        for global_id in set(labels.values()):
            if not isinstance(global_id, str) or not global_id or len(global_id) > 128:
                raise GalleryError(
                    f"global id {global_id!r} must be a non-empty text of at most 128 characters"
                )
        labelled = self._backend.label_identities(dict(labels))
        self.audit(
            "assign_identities",
            operator,
            crops=labelled,
            identities=len(set(labels.values())),
        )
        return labelled

    def identities(self, crop_ids: Sequence[int] | None = None) -> dict[int, str]:
        """The global identity of each labelled crop among ``crop_ids`` (all for ``None``)."""
        return self._backend.identities(crop_ids)

    def crops(self) -> list[StoredCrop]:
        """Every stored crop's id and metadata (no thumbnails), in crop-id order: the gallery
        read as data (``reidkit associate`` and ``reidkit adapt`` take a gallery as input)."""
        ids = self._backend.crop_ids().tolist()
        step = 4096  # rows fetched at once
        return [c for i in range(0, len(ids), step) for c in self._backend.fetch(ids[i : i + step])]

    def members(self, global_ids: set[str]) -> dict[str, list[StoredCrop]]:
        """The stored crops of each of ``global_ids`` (an empty list for an unknown one)."""
        wanted = [c for c, g in self._backend.identities().items() if g in global_ids]
        found: dict[str, list[StoredCrop]] = {g: [] for g in global_ids}
        labels = self._backend.identities(wanted)
        for crop in self._backend.fetch(wanted):
            found[labels[crop.crop_id]].append(crop)
        return found

    def group_by_identity(self, hits: list[list[Hit]]) -> list[list[IdentityHit]]:
        """Each query's hits as whole people: one entry per global identity (nearest first),
        with every camera and the time span of that identity in the gallery; a hit whose crop
        has no identity stays an entry of its own."""
        labels = self._backend.identities([h.crop_id for row in hits for h in row])
        members = self.members(set(labels.values()))
        grouped = []
        for row in hits:
            entries: dict[object, list[Hit]] = {}
            for hit in row:  # nearest first, so each entry's first hit is its nearest
                entries.setdefault(labels.get(hit.crop_id, ("crop", hit.crop_id)), []).append(hit)
            people = []
            for key, found in entries.items():
                crops = members[key] if isinstance(key, str) else []
                metas = [c.meta for c in crops] or [h.meta for h in found]
                times = [m.timestamp for m in metas]
                people.append(
                    IdentityHit(
                        global_id=key if isinstance(key, str) else None,
                        hits=found,
                        cameras=tuple(sorted({m.camera for m in metas})),
                        start=min(times),
                        end=max(times),
                        crops=len(metas),
                    )
                )
            grouped.append(people)
        return grouped

    def forget_identity(self, global_id: str, *, operator: str | None = None) -> ForgottenIdentity:
        """Remove every crop of one person, in every camera (and from a rebuild under way);
        audited with what it matched. An identity no crop carries is refused (a typo)."""
        crops = self.members({global_id})[global_id]
        if not crops:
            raise GalleryError(
                f"no crop of gallery '{self.location}' carries global id '{global_id}'; check "
                "the id (global_ids.csv of the associate run that wrote it)"
            )
        selection = Selection(crop_ids=tuple(c.crop_id for c in crops))
        cameras = tuple(sorted({c.meta.camera for c in crops}))
        tracks = tuple(sorted({c.meta.track_id for c in crops if c.meta.track_id}))
        asked = {"global_id": global_id, "cameras": list(cameras), "track_ids": list(tracks)}
        removed = self._erase(lambda backend: selection, asked, operator)
        return ForgottenIdentity(global_id, removed, cameras, tracks)

    # -------------------------------------------------------------------------- rest
    def vectors(self, crop_ids: Sequence[int]) -> np.ndarray:
        """The stored (L2-normalised) embeddings of these crops, ``[len, D]`` float32, in
        order (for re-ranking a small result set)."""
        return self._backend.vectors(crop_ids)

    def thumbnail(self, crop_id: int) -> bytes | None:
        """The JPEG thumbnail stored with a crop, or None."""
        stored = self._backend.fetch([crop_id], thumbnails=True)
        return stored[0].thumbnail if stored else None

    def stats(self) -> GalleryStats:
        summary = dataclasses.asdict(self._backend.summary())
        return GalleryStats(**summary, backend=self._backend.kind, card=self.card)

    def audit_log(self) -> list[dict[str, Any]]:
        """Every audit record, oldest first. Forget records written before reidkit named an
        absolute cutoff ``before`` carry it as ``older_than``; they are read under the new name."""
        records = self._backend.audit_records()
        for record in records:
            if record.get("action") == "forget" and "older_than" in record:
                record["before"] = record.pop("older_than")
        return records

    def optimise(self) -> None:
        """Bring the backend's search structures up to date (after a bulk add)."""
        self._backend.optimise()

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
