"""Open a gallery by its URI: the one place that knows which backend a URI means.

In the spirit of faiss's ``index_factory``: callers name a gallery by a string
(``gallery.uri``) and get a :class:`~reidkit.gallery.front.Gallery`; the backend behind it is
chosen here, above the backends, so that the contract (:mod:`reidkit.gallery.store`) imports
none of them and none of them imports this module. Backends are imported on first use, so a
folder gallery never loads pymilvus.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reidkit.gallery.front import Gallery
from reidkit.gallery.store import Backend, GalleryError


def is_milvus_uri(uri: str) -> bool:
    """``http(s)://host:port`` or ``tcp://`` (a Milvus server) or a ``*.db`` file (Milvus Lite)."""
    return uri.startswith(("http://", "https://", "tcp://")) or uri.endswith(".db")


def open_backend(uri: str | Path, *, create: bool = False, **options: Any) -> Backend:
    """The backend a URI names: a ``*.db`` file or a server URL is Milvus, anything else a
    folder (the embedded store). ``options`` go to the backend (embedded: ``ann_min_size``,
    ``nprobe``; Milvus: ``collection``)."""
    uri = str(uri)
    if is_milvus_uri(uri):
        from reidkit.gallery.milvus import MilvusBackend

        return MilvusBackend(uri, create=create, **options)
    from reidkit.gallery.embedded import EmbeddedBackend

    return EmbeddedBackend(Path(uri), create=create, **options)


def open_gallery(
    uri: str | Path,
    card: dict[str, Any] | None = None,
    *,
    create: bool = False,
    match_threshold: float | None = None,
    **options: Any,
) -> Gallery:
    """Open the gallery at ``uri`` (see :func:`open_backend`) for the model whose card is
    ``card``.

    ``create`` allows a new, empty gallery; without it a missing gallery is an error (a typo
    in the URI should not silently start an empty one). A gallery filled by another model is
    refused here, before any work.
    """
    backend = open_backend(uri, create=create, **options)
    try:
        return Gallery(backend, card, match_threshold=match_threshold)
    except BaseException:
        backend.close()
        raise


@contextmanager
def undone_if_left_empty(uri: str | Path) -> Iterator[None]:
    """Remove what the block created of a new folder gallery at ``uri`` if the block fails
    before the gallery holds a crop.

    A first ``gallery add`` that fails (a damaged crop, Ctrl-C while it starts) would otherwise
    leave an empty gallery bound to its model behind: a search then finds an empty gallery
    instead of being told there is none, and an add with another model is refused. Only what
    the block created goes: the topmost folder of ``uri`` it made, or the files it made in a
    folder that existed (an empty one, as ``gallery.uri`` allows). A gallery that existed is
    left alone, and so is a new one that holds crops: a rerun completes it
    (:func:`reidkit.gallery.ingest.add_crops`). A Milvus gallery is its server's business.
    """
    folder = Path(uri)
    if is_milvus_uri(str(uri)) or (folder / "gallery.json").exists():
        yield
        return
    missing = [p for p in (folder, *folder.parents) if not os.path.lexists(p)]
    top = missing[-1] if missing else None
    existed = set(os.listdir(folder)) if top is None and folder.is_dir() else set()
    try:
        yield
    except BaseException:
        if _holds_no_crop(folder):
            if top is not None:
                shutil.rmtree(top, ignore_errors=True)
            elif folder.is_dir():
                for name in set(os.listdir(folder)) - existed:
                    made = folder / name
                    if made.is_dir() and not made.is_symlink():
                        shutil.rmtree(made, ignore_errors=True)
                    else:
                        made.unlink(missing_ok=True)
        raise


def _holds_no_crop(folder: Path) -> bool:
    """Whether the folder gallery at ``folder`` is provably empty: not yet a gallery (its
    ``gallery.json`` is written last), or one of no crop. One that cannot be opened counts as
    holding crops: what cannot be checked is kept."""
    if not (folder / "gallery.json").is_file():
        return True
    try:
        with open_gallery(folder) as gallery:
            return gallery.stats().size == 0
    except (GalleryError, OSError):
        return False
