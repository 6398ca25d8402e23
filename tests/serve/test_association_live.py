"""Live association through real servers: closing tracks POSTed to /v1/tracks get the ids the
offline assigner's online replay gives, even split over two server processes sharing one
gallery; corrections are polled by sequence; writes need the write scope."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidkit.association.cluster import associate_site
from reidkit.association.constraints import TrackSet
from reidkit.association.features import track_embeddings
from reidkit.association.online import final_identity, replay
from reidkit.association.readers import read_tracks
from reidkit.association.site import load_site
from reidkit.association.tracks import split_at_gaps
from reidkit.gallery.factory import open_gallery
from reidkit.gallery.store import CropMeta
from tests.association.conftest import make_synthetic_site
from tests.conftest import empty_spec, run_cli


@pytest.fixture(scope="module")
def calibrated_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A synthetic 4-camera site with 64-d embeddings (the served model's width), associated
    offline by the CLI: (site folder, its calibration.json)."""
    folder = make_synthetic_site(
        tmp_path_factory.mktemp("live-site"), cameras=4, tracks=80, hours=1, dim=64, seed=3
    )
    result = run_cli(
        "associate", "-e", str(empty_spec(folder)), f"results_dir={folder / 'out'}",
        f"associate.site={folder / 'site.yaml'}", f"associate.tracks={folder / 'tracks.jsonl'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    calibration = folder / "out" / "associate" / "calibration.json"
    assert json.loads(calibration.read_text())["threshold"] is not None
    return folder, calibration


def _site_tracks(folder: Path) -> tuple[list, TrackSet, object]:
    site = load_site(folder / "site.yaml")
    tracks = split_at_gaps(read_tracks(site, folder / "tracks.jsonl"), 2.0)
    embeddings, _ = track_embeddings(tracks, site, embedder=None, transform=None, full_height=256)
    return tracks, TrackSet.from_tracks(tracks, embeddings, site.names), site


def test_replay_through_two_servers_matches_the_offline_replay(
    calibrated_site, start_server, tokens, tmp_path
) -> None:
    folder, calibration = calibrated_site
    tracks, track_set, site = _site_tracks(folder)
    _, learned, _ = associate_site(track_set, site.min_transit_matrix())
    expected, _ = replay(track_set, site.min_transit_matrix(), learned)

    gallery = tmp_path / "gallery"
    option = f"serve.association_calibration={calibration}"
    servers = [start_server(gallery, option), start_server(gallery, option)]
    writers = [s.client(tokens.write) for s in servers]
    given, renamed, seqs = {}, {}, []
    for n, i in enumerate(np.argsort(track_set.end, kind="stable").tolist()):
        track = tracks[i]
        body = {
            "camera": track.camera,
            "track_id": f"{track.track_id}.{track.part}",
            "start": track.start,
            "end": track.end,
            "embeddings": [track_set.embeddings[i].tolist()],
        }
        response = writers[n % 2].post("/v1/tracks", json=body)  # the two share one state
        assert response.status_code == 200, response.text
        answer = response.json()
        given[i] = answer["global_id"]
        renamed |= {c["absorbed"]: c["kept"] for c in answer["corrections"]}
        seqs.append(answer["seq"])
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    live = np.array([final_identity(given[i], renamed) for i in range(len(tracks))])
    np.testing.assert_array_equal(live, expected)
    assert len(set(live.tolist())) < len(tracks)  # identities joined tracks across cameras

    # corrections polled by sequence: every merge the answers reported, from either server
    reader = servers[1].client(tokens.search)
    polled = reader.get("/v1/corrections", params={"since": 0}).json()
    assert {(c["absorbed"], c["kept"]) for c in polled["corrections"]} == set(renamed.items())
    assert polled["last_seq"] == seqs[-1]
    later = reader.get("/v1/corrections", params={"since": polled["last_seq"]}).json()
    assert later == {"corrections": [], "last_seq": polled["last_seq"]}


def test_writes_need_the_write_scope_and_bad_tracks_are_refused(
    calibrated_site, start_server, tokens, tmp_path
) -> None:
    _, calibration = calibrated_site
    server = start_server(tmp_path / "gallery", f"serve.association_calibration={calibration}")
    body = {"camera": "0", "track_id": "7", "start": 100.0, "end": 104.0,
            "embeddings": [[1.0] + [0.0] * 63]}  # fmt: skip
    assert server.client().post("/v1/tracks", json=body).status_code == 401
    refused = server.client(tokens.search).post("/v1/tracks", json=body)
    assert refused.status_code == 403 and "write" in refused.json()["detail"]
    assert server.client(tokens.search).get("/v1/corrections").json()["last_seq"] == 0
    writer = server.client(tokens.write)
    for bad, says in [
        ({**body, "camera": "roof"}, "camera 'roof' is not in the calibrated site"),
        ({**body, "embeddings": [[1.0, 0.0]]}, "rows of 64 numbers"),
        ({**body, "embeddings": [[0.0] * 64]}, "not all zeros"),
        ({**body, "crops": ["aGVsbG8="]}, "exactly one"),
        ({k: v for k, v in body.items() if k != "embeddings"} | {"crops": ["%%"]}, "not base64"),
        ({**body, "start": 200.0}, "ends before it starts"),
    ]:
        response = writer.post("/v1/tracks", json=bad)
        assert response.status_code == 422 and says in response.text, response.text
    # crops instead of embeddings: the served model embeds them
    encoded = []
    for colour in [(200, 30, 30), (190, 40, 35)]:
        buffer = io.BytesIO()
        Image.new("RGB", (32, 64), colour).save(buffer, format="JPEG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode())
    with_crops = {k: v for k, v in body.items() if k != "embeddings"} | {"crops": encoded}
    answer = writer.post("/v1/tracks", json=with_crops)
    assert answer.status_code == 200 and answer.json()["global_id"] >= 1, answer.text
    assert answer.json()["seq"] == 1  # the refused requests logged nothing


def test_a_hits_person_across_cameras(start_server, tokens, tmp_path) -> None:
    gallery_folder = tmp_path / "gallery"
    rng = np.random.default_rng(0)
    metas = [
        CropMeta(f"c{camera}/{n}.jpg", camera, 1_700_000_000.0 + 60 * n, f"t{camera}")
        for n, camera in enumerate([0, 2, 5, 1])
    ]
    with open_gallery(gallery_folder, create=True) as gallery:
        gallery.add(rng.normal(size=(4, 64)).astype(np.float32), metas)
        ids = {c.meta.path: c.crop_id for c in gallery.crops()}
        gallery.assign_identities({ids[m.path]: "17" for m in metas[:3]})
    server = start_server(gallery_folder)  # no calibration: look-ups work without one
    reader = server.client(tokens.search)
    person = reader.get(f"/v1/crops/{ids['c2/1.jpg']}/identity")
    assert person.status_code == 200, person.text
    assert person.json()["global_id"] == "17" and person.json()["cameras"] == [0, 2, 5]
    assert person.json()["crops"] == 3
    assert person.json()["start"].startswith("2023-11-14T22:13:20")
    unknown = reader.get(f"/v1/crops/{ids['c1/3.jpg']}/identity").json()
    assert unknown == {"global_id": None, "cameras": [], "start": None, "end": None, "crops": 0}
    assert server.client().get(f"/v1/crops/{ids['c2/1.jpg']}/identity").status_code == 401
    off = server.client(tokens.write).post(
        "/v1/tracks",
        json={"camera": "0", "track_id": "1", "start": 0, "end": 1, "embeddings": [[1.0] * 64]},
    )
    assert off.status_code == 422 and "association_calibration" in off.text
