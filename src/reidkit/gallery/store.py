"""The one small interface every gallery backend implements, and :func:`open_gallery`.

A gallery is a site's crops, each stored as one L2-normalised embedding plus its metadata
(crop path, camera, time, track, optional site/zone and a JPEG thumbnail). Everything above the
storage (the ``gallery`` actions, the HTTP service) talks to a :class:`GalleryStore` and never to
a backend, so a site can move from the embedded folder to a Milvus fleet by changing one URI.

Distances are the squared Euclidean distance between L2-normalised embeddings (``2 - 2 cos``,
in ``[0, 4]``), the same figure :func:`reidkit.evaluation.metrics.pairwise_distance` gives to
evaluation, so a threshold calibrated by ``evaluate`` applies to a gallery unchanged.

A gallery records the model card of the model that filled it: embeddings of two different
models are not comparable, so opening a gallery with another model's card is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import Tensor

from reidkit.errors import ReidkitError
from reidkit.evaluation.metrics import normalize_features

Decision = Literal["match", "unknown"]

# Card keys that may differ between two users of one gallery: recalibrating the threshold or
# upgrading reidkit does not change the embeddings.
_CARD_KEYS_NOT_COMPARED = frozenset(
    {"match_threshold", "match_false_match_rate", "reidkit_version"}
)


class GalleryError(ReidkitError):
    """A gallery is unreadable, from a newer reidkit, filled by another model, or misused."""


@dataclass(frozen=True)
class CropMeta:
    """What a gallery keeps about one crop besides its embedding.

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


@dataclass(frozen=True)
class Hit:
    """One search result: the stored entry, its distance to the query, and the decision.

    ``decision`` is ``"match"`` when ``distance <= threshold`` (the calibrated
    ``match_threshold`` of the gallery's model card, or the one passed to ``search``),
    ``"unknown"`` above it, and ``None`` when no threshold is known.
    """

    entry_id: int
    distance: float
    meta: CropMeta
    decision: Decision | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "entry_id": self.entry_id,
            "distance": self.distance,
            "decision": self.decision,
            **self.meta.to_dict(),
        }


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


class GalleryStore(Protocol):
    """A gallery backend. Vectors are ``[N, D]`` float arrays or tensors, normalised on the way in.

    Every ``search`` and ``forget`` is appended to the gallery's audit log (operator, time,
    what was asked; never an embedding).
    """

    @property
    def card(self) -> dict[str, Any] | None:
        """The model card of the model whose embeddings fill the gallery (None: still empty)."""
        ...

    def add(
        self,
        vectors: np.ndarray | Tensor,
        metas: Sequence[CropMeta],
        thumbnails: Sequence[bytes | None] | None = None,
    ) -> int:
        """Store the crops whose path is not stored yet; returns how many were added.

        All-or-nothing per call: after a crash the gallery holds either none or all of them.
        """
        ...

    def contains(self, paths: Sequence[str]) -> list[bool]:
        """Whether each crop path is stored (a resumed ``add`` embeds only the others)."""
        ...

    def search(
        self,
        vectors: np.ndarray | Tensor,
        k: int = 10,
        *,
        cameras: Sequence[int] | None = None,
        start: float | None = None,
        end: float | None = None,
        threshold: float | None = None,
    ) -> list[list[Hit]]:
        """The ``k`` nearest stored crops per query, nearest first, among the crops whose camera
        is in ``cameras`` and whose timestamp is in ``[start, end]`` (``None``: no bound)."""
        ...

    def vectors(self, entry_ids: Sequence[int]) -> np.ndarray:
        """The stored (L2-normalised) embeddings of these entries, ``[len, D]`` float32, in
        order (for re-ranking a small result set)."""
        ...

    def forget(
        self,
        *,
        track_ids: Sequence[str] = (),
        paths: Sequence[str] = (),
        older_than: float | None = None,
    ) -> int:
        """Remove crops by track, by path, or taken before ``older_than`` (unix seconds), from
        every file of the gallery (not only hidden); returns how many were removed."""
        ...

    def stats(self) -> GalleryStats: ...

    def thumbnail(self, entry_id: int) -> bytes | None:
        """The JPEG thumbnail stored with an entry, or None."""
        ...

    def close(self) -> None: ...


def check_card_fits(
    stored: dict[str, Any] | None, given: dict[str, Any] | None, where: str
) -> None:
    """Refuse embeddings of a model other than the one that filled the gallery at ``where``."""
    if stored is None or given is None:
        return
    differing = sorted(
        key
        for key in (set(stored) | set(given)) - _CARD_KEYS_NOT_COMPARED
        if stored.get(key) != given.get(key)
    )
    if differing:
        key = differing[0]
        raise GalleryError(
            f"gallery '{where}' was filled by another model ({key}: gallery has "
            f"{stored.get(key)!r}, this model {given.get(key)!r}); use the same model or a new "
            "gallery.uri"
        )


def unit_rows(vectors: np.ndarray | Tensor, what: str) -> Tensor:
    """Float32 ``[N, D]`` tensor of L2-normalised rows; one line on a wrong shape or NaN."""
    matrix = torch.as_tensor(np.asarray(vectors) if not isinstance(vectors, Tensor) else vectors)
    if matrix.ndim != 2:
        raise GalleryError(f"{what} must be a [N, D] matrix, got shape {tuple(matrix.shape)}")
    unit = normalize_features(matrix.detach().to("cpu", torch.float32)).contiguous()
    # A NaN or infinite input makes its normalised row NaN, so one sum per row finds it.
    if not torch.isfinite(unit.sum(dim=1)).all():
        raise GalleryError(f"{what} contain NaN or infinite values; check the model's output")
    return unit


def rows_to_add(
    vectors: np.ndarray | Tensor,
    metas: Sequence[CropMeta],
    thumbnails: Sequence[bytes | None] | None,
) -> Tensor:
    """What every backend's ``add`` checks first: unit rows, one per crop (and thumbnail)."""
    matrix = unit_rows(vectors, "embeddings")
    if len(matrix) != len(metas) or (thumbnails is not None and len(thumbnails) != len(metas)):
        raise GalleryError(
            f"add got {len(matrix)} embeddings for {len(metas)} crops"
            + ("" if thumbnails is None else f" and {len(thumbnails)} thumbnails")
            + "; pass one of each per crop"
        )
    return matrix


def squared_distance(similarity: float) -> float:
    """Squared Euclidean distance of unit vectors from their inner product, never below 0.

    In float32 a crop's similarity to itself can come out a hair above 1, which would show as a
    distance of -0.000.
    """
    return max(2.0 - 2.0 * similarity, 0.0)


def decide(distance: float, threshold: float | None) -> Decision | None:
    """``match`` at or below the calibrated distance threshold, ``unknown`` above it."""
    if threshold is None:
        return None
    return "match" if distance <= threshold else "unknown"


def is_milvus_uri(uri: str) -> bool:
    """``http(s)://host:port`` (a Milvus server) or a ``*.db`` file (Milvus Lite)."""
    return uri.startswith(("http://", "https://", "tcp://")) or uri.endswith(".db")


def open_gallery(
    uri: str | Path,
    card: dict[str, Any] | None = None,
    *,
    create: bool = False,
    operator: str | None = None,
) -> GalleryStore:
    """Open the gallery at ``uri``: a folder (embedded store) or a Milvus URI.

    ``card`` is the model card of the model about to add or search; it is recorded by the first
    ``add`` and compared on every later open. ``create`` allows a new, empty gallery; without it
    a missing gallery is an error (a typo in the URI should not silently start an empty one).
    ``operator`` names who acts, for the audit log (default: the login name).
    """
    uri = str(uri)
    if is_milvus_uri(uri):
        from reidkit.gallery.milvus import MilvusGallery

        return MilvusGallery(uri, card, create=create, operator=operator)
    from reidkit.gallery.embedded import EmbeddedGallery

    return EmbeddedGallery(Path(uri), card, create=create, operator=operator)
