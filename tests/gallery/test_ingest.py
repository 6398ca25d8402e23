"""Crop metadata (Market names, CSV manifests) and embedding real crop files into a gallery."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from PIL import Image

from reidkit.data.preprocessing import resolve_preprocessing
from reidkit.data.transforms import build_eval_transform
from reidkit.gallery.factory import open_gallery
from reidkit.gallery.ingest import (
    add_crops,
    crops_in_folder,
    meta_from_name,
    parse_timestamp,
    read_manifest,
)
from reidkit.gallery.store import GalleryError
from tests.gallery.conftest import TinyEmbedder, tiny_card

ORIGIN = 1_767_225_600.0  # 2026-01-01T00:00:00Z
CARD = tiny_card()


def test_market_name_metadata():
    meta = meta_from_name(Path("/site/0042_c3s2_001250_07.jpg"), ORIGIN)
    assert (meta.camera, meta.track_id) == (3, "0042")
    assert meta.timestamp == ORIGIN + 1250 / 25
    assert meta_from_name(Path("0042_c3s2_001250_07.jpg"), ORIGIN, fps=10).timestamp == ORIGIN + 125
    with pytest.raises(GalleryError, match="not named PPPP_cCsS_FFFFFF_NN"):
        meta_from_name(Path("crop.jpg"), ORIGIN)


def test_timestamps_unix_and_iso():
    assert parse_timestamp("1767225600.5") == ORIGIN + 0.5
    assert parse_timestamp("2026-01-01T00:00:00Z") == ORIGIN
    assert parse_timestamp("2026-01-01T01:00:00+01:00") == ORIGIN
    assert parse_timestamp("2026-01-01 00:00:10") == ORIGIN + 10  # no zone: UTC
    for bad in ("yesterday", "nan", ""):
        with pytest.raises(ValueError):
            parse_timestamp(bad)


def test_manifest_rows_and_bad_rows(tmp_path):
    good = tmp_path / "site.csv"
    good.write_text(
        "path,camera,timestamp,track_id,site,zone\n"
        "a.jpg,1,2026-01-01T00:00:00Z,t1,depot,gate\n"
        "/abs/b.jpg,2,1767225601,t2,,\n"
    )
    first, second = read_manifest(good)
    assert first.path == str((tmp_path / "a.jpg").resolve())
    assert (first.camera, first.timestamp, first.track_id, first.site, first.zone) == (
        1,
        ORIGIN,
        "t1",
        "depot",
        "gate",
    )
    assert (second.path, second.track_id, second.site) == ("/abs/b.jpg", "t2", None)
    cases = {
        "path,camera,timestamp\na.jpg,1,0\n": r"site\.csv:1: missing column\(s\) track_id",
        "path,camera,timestamp,track_id\na.jpg,1,0,t\nb.jpg,x,0,t\n": r"site\.csv:3: camera 'x'",
        "path,camera,timestamp,track_id\na.jpg,1,soon,t\n": r"site\.csv:2: time 'soon'",
        "path,camera,timestamp,track_id\n,1,0,t\n": r"site\.csv:2: path is empty",
        # Issue 25: rows the HTTP API would refuse are refused here too, by file:line.
        "path,camera,timestamp,track_id\na.jpg,1,0,t\nb.jpg,1,0\n": r"csv:3: the row has 3 cells",
        "path,camera,timestamp,track_id\na.jpg,1,0,t,x\n": r"csv:2: the row has 5 cells",
        "path,camera,timestamp,track_id\na.jpg,1,0,\n": r"csv:2: track_id is empty",
        "path,camera,timestamp,track_id\na.jpg,1,0, \n": r"csv:2: track_id is empty",
        "path,camera,timestamp,track_id\na.jpg,-1,0,t\n": r"csv:2: camera -1 is outside",
        "path,camera,timestamp,track_id\na.jpg,1,3000-01-01,t\n": r"csv:2: time .* 1970",
        "path,camera,timestamp,track_id\na.jpg,1,1767225600000,t\n": r"csv:2: .*milliseconds",
        f"path,camera,timestamp,track_id\na.jpg,1,0,{'t' * 129}\n": r"csv:2: track_id is 129",
        f"path,camera,timestamp,track_id\na.jpg,1,0,{'t' * 200_000}\n": r"csv:2: field larger",
    }
    for text, message in cases.items():
        good.write_text(text)
        with pytest.raises(GalleryError, match=message) as err:
            read_manifest(good)
        assert "\n" not in str(err.value)


def test_add_crops_embeds_resumes_and_finds_each_crop(crops, tmp_path):
    metas = crops_in_folder(crops, ORIGIN)
    embedder = TinyEmbedder().eval()
    with open_gallery(tmp_path / "g", CARD, create=True) as gallery:
        assert add_crops(gallery, embedder, CARD, metas[:10], batch_size=4, progress=False) == (
            10,
            0,
        )
        added, skipped = add_crops(gallery, embedder, CARD, metas, batch_size=8, progress=False)
        assert (added, skipped) == (len(metas) - 10, 10)
        assert gallery.contains([metas[0].path, "/nowhere.jpg"]) == [True, False]
        # A crop searched with its own embedding comes back first, with its thumbnail.
        probe = metas[5]
        transform = build_eval_transform(resolve_preprocessing(card=CARD))
        with Image.open(probe.path) as image:
            vector = embedder(transform(image.convert("RGB"))[None])
        hit = gallery.search(vector.detach(), k=1)[0][0]
        assert hit.meta == probe and hit.distance < 1e-5
        thumb = gallery.thumbnail(hit.crop_id)
        assert thumb[:2] == b"\xff\xd8"  # a JPEG
        assert gallery.stats().cameras == (1, 2, 3)


def test_unreadable_crop_refused_gallery_unchanged(crops, tmp_path):
    metas = crops_in_folder(crops, ORIGIN)
    broken = tmp_path / "0001_c1s1_000001_00.jpg"
    broken.write_bytes(b"not a jpeg")
    folder = tmp_path / "g"
    with open_gallery(folder, CARD, create=True) as gallery:
        add_crops(gallery, TinyEmbedder(), CARD, metas[:3], progress=False)
        before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
        bad = [*metas[3:6], meta_from_name(broken, ORIGIN)]
        with pytest.raises(GalleryError, match="not a readable image") as err:
            add_crops(gallery, TinyEmbedder(), CARD, bad, progress=False)
        assert "\n" not in str(err.value)
        assert gallery.stats().size == 3
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    assert after == before


def test_manifest_repeated_columns_repeated_crops_and_line_breaks_refused(tmp_path):
    """A repeated column would silently read its last cell, a crop listed twice would keep the
    first row's camera and time, and a quote left open would swallow lines into a path: each is
    one line naming file:line."""
    manifest = tmp_path / "site.csv"
    cases = {
        "path,path,camera,timestamp,track_id\na.jpg,b.jpg,1,0,t\n": r"csv:1: column\(s\) path",
        "path,camera,timestamp,track_id\na.jpg,1,0,t\nb.jpg,1,0,t\n./a.jpg,2,5,u\n": (
            r"csv:4: crop '.*a\.jpg' is already listed on line 2; list each crop once"
        ),
        'path,camera,timestamp,track_id\n"a.jpg\nb.jpg",1,0,t\n': r"csv:3: path has a line break",
    }
    for text, message in cases.items():
        manifest.write_text(text)
        with pytest.raises(GalleryError, match=message) as err:
            read_manifest(manifest)
        assert "\n" not in str(err.value)


def test_crops_setting_that_names_a_file_says_so(crops):
    crop = next(crops.iterdir())
    with pytest.raises(GalleryError, match=r"gallery\.crops '.*' is a file, not a folder"):
        crops_in_folder(crop, ORIGIN)
