"""Issue 25: a gallery folder the server cannot write (a site's read-only archive mount) is
served for search; changes are refused with a reason; audit records go to the serve folder."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from reidkit.gallery.factory import open_gallery
from reidkit.serve.gallery_access import GalleryService, RequestRefused, shown_path
from reidkit.serve.schemas import CropMeta as UploadMeta
from tests.gallery.conftest import CARD, site
from tests.gallery.test_read_only import _snapshot


@pytest.fixture
def read_only_gallery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A filled gallery made unwritable: chmod a-w, or (root writes through that) the same
    answer from ``os.access`` that a read-only mount gives."""
    vectors, metas = site(50, seed=3)
    folder = tmp_path / "gallery"
    with open_gallery(folder, CARD, create=True) as gallery:
        gallery.add(vectors, metas)
    for lock in folder.rglob(".lock"):
        lock.unlink()
    if os.geteuid() == 0:
        real_access = os.access

        def access(path: object, mode: int, **kwargs: object) -> bool:
            if mode == os.W_OK and Path(str(path)) == folder:
                return False
            return real_access(path, mode, **kwargs)

        monkeypatch.setattr(os, "access", access)
        yield folder, vectors, metas
        return
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}
    for path, mode in modes.items():
        path.chmod(mode & ~0o222)
    yield folder, vectors, metas
    for path, mode in modes.items():
        path.chmod(mode)


def test_read_only_gallery_is_served_for_search(read_only_gallery, tmp_path: Path) -> None:
    folder, vectors, metas = read_only_gallery
    before = _snapshot(folder)
    audit = tmp_path / "serve" / "audit.jsonl"
    audit.parent.mkdir()

    async def use() -> None:
        service = GalleryService.open(str(folder), CARD, crop_root="/crops", audit_file=audit)
        try:
            query = vectors[4:5] / np.linalg.norm(vectors[4:5])
            hits = await service.search(query, k=3, cameras=None, start=None, end=None, who="desk")
            assert hits[0].path == shown_path(metas[4].path, "/crops")
            assert (await service.stats()).size == 50
            meta = UploadMeta(camera=1, timestamp="2026-01-01T00:00:00Z", track_id="t")
            with pytest.raises(RequestRefused, match="read-only"):
                await service.add(query, [meta], [b""], ["new"], who="ingest")
            with pytest.raises(RequestRefused, match="read-only"):
                await service.forget_all(who="dpo")
        finally:
            service.close()

    asyncio.run(use())
    assert _snapshot(folder) == before
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(r["action"], r["operator"]) for r in records] == [("search", "desk")]


@pytest.mark.parametrize(
    ("path", "root", "shown"),
    [
        ("/site/crops/cam1/0001.jpg", "/site/crops", "cam1/0001.jpg"),
        ("/site/crops/0001.jpg", None, "0001.jpg"),
        ("/elsewhere/secret/0001.jpg", "/site/crops", "0001.jpg"),
        ("/site/crops2/0001.jpg", "/site/crops", "0001.jpg"),
        ("upload:1a2b", "/site/crops", "upload:1a2b"),
        ("client/key.jpg", "/site/crops", "client/key.jpg"),
    ],
)
def test_shown_path_never_leaves_the_crop_root(path: str, root: str | None, shown: str) -> None:
    assert shown_path(path, root) == shown
