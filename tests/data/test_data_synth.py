"""The synthetic Market-layout dataset: layout, protocol guarantees, determinism and speed."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidkit.data.market import load_split, parse_name
from reidkit.data.synth import FPS, _FrameClock, synthesize
from reidkit.errors import DatasetError


def _digest(root: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(root.rglob("*.jpg")):
        sha.update(path.relative_to(root).as_posix().encode())
        sha.update(path.read_bytes())
    return sha.hexdigest()


def test_default_dataset_is_fast_and_follows_the_market_protocol(tmp_path: Path) -> None:
    start = time.perf_counter()
    summary = synthesize(tmp_path)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0

    train = load_split(tmp_path / "bounding_box_train", "train", keep_distractors=False)
    query = load_split(tmp_path / "query", "query", keep_distractors=False)
    gallery = load_split(tmp_path / "bounding_box_test", "gallery", keep_distractors=True)
    train_ids, query_ids = {r.pid for r in train}, {r.pid for r in query}
    gallery_ids = {r.pid for r in gallery} - {0}

    assert summary["train"] == {"ids": 30, "images": 360} and len(train) == 360
    assert summary["query"]["ids"] == len(query_ids) == 30
    assert summary["query"]["images"] == len(query)
    assert summary["gallery"]["images"] + summary["gallery"]["distractors"] == len(gallery)
    assert not train_ids & gallery_ids and query_ids == gallery_ids
    assert len(train) + len(query) + summary["gallery"]["images"] == 60 * 12
    assert {r.camid for r in train} == {1, 2, 3, 4}
    for q in query:
        assert any(g.pid == q.pid and g.camid != q.camid for g in gallery), q.path.name
    assert len({(r.pid, r.camid) for r in query}) == len(query)  # one query per (id, camera)

    names = [p.name for p in (tmp_path / "bounding_box_test").iterdir()]
    junk = [n for n in names if n.startswith("-1_")]
    distractors = [n for n in names if n.startswith("0000_")]
    assert len(junk) == summary["gallery"]["junk"] >= 2
    assert len(distractors) == summary["gallery"]["distractors"] >= 2
    assert all(parse_name(n) is not None for n in names)
    with Image.open(train[0].path) as image:
        assert image.size == (64, 128) and image.mode == "RGB"


def test_names_carry_a_site_clock_of_hours(tmp_path: Path) -> None:
    """A gallery of the crops spans hours; one person's cameras are seconds apart, not days."""
    synthesize(tmp_path, ids=20, cameras=4, images_per_id=6, height=32, width=16)
    sightings: dict[str, list[int]] = {}
    for path in tmp_path.rglob("*.jpg"):
        pid, _, frame, _ = path.name.split("_")
        sightings.setdefault(pid, []).append(int(frame))
    frames = sorted(f for pid_frames in sightings.values() for f in pid_frames)
    assert len(set(frames)) == len(frames)  # one clock: no two crops share a frame
    assert 0.5 < (frames[-1] - frames[0]) / FPS / 3600 < 999_999 / FPS / 3600
    for pid, own in sightings.items():
        if pid in ("0000", "-1"):
            continue  # nobody's sightings: each one its own arrival
        gaps = np.diff(sorted(own)) / FPS
        assert len(gaps) == 5 and (gaps >= 3 - 1 / FPS).all() and (gaps <= 40 + 1 / FPS).all()


def test_a_large_sites_clock_still_fits_six_digits() -> None:
    clock = _FrameClock(arrivals=2_000, transits=20_000, seed=0)
    frames = [clock.tick(arrival=i % 11 == 0) for i in range(22_000)]
    assert (np.diff(frames) > 0).all()
    assert frames[-1] <= 999_999


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    kwargs = {"ids": 6, "cameras": 3, "images_per_id": 4, "height": 48, "width": 24}
    synthesize(tmp_path / "a", seed=4, **kwargs)
    synthesize(tmp_path / "b", seed=4, **kwargs)
    synthesize(tmp_path / "c", seed=5, **kwargs)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_images_of_one_identity_agree_more_than_images_of_two(small_synth: Path) -> None:
    """The look is a learnable cue: same-id crops are closer in colour than different-id ones."""
    records = load_split(small_synth / "bounding_box_train", "train", keep_distractors=False)
    feats = []
    for r in records:
        with Image.open(r.path) as image:
            pixels = np.asarray(image, dtype=np.float32)
        centre = pixels[pixels.shape[0] // 4 : 3 * pixels.shape[0] // 4, 8:-8]
        feats.append(np.concatenate([centre.mean((0, 1)), centre.std((0, 1))]))
    feats_arr = np.asarray(feats)
    pids = np.asarray([r.pid for r in records])
    dist = np.linalg.norm(feats_arr[:, None] - feats_arr[None], axis=-1)
    same = pids[:, None] == pids[None]
    off_diagonal = ~np.eye(len(pids), dtype=bool)
    assert dist[same & off_diagonal].mean() < 0.8 * dist[~same].mean()
    # ...but not trivially: camera effects make some same-id pairs differ a lot.
    assert dist[same & off_diagonal].max() > np.median(dist[~same]) * 0.5


def test_custom_size_and_cameras(tmp_path: Path) -> None:
    summary = synthesize(tmp_path, ids=5, cameras=6, images_per_id=6, height=96, width=40)
    assert summary["train"]["ids"] == 3 and summary["query"]["ids"] == 2
    query = load_split(tmp_path / "query", "query", keep_distractors=False)
    with Image.open(query[0].path) as image:
        assert image.size == (40, 96)


def test_refuses_to_mix_into_an_existing_dataset(tmp_path: Path) -> None:
    synthesize(tmp_path, ids=2, cameras=2, images_per_id=2, height=32, width=16)
    with pytest.raises(DatasetError, match="is not empty; choose a new output folder"):
        synthesize(tmp_path, ids=2, cameras=2, images_per_id=2, height=32, width=16)


def test_refuses_settings_without_a_cross_camera_match(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cameras >= 2"):
        synthesize(tmp_path, cameras=1)
    with pytest.raises(ValueError, match="query_fraction"):
        synthesize(tmp_path, query_fraction=1.0)
