"""A gallery as association's input and output, on both backends: crops with camera, time and
track ids are read as tracks, ``reidkit associate`` writes each track's global id onto its
crops, and ``reidkit gallery forget`` of a global id removes that person in every camera."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from reidkit.association.readers import read_gallery, read_tracks
from reidkit.association.results import gallery_labels
from reidkit.association.site import load_site
from reidkit.association.tracks import Track
from reidkit.cli import main
from reidkit.gallery.factory import open_gallery
from reidkit.gallery.store import CropMeta, StoredCrop
from tests.association.conftest import make_synthetic_site
from tests.conftest import empty_spec


@pytest.fixture(scope="module")
def small_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_site(
        tmp_path_factory.mktemp("site"), cameras=3, tracks=40, hours=0.5, dim=16, seed=1
    )


def _fill(uri: Path, site_folder: Path) -> list[Track]:
    """A gallery holding every detection that brought an embedding, as a crop."""
    site = load_site(site_folder / "site.yaml")
    tracks = read_tracks(site, site_folder / "tracks.jsonl")
    numbers = site.gallery_cameras()
    vectors, metas = [], []
    for track in tracks:
        assert track.embeddings is not None
        for row in np.flatnonzero(np.isfinite(track.embeddings).all(1)):
            vectors.append(track.embeddings[row])
            metas.append(
                CropMeta(
                    path=f"{track.camera}/{track.track_id}/{int(track.frames[row])}.jpg",
                    camera=numbers[track.camera],
                    timestamp=float(track.times[row]),
                    track_id=track.track_id,
                )
            )
    with open_gallery(uri, create=True) as gallery:
        gallery.add(np.stack(vectors), metas)
    return tracks


@pytest.mark.parametrize("backend", ["embedded", "milvus"])
def test_gallery_in_global_ids_onto_its_crops_forget_a_person(
    small_site: Path, tmp_path: Path, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = tmp_path / ("gallery" if backend == "embedded" else "gallery.db")
    tracks = _fill(uri, small_site)
    site = load_site(small_site / "site.yaml")
    from_gallery = read_gallery(str(uri), site)
    assert {(t.camera, t.track_id) for t in from_gallery} == {
        (t.camera, t.track_id) for t in tracks
    }
    # in this process: Milvus Lite lets one process open a .db file
    code = main([
        "associate", "-e", str(empty_spec(tmp_path)), f"results_dir={tmp_path / 'out'}",
        f"associate.site={small_site / 'site.yaml'}", f"associate.tracks={uri}",
        f"associate.gallery={uri}", "associate.max_gap_s=3600",  # crops are sparse samples
    ])  # fmt: skip
    assert code == 0
    assert "global ids written onto" in capsys.readouterr().out
    with open(tmp_path / "out" / "associate" / "global_ids.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected = {(r["camera"], r["track_id"]): r["global_id"] for r in rows}
    with open_gallery(uri) as gallery:
        crops = gallery.crops()
        labels = gallery.identities()
    names = {n: name for name, n in site.gallery_cameras().items()}
    assert len(labels) == len(crops)  # every crop belongs to a track
    for crop in crops:
        key = (names[crop.meta.camera], crop.meta.track_id)
        assert labels[crop.crop_id] == expected[key]
    # the person seen in the most cameras is forgotten everywhere, through the CLI
    cameras_of: dict[str, set[int]] = {}
    for crop in crops:
        cameras_of.setdefault(labels[crop.crop_id], set()).add(crop.meta.camera)
    person = max(cameras_of, key=lambda g: len(cameras_of[g]))
    assert len(cameras_of[person]) >= 2
    mine = [c for c in crops if labels[c.crop_id] == person]
    code = main([
        "gallery", "forget", "-e", str(empty_spec(tmp_path)), f"results_dir={tmp_path / 'f'}",
        f"gallery.uri={uri}", f"gallery.forget_identity=[{person}]", "gallery.operator=dpo",
    ])  # fmt: skip
    assert code == 0
    assert f"global id {person}: {len(mine)} crops in cameras {sorted(cameras_of[person])}" in (
        capsys.readouterr().out
    )
    with open_gallery(uri) as gallery:
        assert len(gallery.crops()) == len(crops) - len(mine)
        assert person not in gallery.identities().values()
        record = [r for r in gallery.audit_log() if r.get("global_id") == person]
    assert record[0]["operator"] == "dpo" and record[0]["removed"] == len(mine)
    assert json.dumps(record[0])  # plain JSON
    code = main([
        "gallery", "forget", "-e", str(empty_spec(tmp_path)), f"results_dir={tmp_path / 'g'}",
        f"gallery.uri={uri}", f"gallery.forget_identity=[{person}]",
    ])  # fmt: skip
    assert code == 2 and f"carries global id '{person}'" in capsys.readouterr().err


def _crop(crop_id: int, camera: int, moment: float, track: str, path: str = "") -> StoredCrop:
    return StoredCrop(crop_id, CropMeta(path or f"x/{crop_id}.jpg", camera, moment, track))


def test_gallery_labels_follow_paths_then_the_part_of_a_split_track() -> None:
    def track(camera: str, track_id: str, start: float, end: float, part: int) -> Track:
        times = np.array([start, end])
        return Track(
            camera, track_id, np.array([0, 1]), times, np.zeros((2, 4), np.float32),
            np.ones(2, np.float32), crops=[Path(f"c/{track_id}-{part}.jpg"), None], part=part,
        )  # fmt: skip

    tracks = [
        track("lobby", "7", 0, 10, 0),
        track("lobby", "7", 50, 60, 1),
        track("gate", "7", 0, 9, 0),
    ]
    crops = [
        _crop(1, 0, 5.0, "7"),  # inside part 0
        _crop(2, 0, 55.0, "7"),  # inside part 1
        _crop(3, 0, 44.0, "7"),  # between: nearer part 1
        _crop(4, 1, 3.0, "7"),  # the other camera's track 7
        _crop(5, 0, 3.0, "8"),  # no such track
        _crop(6, 5, 3.0, None, path="c/7-1.jpg"),  # its path names part 1, whatever else
    ]
    labels = gallery_labels(crops, tracks, [4, 9, 2], {"lobby": 0, "gate": 1})
    assert labels == {1: "4", 2: "9", 3: "9", 4: "2", 6: "9"}
