"""Open a gallery by its URI: the one place that knows which backend a URI means.

In the spirit of faiss's ``index_factory``: callers name a gallery by a string
(``gallery.uri``) and get a :class:`~reidkit.gallery.front.Gallery`; the backend behind it is
chosen here, above the backends, so that the contract (:mod:`reidkit.gallery.store`) imports
none of them and none of them imports this module. Backends are imported on first use, so a
folder gallery never loads pymilvus.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reidkit.gallery.front import Gallery
from reidkit.gallery.store import Backend


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
