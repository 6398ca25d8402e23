"""Move a gallery to a new model: re-embed its crops into the next version, then switch.

Embeddings of two models are not comparable, so a gallery follows a new model by re-embedding
every crop from its file. The new embeddings go into the gallery's next version
(:meth:`~reidkit.gallery.store.Backend.staging`) while the current version keeps answering
searches; every crop's metadata and thumbnail are carried over as stored. Once the next
version holds every crop, the backend switches to it atomically, provided nothing was stored
or deleted meanwhile (else the rebuild catches up and tries again), and removes the old
version's files.

Resumable: the next version survives a kill, and a rerun re-embeds only the crops it does not
hold yet. Crops forgotten while a rebuild is under way leave the next version too (the front's
``forget`` deletes there as well, and each pass drops what the current version no longer has).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor

from reidkit.gallery.front import Gallery, check_identity, rows_to_add
from reidkit.gallery.ingest import unreadable
from reidkit.gallery.store import Backend, CropMeta, GalleryError, Selection, StoredCrop

#: Crops fetched and embedded per step (their thumbnails are held in memory meanwhile).
_STEP = 1024

#: Embeds crops from their files: yields (embeddings, their crops) batch after batch, in order.
Embed = Callable[[Sequence[CropMeta]], Iterator[tuple[np.ndarray | Tensor, list[CropMeta]]]]


class MissingCrops(GalleryError):
    """Crops of the gallery whose file no longer exists; ``paths`` lists all of them."""

    #: What the user can do about it (the spec key that drops them).
    FIX = "restore them or set gallery.rebuild_drop_missing: true to drop them"

    def __init__(self, location: str, paths: list[str]) -> None:
        self.paths = paths
        super().__init__(
            f"{len(paths)} crops of gallery '{location}' have no file to re-embed; {self.FIX} "
            f"(first: '{paths[0]}')"
        )


@dataclass(frozen=True)
class RebuildResult:
    """``crops``: in the gallery after the switch; ``embedded``: by this run (the others were
    by an interrupted one); ``dropped``: crops left out because their file is gone."""

    crops: int
    embedded: int
    dropped: list[str]


def _stored(backend: Backend) -> list[StoredCrop]:
    """Every crop of a version, without thumbnails."""
    ids = backend.crop_ids().tolist()
    return [c for i in range(0, len(ids), _STEP) for c in backend.fetch(ids[i : i + _STEP])]


def _next_version(gallery: Gallery, card: dict[str, Any]) -> Backend:
    """The next version for ``card``'s model: the one an interrupted rebuild for the same model
    left, else a new one."""
    staged = gallery.backend.staging(create=True)
    try:
        check_identity(staged.settings().card, card, staged.location)
    except GalleryError:  # an interrupted rebuild towards another model: start afresh
        staged.close()
        gallery.backend.discard_staging()
        staged = gallery.backend.staging(create=True)
    staged.record_card(card)
    return staged


def rebuild(
    gallery: Gallery,
    embed: Embed,
    card: dict[str, Any],
    *,
    drop_missing: bool = False,
    operator: str | None = None,
) -> RebuildResult:
    """Re-embed every crop of ``gallery`` with the model whose card is ``card`` and embedder
    is ``embed``, and switch the gallery to it (see the module docstring).

    A crop whose file is gone (an HTTP upload has none) cannot be re-embedded: the rebuild
    refuses with :class:`MissingCrops` before embedding anything, unless ``drop_missing``.
    """
    backend = gallery.backend
    staged = _next_version(gallery, card)
    embedded, dropped = 0, []
    try:
        while True:
            state = backend.state()
            current = _stored(backend)
            wanted = {c.meta.path for c in current}
            done = {c.meta.path for c in _stored(staged)}
            gone = tuple(sorted(done - wanted))  # forgotten since they were re-embedded
            if gone:
                staged.delete(Selection(paths=gone))
            todo = [c for c in current if c.meta.path not in done]
            missing = {m.path for m in unreadable([c.meta for c in todo])}
            if missing and not drop_missing:
                raise MissingCrops(backend.location, sorted(missing))
            dropped = sorted(missing)
            todo = [c for c in todo if c.meta.path not in missing]
            embedded += _embed_into(staged, backend, todo, embed, card)
            staged.optimise()
            if backend.promote(staged, state):
                break
    finally:
        staged.close()
    crops = backend.count()
    gallery.audit(
        "rebuild",
        operator,
        crops=crops,
        embedded=embedded,
        dropped=len(dropped),
        backbone=card.get("backbone"),
        weights_digest=card.get("weights_digest"),
    )
    return RebuildResult(crops, embedded, dropped)


def _embed_into(
    staged: Backend,
    backend: Backend,
    todo: list[StoredCrop],
    embed: Embed,
    card: dict[str, Any],
) -> int:
    """Embed ``todo`` with the new model into ``staged``, thumbnails copied from ``backend``."""
    added = 0
    for start in range(0, len(todo), _STEP):
        step = backend.fetch([c.crop_id for c in todo[start : start + _STEP]], thumbnails=True)
        thumbnails = {c.meta.path: c.thumbnail for c in step}
        for vectors, metas in embed([c.meta for c in step]):
            dim = staged.settings().dim or card.get("embedding_dim")
            rows = rows_to_add(vectors, metas, None, dim, staged.location)
            added += staged.insert(rows, metas, [thumbnails[m.path] for m in metas])
    return added
