"""Site gallery: store a site's crop embeddings, search them by camera and time, forget them.

:func:`open_gallery` (:mod:`reidkit.gallery.factory`) opens a gallery by its URI and returns a
:class:`Gallery` (:mod:`reidkit.gallery.front`), the one front over every backend; the records
and the backend contract are in :mod:`reidkit.gallery.store`; backends are the embedded folder
store and Milvus. Names are resolved on first use (PEP 562) so that importing the package does
not pull in faiss or pymilvus.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Backend": "reidkit.gallery.store",
    "CropFilter": "reidkit.gallery.store",
    "CropMeta": "reidkit.gallery.store",
    "Gallery": "reidkit.gallery.front",
    "GalleryError": "reidkit.gallery.store",
    "GalleryStats": "reidkit.gallery.store",
    "Hit": "reidkit.gallery.store",
    "Selection": "reidkit.gallery.store",
    "open_gallery": "reidkit.gallery.factory",
    "rebuild": "reidkit.gallery.rebuild",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'reidkit.gallery' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
