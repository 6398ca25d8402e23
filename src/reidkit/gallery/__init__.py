"""Site gallery: store a site's crop embeddings, search them by camera and time, forget them.

The interface is :mod:`reidkit.gallery.store` (:func:`open_gallery`, :class:`GalleryStore`);
backends are the embedded folder store and Milvus. Names are resolved on first use (PEP 562)
so that importing the interface does not pull in faiss or pymilvus.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "CropMeta": "reidkit.gallery.store",
    "GalleryError": "reidkit.gallery.store",
    "GalleryStats": "reidkit.gallery.store",
    "GalleryStore": "reidkit.gallery.store",
    "Hit": "reidkit.gallery.store",
    "open_gallery": "reidkit.gallery.store",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'reidkit.gallery' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
