"""``rebuild``: a gallery moved to a new model on both backends, with real crop files; missing
crops, interruptions, and forgets/adds made while it runs."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import torch
from PIL import Image

from reidkit.data.preprocessing import resolve_preprocessing
from reidkit.data.transforms import build_eval_transform
from reidkit.gallery.factory import open_gallery
from reidkit.gallery.front import Gallery
from reidkit.gallery.ingest import add_crops, crops_in_folder, embed_batches
from reidkit.gallery.rebuild import MissingCrops, rebuild
from reidkit.gallery.store import CropMeta, GalleryError, Selection
from tests.gallery.conftest import ORIGIN, TinyEmbedder, folder_bytes, tiny_card

OLD, NEW = tiny_card(seed=0), tiny_card(seed=1)
ROOT = Path(__file__).resolve().parents[2]


def embedder_for(card: dict) -> TinyEmbedder:
    return TinyEmbedder(seed=int(card["weights_digest"], 16), dim=card["embedding_dim"]).eval()


def embed_with(
    card: dict, each_batch: Callable[[int], None] | None = None
) -> Callable[[Sequence[CropMeta]], Iterator[tuple[torch.Tensor, list[CropMeta]]]]:
    """The ``embed`` a rebuild calls: crops through the model of ``card``, in batches of 4;
    ``each_batch(n)`` runs before the n-th batch (n = 0, 1, ...)."""
    model = embedder_for(card)

    def embed(metas: Sequence[CropMeta]) -> Iterator[tuple[torch.Tensor, list[CropMeta]]]:
        batches = embed_batches(model, card, metas, batch_size=4, thumbnails=False, progress=False)
        for n, (vectors, batch, _) in enumerate(batches):
            if each_batch is not None:
                each_batch(n)
            yield vectors, batch

    return embed


def embedding(card: dict, path: str) -> torch.Tensor:
    transform = build_eval_transform(resolve_preprocessing(card=card))
    with Image.open(path) as image, torch.inference_mode():
        return embedder_for(card)(transform(image.convert("RGB"))[None])


def site_crops(crops: Path) -> list[CropMeta]:
    """The crop files with every metadata field set, so that carrying them over is checked."""
    return [
        dataclasses.replace(m, site=f"site-{i % 2}", zone=f"zone-{i % 3}")
        for i, m in enumerate(crops_in_folder(crops, ORIGIN))
    ]


def fill(uri: Path, metas: list[CropMeta]) -> None:
    with open_gallery(uri, OLD, create=True) as gallery:
        add_crops(gallery, embedder_for(OLD), OLD, metas, batch_size=8, progress=False)


def snapshot(gallery: Gallery) -> dict[str, tuple[CropMeta, bytes | None]]:
    """Every crop's metadata and thumbnail, by path."""
    stored = gallery.backend.fetch(gallery.backend.crop_ids().tolist(), thumbnails=True)
    return {c.meta.path: (c.meta, c.thumbnail) for c in stored}


def test_rebuild_moves_the_gallery_to_the_new_model(backend_uri, crops):
    metas = site_crops(crops)
    fill(backend_uri, metas)
    with open_gallery(backend_uri) as gallery, open_gallery(backend_uri) as reader:
        before = snapshot(gallery)
        audit_before = gallery.audit_log()
        old_vectors = gallery.backend.vectors(gallery.backend.crop_ids().tolist())
        result = rebuild(gallery, embed_with(NEW), NEW, operator="migrator")
        assert (result.crops, result.embedded, result.dropped) == (len(metas), len(metas), [])
        assert snapshot(gallery) == before  # metadata and thumbnails carried over as stored
        log = gallery.audit_log()
        # A handle opened before the switch serves the new version.
        assert reader.card == NEW
        assert reader.search(embedding(NEW, metas[2].path), k=1)[0][0].meta == metas[2]
    assert log[: len(audit_before)] == audit_before
    assert (log[-1]["action"], log[-1]["operator"], log[-1]["crops"]) == (
        "rebuild",
        "migrator",
        len(metas),
    )
    with pytest.raises(GalleryError, match=r"weights_digest.*gallery rebuild"):
        open_gallery(backend_uri, OLD)
    with open_gallery(backend_uri, NEW) as gallery:
        assert gallery.card == NEW
        for meta in metas[::5]:
            (hit, *_) = gallery.search(embedding(NEW, meta.path), k=2)[0]
            assert hit.meta == meta and hit.distance < 1e-5 and hit.decision == "match"
    # The old version's files are gone: no old embedding is left anywhere.
    blobs = folder_bytes(backend_uri)
    assert not [name for name, blob in blobs.items() if old_vectors[0].tobytes() in blob]
    if backend_uri.suffix == ".db":
        assert not (backend_uri / "collections" / "reidkit_gallery").exists()
    else:
        assert json.loads((backend_uri / "gallery.json").read_text())["data"] == "v1"
        assert not list(backend_uri.glob("vectors.*")) and (backend_uri / "v1").is_dir()


def test_missing_crops_and_uploads_refused_unless_dropped(backend_uri, crops, tmp_path):
    metas = site_crops(crops)
    doomed = tmp_path / "0005_c1s1_000100_00.jpg"
    shutil.copy(metas[0].path, doomed)
    gone = dataclasses.replace(metas[0], path=str(doomed))
    fill(backend_uri, [*metas, gone])
    doomed.unlink()
    upload = CropMeta("upload:0123456789abcdef", camera=2, timestamp=ORIGIN, track_id="t9")
    with open_gallery(backend_uri, OLD) as gallery:
        gallery.add(embedding(OLD, metas[1].path), [upload], [b"jpeg"], operator="api")
        with pytest.raises(MissingCrops) as err:
            rebuild(gallery, embed_with(NEW), NEW)
        assert err.value.paths == sorted([str(doomed), upload.path])
        assert "\n" not in str(err.value) and "rebuild_drop_missing: true to drop" in str(err.value)
        assert gallery.card == OLD  # the gallery is untouched and still serves
        assert gallery.search(embedding(OLD, metas[1].path), k=1)[0][0].distance < 1e-5
        result = rebuild(gallery, embed_with(NEW), NEW, drop_missing=True)
        assert result.dropped == sorted([str(doomed), upload.path])
        assert result.crops == len(metas) == gallery.stats().size
        assert not any(gallery.contains([str(doomed), upload.path]))


def test_an_interrupted_rebuild_resumes(backend_uri, crops):
    metas = site_crops(crops)
    fill(backend_uri, metas)

    def interrupt(n: int) -> None:
        if n == 2:
            raise KeyboardInterrupt

    with open_gallery(backend_uri) as gallery, pytest.raises(KeyboardInterrupt):
        rebuild(gallery, embed_with(NEW, interrupt), NEW)
    with open_gallery(backend_uri, OLD) as gallery:  # the old version still serves
        assert gallery.search(embedding(OLD, metas[3].path), k=1)[0][0].meta == metas[3]
        result = rebuild(gallery, embed_with(NEW), NEW)
    assert result.embedded == len(metas) - 8  # two batches of 4 were embedded before
    with open_gallery(backend_uri, NEW) as gallery:
        assert gallery.stats().size == len(metas)
        assert sorted(snapshot(gallery)) == sorted(m.path for m in metas)


def test_a_rebuild_for_another_model_starts_afresh(backend_uri, crops):
    metas = site_crops(crops)
    fill(backend_uri, metas)
    other = tiny_card(seed=2, dim=8)

    def interrupt(n: int) -> None:
        if n == 1:
            raise KeyboardInterrupt

    with open_gallery(backend_uri) as gallery:
        with pytest.raises(KeyboardInterrupt):
            rebuild(gallery, embed_with(other, interrupt), other)
        result = rebuild(gallery, embed_with(NEW), NEW)
    assert result.embedded == len(metas)
    with open_gallery(backend_uri, NEW) as gallery:
        assert gallery.stats().size == len(metas)


def test_forgets_and_adds_during_a_rebuild_reach_the_new_version(backend_uri, crops):
    metas = site_crops(crops)
    first, late = metas[:-3], metas[-3:]
    fill(backend_uri, first)
    forgotten = first[0].track_id
    with open_gallery(backend_uri, OLD) as other:  # another operator, another handle

        def meanwhile(n: int) -> None:
            if n == 0:
                other.forget(Selection(track_ids=(forgotten,)), operator="dpo")
            if n == 1:
                add_crops(other, embedder_for(OLD), OLD, late, progress=False)

        with open_gallery(backend_uri) as gallery:
            stored = snapshot(gallery)
            doomed = {p: t for p, (m, t) in stored.items() if m.track_id == forgotten}
            rebuild(gallery, embed_with(NEW, meanwhile), NEW)
    assert doomed
    expected = {m.path for m in metas if m.track_id != forgotten}
    with open_gallery(backend_uri, NEW) as gallery:
        assert set(snapshot(gallery)) == expected
        hit = gallery.search(embedding(NEW, late[0].path), k=1)[0][0]
        assert hit.meta == late[0] and hit.distance < 1e-5
    if backend_uri.suffix != ".db":  # and no byte of the forgotten crops is left
        for name, blob in folder_bytes(backend_uri).items():
            for path, thumb in doomed.items():
                assert thumb not in blob, (name, path)
                assert name == "audit.jsonl" or path.encode() not in blob, (name, path)


def test_open_handles_follow_the_switch(tmp_path, crops):
    """A handle opened before a switch serves the new version after it (and refuses the old
    model's queries), through two rebuilds; a kill between the switch and the cleanup is
    finished on open."""
    folder = tmp_path / "g"
    metas = site_crops(crops)
    fill(folder, metas[:-2])
    leftovers = tmp_path / "leftovers"
    shutil.copytree(folder, leftovers)
    third = tiny_card(seed=2, dim=8)
    with open_gallery(folder) as reader, open_gallery(folder, OLD) as old_model:
        with open_gallery(folder) as gallery:
            rebuild(gallery, embed_with(NEW), NEW)
        assert reader.card == NEW
        assert reader.search(embedding(NEW, metas[0].path), k=1)[0][0].meta == metas[0]
        with pytest.raises(GalleryError, match="weights_digest"):
            old_model.search(embedding(OLD, metas[0].path), k=1)
        reader.add(embedding(NEW, metas[-2].path), metas[-2:-1])  # lands in the new version
        with open_gallery(folder) as gallery:  # v1 -> v2: the folder reader uses is removed
            rebuild(gallery, embed_with(third), third)
        assert not (folder / "v1").exists()
        reader.add(embedding(third, metas[-1].path), metas[-1:])
        assert reader.stats().size == len(metas) and reader.card == third
    for name in ("meta.sqlite", "vectors.0.f32", "ids.0.i8"):  # as a kill would leave them
        shutil.copy(leftovers / name, folder / name)
    (folder / "v1").mkdir()
    shutil.copy(leftovers / "meta.sqlite", folder / "v1" / "meta.sqlite")
    with open_gallery(folder, third) as gallery:
        assert gallery.stats().size == len(metas)
        assert gallery.search(embedding(third, metas[0].path), k=1)[0][0].meta == metas[0]
    assert sorted(p.name for p in folder.iterdir()) == ["audit.jsonl", "gallery.json", "v2"]


_REBUILD_WORKER = """
import sys
from reidkit.gallery.factory import open_gallery
from reidkit.gallery.rebuild import rebuild
from tests.gallery.test_rebuild import NEW, embed_with

def progress(n):
    print(n, flush=True)

with open_gallery(sys.argv[1]) as gallery:
    rebuild(gallery, embed_with(NEW, progress), NEW)
"""


def test_sigkill_during_a_rebuild_then_rerun(tmp_path, crops):
    folder = tmp_path / "g"
    metas = site_crops(crops)
    fill(folder, metas)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    worker = subprocess.Popen(
        [sys.executable, "-c", _REBUILD_WORKER, str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    for _ in range(3):
        worker.stdout.readline()
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    with open_gallery(folder, OLD) as gallery:
        assert gallery.stats().size == len(metas)  # still the old version, whole
        assert gallery.search(embedding(OLD, metas[7].path), k=1)[0][0].meta == metas[7]
        result = rebuild(gallery, embed_with(NEW), NEW)
    assert 0 < result.embedded < len(metas)
    with open_gallery(folder, NEW) as gallery:
        assert sorted(snapshot(gallery)) == sorted(m.path for m in metas)
