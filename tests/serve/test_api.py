"""Every /v1 endpoint, status code and limit, over real HTTP to a real server on 127.0.0.1.

One server (module scope) holds a gallery of the synthetic test split; the limit tests start a
second one with small limits. Results are checked against independent references: the
embeddings against onnxruntime fed by the training code's own eval transform, the searches
against brute-force cosine distances with the filters applied in numpy.
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from reidkit.config.loading import load_spec
from reidkit.data.preprocessing import training_preprocessing
from reidkit.data.transforms import build_eval_transform
from tests.serve.conftest import Server, Tokens
from tests.serve.site import Crop, audit_lines, site_crops, upload_form

T0 = datetime(2026, 11, 20, 8, 0, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def crops(synth_root: Path) -> list[Crop]:
    return site_crops(synth_root / "bounding_box_test", T0)


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, onnx_model: Path, tokens: Tokens, crops: list[Crop]
):
    """A server whose gallery holds every test crop (added in two requests), by path key."""
    folder = tmp_path_factory.mktemp("site")
    server = Server(onnx_model, folder / "gallery", tokens.path)
    with server.client(tokens.write) as writer:
        for part in (crops[:30], crops[30:]):
            response = writer.post("/v1/gallery", **upload_form(part))
            assert response.status_code == 201, response.text
            assert response.json() == {
                "added": len(part),
                "already_stored": 0,
                "paths": [c.key for c in part],
            }
    yield server, {crop.key: crop for crop in crops}
    server.kill()


def reference_embeddings(model: Path, paths: list[Path]) -> np.ndarray:
    """Embeddings computed without the server: eval transform + a plain onnxruntime session."""
    spec = load_spec(None, ["model.input_height=64", "model.input_width=32"])
    transform = build_eval_transform(training_preprocessing(spec.model, spec.dataset))
    batch = np.stack([transform(Image.open(p).convert("RGB")).numpy() for p in paths])
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: batch})
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_health_and_openapi_need_no_token(site) -> None:
    server, stored = site
    with server.client() as anonymous:
        health = anonymous.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "gallery_size": len(stored), "embedding_dim": 64}
        paths = anonymous.get("/openapi.json").json()["paths"]
        for path in ("/v1/embed", "/v1/search", "/v1/gallery", "/v1/gallery/stats"):
            assert path in paths
        assert anonymous.get("/v1/crops/1").status_code == 401


def test_page_is_self_contained_and_locked_down(site) -> None:
    server, _ = site
    with server.client() as anonymous:
        assert anonymous.get("/").headers["location"] == "/ui/"
        for path in ("/ui/", "/ui/app.js", "/ui/style.css"):
            response = anonymous.get(path)
            assert response.status_code == 200
            # Nothing from another host (no CDN): the page works offline.
            assert "http://" not in response.text and "https://" not in response.text
            policy = response.headers["content-security-policy"]
            assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert (
            "access-control-allow-origin"
            not in anonymous.get(
                "/healthz", headers={"Origin": "https://elsewhere.example"}
            ).headers
        )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/me"),
        ("GET", "/v1/gallery/stats"),
        ("POST", "/v1/embed"),
        ("POST", "/v1/search"),
        ("POST", "/v1/gallery"),
        ("DELETE", "/v1/gallery?track_id=x"),
        ("GET", "/v1/crops/1"),
    ],
)
def test_no_or_bad_token_is_401(site, tokens: Tokens, method: str, path: str) -> None:
    server, _ = site
    with server.client() as anonymous:
        response = anonymous.request(method, path)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
    forged = tokens.admin[:-4] + "AAAA"
    with server.client(forged) as forger:
        assert forger.request(method, path).status_code == 401


def test_wrong_scope_is_403_and_names_the_scope(site, tokens: Tokens, crops: list[Crop]) -> None:
    server, _ = site
    with server.client(tokens.search) as searcher:
        response = searcher.post("/v1/gallery", **upload_form(crops[:1]))
        assert response.status_code == 403 and "'write' scope" in response.json()["detail"]
        assert searcher.delete("/v1/gallery", params={"track_id": "x"}).status_code == 403
    with server.client(tokens.write) as writer:
        assert writer.get("/v1/gallery/stats").status_code == 403
        assert writer.delete("/v1/gallery", params={"track_id": "x"}).status_code == 403
    with server.client(tokens.admin) as admin:
        assert admin.get("/v1/me").json() == {"name": "privacy-officer", "scopes": ["admin"]}


def test_embed_matches_an_independent_onnxruntime_reference(
    site, tokens: Tokens, crops: list[Crop], onnx_model: Path
) -> None:
    server, _ = site
    chosen = crops[:5]
    with server.client(tokens.search) as searcher:
        response = searcher.post(
            "/v1/embed",
            files=[("images", (c.path.name, c.path.read_bytes(), "image/jpeg")) for c in chosen],
        )
    assert response.status_code == 200, response.text
    served = np.asarray(response.json()["embeddings"])
    assert served.shape == (5, 64)
    reference = reference_embeddings(onnx_model, [c.path for c in chosen])
    np.testing.assert_allclose(served, reference, atol=2e-5)


def _brute_force(stored: dict, vectors: dict, query: np.ndarray, k: int, keep):
    """Keys and squared distances of the k nearest kept crops, in numpy."""
    keys = [key for key in stored if keep(stored[key])]
    distances = np.array([float(np.sum((vectors[key] - query) ** 2)) for key in keys])
    order = np.argsort(distances, kind="stable")[:k]
    return [keys[i] for i in order], distances[order]


@pytest.fixture(scope="module")
def stored_vectors(site, onnx_model: Path) -> dict[str, np.ndarray]:
    _, stored = site
    ids = list(stored)
    vectors = reference_embeddings(onnx_model, [stored[i].path for i in ids])
    return dict(zip(ids, vectors, strict=True))


@pytest.mark.parametrize(
    ("cameras", "window"),
    [(None, None), ([1], None), ([2, 3], (10, 40)), (None, (0, 25))],
)
def test_search_equals_brute_force_with_filters(
    site, tokens: Tokens, stored_vectors: dict, cameras: list[int] | None, window
) -> None:
    server, stored = site
    query_id = next(iter(stored))
    query = stored[query_id]
    form: dict = {"k": "12"}
    if cameras:
        form["cameras"] = [str(c) for c in cameras]
    start = end = None
    if window:
        start, end = (T0 + timedelta(minutes=m) for m in window)
        form.update(start=start.isoformat(), end=end.isoformat())
    with server.client(tokens.search) as searcher:
        response = searcher.post(
            "/v1/search",
            files=[("images", ("q.jpg", query.path.read_bytes(), "image/jpeg"))],
            data=form,
        )
    assert response.status_code == 200, response.text
    body = response.json()

    def keep(crop: Crop) -> bool:
        in_camera = cameras is None or crop.camera in cameras
        in_window = start is None or start <= crop.timestamp <= end
        return in_camera and in_window

    expected_ids, expected_distances = _brute_force(
        stored, stored_vectors, stored_vectors[query_id], 12, keep
    )
    hits = body["hits"]
    assert [h["path"] for h in hits] == expected_ids
    np.testing.assert_allclose([h["distance"] for h in hits], expected_distances, atol=1e-4)
    threshold = body["match_threshold"]
    for hit in hits:
        crop = stored[hit["path"]]
        assert (hit["camera"], hit["track_id"]) == (crop.camera, crop.track)
        assert datetime.fromisoformat(hit["timestamp"]) == crop.timestamp
        if threshold is None:
            assert hit["decision"] is None
        else:
            assert hit["decision"] == ("match" if hit["distance"] <= threshold else "unknown")


def test_search_by_embedding_equals_search_by_image(site, tokens: Tokens) -> None:
    server, stored = site
    crop = list(stored.values())[7]
    image = [("images", ("q.jpg", crop.path.read_bytes(), "image/jpeg"))]
    with server.client(tokens.search) as searcher:
        by_image = searcher.post("/v1/search", files=image, data={"k": "5"}).json()
        vector = searcher.post("/v1/embed", files=image).json()["embeddings"][0]
        by_vector = searcher.post(
            "/v1/search", data={"k": "5", "embedding": json.dumps(vector)}
        ).json()
    assert [h["path"] for h in by_image["hits"]] == [h["path"] for h in by_vector["hits"]]
    assert by_image["hits"][0]["distance"] == pytest.approx(0.0, abs=1e-5)


def test_several_images_search_with_their_mean(site, tokens: Tokens, stored_vectors) -> None:
    server, stored = site
    ids = list(stored)[:3]
    files = [("images", (f"{i}.jpg", stored[i].path.read_bytes(), "image/jpeg")) for i in ids]
    with server.client(tokens.search) as searcher:
        body = searcher.post("/v1/search", files=files, data={"k": "4"}).json()
    mean = np.mean([stored_vectors[i] for i in ids], axis=0)
    mean /= np.linalg.norm(mean)
    expected, _ = _brute_force(stored, stored_vectors, mean, 4, lambda crop: True)
    assert body["queries"] == 3
    assert [h["path"] for h in body["hits"]] == expected


def test_stats_and_thumbnails(site, tokens: Tokens) -> None:
    server, stored = site
    with server.client(tokens.search) as searcher:
        stats = searcher.get("/v1/gallery/stats").json()
        assert stats["size"] == len(stored)
        assert stats["cameras"] == sorted({c.camera for c in stored.values()})
        times = [c.timestamp for c in stored.values()]
        assert datetime.fromisoformat(stats["start"]) == min(times)
        assert datetime.fromisoformat(stats["end"]) == max(times)
        assert (stats["first"], stats["last"]) == (stats["start"], stats["end"])  # deprecated
        query = [("images", ("q.jpg", next(iter(stored.values())).path.read_bytes(), "image/jpeg"))]
        hit = searcher.post("/v1/search", files=query, data={"k": "1"}).json()["hits"][0]
        thumbnail = searcher.get(f"/v1/crops/{hit['crop_id']}")
        assert thumbnail.status_code == 200
        assert thumbnail.headers["content-type"] == "image/jpeg"
        original = Image.open(stored[hit["path"]].path)
        assert Image.open(io.BytesIO(thumbnail.content)).size == original.size
        assert searcher.get("/v1/crops/999999999").status_code == 404
        # Ids are integers, checked before they reach the store, let alone the file system.
        for hostile in ("..%2F..%2Fetc%2Fpasswd", "1.jpg", "%2Fetc%2Fpasswd", "-1"):
            assert searcher.get(f"/v1/crops/{hostile}").status_code in (404, 422)


def test_metrics_count_requests_and_gallery_size(site, tokens: Tokens) -> None:
    server, stored = site
    with server.client(tokens.search) as searcher:
        searcher.get("/v1/gallery/stats")
        text = server.client().get("/metrics").text
    assert f"reidkit_gallery_embeddings {float(len(stored))}" in text
    stats_count = re.search(
        r'reidkit_requests_total\{method="GET",route="/v1/gallery/stats",status="200"\} (\S+)',
        text,
    )
    assert stats_count and float(stats_count.group(1)) >= 1
    assert 'reidkit_request_duration_seconds_bucket{le="0.25",route="/v1/search"}' in text
    assert "reidkit_embed_batch_images_count" in text


def test_bad_search_requests_are_422_with_a_reason(site, tokens: Tokens) -> None:
    server, stored = site
    image = [("images", ("q.jpg", next(iter(stored.values())).path.read_bytes(), "image/jpeg"))]
    cases = [
        ({"files": image, "data": {"k": "101"}}, "over the limit"),
        ({"files": image, "data": {"cameras": "front-door"}}, "cameras"),
        ({"files": image, "data": {"cameras": "9"}}, "camera 9 is not in the gallery"),
        ({"files": image, "data": {"k": "0"}}, "k"),
        ({"data": {"k": "3"}}, "exactly one"),
        ({"files": image, "data": {"embedding": json.dumps([0.0] * 64)}}, "exactly one"),
        ({"data": {"embedding": json.dumps([1.0] * 3)}}, "64 finite numbers"),
        ({"data": {"embedding": "[1, 2"}}, "JSON array"),
        ({"data": {"embedding": json.dumps([0.0] * 64)}}, "all zeros"),
        (
            {"files": image, "data": {"start": "2026-11-21T00:00:00Z", "end": "2026-11-20"}},
            # The command line's words (reidkit.gallery.validation.window), not HTTP's own.
            "the time window starts (2026-11-21T00:00:00Z) after it ends (2026-11-20T00:00:00Z)",
        ),
        (  # the deprecated names of the first API are checked alike
            {"files": image, "data": {"since": "2026-11-21T00:00:00Z", "until": "2026-11-20"}},
            "after it ends",
        ),
        ({"files": image, "data": {"start": "2026-11-20", "since": "2026-11-20"}}, "not both"),
        ({"files": image, "data": {"start": "yesterday"}}, "start"),
        ({"files": [("images", ("x.jpg", b"not an image", "image/jpeg"))]}, "not a readable"),
    ]
    with server.client(tokens.search) as searcher:
        for request, needle in cases:
            response = searcher.post("/v1/search", **request)
            assert response.status_code == 422, (request.get("data"), response.text)
            assert needle in response.text, response.text
            assert str(server.gallery) not in response.text  # no server paths to clients


def test_bad_adds_are_422_and_change_nothing(site, tokens: Tokens, crops: list[Crop]) -> None:
    server, stored = site
    one = upload_form(crops[:1])
    cases = [
        ({"files": one["files"], "data": {"metadata": "[]"}}, "1 images but 0 metadata"),
        ({"files": one["files"], "data": {"metadata": "{"}}, "metadata"),
        (
            {"files": one["files"], "data": {"metadata": json.dumps([{"camera": 1}])}},
            "timestamp",
        ),
        (
            {
                "files": [("images", ("x.png", b"\x89PNG broken", "image/png"))],
                "data": one["data"],
            },
            "image 1",
        ),
    ]
    with server.client(tokens.write) as writer:
        for request, needle in cases:
            response = writer.post("/v1/gallery", **request)
            assert response.status_code == 422, response.text
            assert needle in response.text
    with server.client(tokens.search) as searcher:
        assert searcher.get("/v1/gallery/stats").json()["size"] == len(stored)


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def test_limits_413_and_422(tmp_path: Path, start_server, tokens: Tokens, crops) -> None:
    server: Server = start_server(
        tmp_path / "gallery",
        "serve.max_request_mb=0.0625", "serve.max_image_pixels=40000", "serve.max_images=3",
    )  # fmt: skip
    with server.client(tokens.admin) as admin:
        big = [("images", ("big.jpg", b"\xff" * 70_000, "image/jpeg"))]
        response = admin.post("/v1/embed", files=big)
        assert response.status_code == 413
        assert "limit is 65536" in response.json()["detail"]
        # Chunked upload with no Content-Length: counted as it streams.
        chunks = (b"x" * 10_000 for _ in range(10))
        response = admin.post("/v1/embed", content=chunks, headers={"content-type": "text/plain"})
        assert response.status_code == 413
        wide = [("images", ("wide.png", _png(400, 200), "image/png"))]
        response = admin.post("/v1/embed", files=wide)
        assert response.status_code == 422
        assert "400x200 = 80000 pixels; the limit is 40000" in response.json()["detail"]
        # 144 Mpixel in an 18 KB file: refused from its header, before any decoding.
        bomb = [("images", ("bomb.png", _png(12_000, 12_000), "image/png"))]
        response = admin.post("/v1/embed", files=bomb)
        assert response.status_code == 422
        assert "12000x12000 = 144000000 pixels; the limit is 40000" in response.json()["detail"]
        small = [("images", (c.path.name, c.path.read_bytes(), "image/jpeg")) for c in crops[:4]]
        response = admin.post("/v1/embed", files=small)
        assert response.status_code == 413 and "limit is 3" in response.json()["detail"]
        assert admin.post("/v1/embed", files=small[:3]).status_code == 200


def test_forget_by_crop_track_and_age_is_audited(
    tmp_path: Path, start_server, tokens: Tokens, crops: list[Crop]
) -> None:
    server: Server = start_server(tmp_path / "gallery", "serve.match_threshold=0.006")
    batch = crops[:20]
    with server.client(tokens.write) as writer:
        assert writer.post("/v1/gallery", **upload_form(batch)).json()["added"] == 20
        # The same crops again: their keys are stored, so nothing is added twice.
        again = writer.post("/v1/gallery", **upload_form(batch)).json()
        assert (again["added"], again["already_stored"]) == (0, 20)
    query = [("images", ("q.jpg", batch[1].path.read_bytes(), "image/jpeg"))]
    with server.client(tokens.admin) as admin:

        def stored_paths() -> set[str]:
            hits = admin.post("/v1/search", files=query, data={"k": "50"}).json()["hits"]
            return {hit["path"] for hit in hits}

        # The configured threshold decides match / unknown.
        body = admin.post("/v1/search", files=query, data={"k": "20"}).json()
        assert body["match_threshold"] == 0.006
        decisions = {h["decision"] for h in body["hits"]}
        assert decisions == {"match", "unknown"}, body["hits"]
        for hit in body["hits"]:
            assert hit["decision"] == ("match" if hit["distance"] <= 0.006 else "unknown")

        victim = batch[0]
        response = admin.delete("/v1/gallery", params={"path": victim.key}).json()
        assert response == {"forgotten": 1, "request": {"path": victim.key}, "warning": None}
        track = batch[1].track
        in_track = {c.key for c in batch[1:] if c.track == track}
        response = admin.delete("/v1/gallery", params={"track_id": track})
        assert response.json()["forgotten"] == len(in_track)
        assert stored_paths() == {c.key for c in batch} - {victim.key} - in_track
        left = 20 - 1 - len(in_track)
        # Issue 25: an age of zero (or under the documented hour) is refused, one line, and
        # erases nothing; so is erasing everything without its explicit confirmation.
        for params in (
            {"older_than": "0m"},
            {"older_than": "59m"},
            {"all": "true"},
            {"all": "true", "confirm": "yes"},
            {"all": "true", "confirm": "erase-everything", "track_id": track},
        ):
            refused = admin.delete("/v1/gallery", params=params)
            assert refused.status_code == 422, (params, refused.text)
            assert "\n" not in refused.json()["detail"], refused.text
        assert (
            "older_than: an age of 0s is under the minimum of 1h"
            in admin.delete("/v1/gallery", params={"older_than": "0m"}).json()["detail"]
        )
        assert admin.get("/v1/gallery/stats").json()["size"] == left
        # A forget that matches nothing says so instead of reporting a silent success.
        typo = admin.delete("/v1/gallery", params={"track_id": "no-such-track"}).json()
        assert typo["forgotten"] == 0 and "nothing matched" in typo["warning"]
        # Every crop is dated 2026-11-20, before "now": older than 1 day forgets all but one.
        keep = admin.post("/v1/search", files=query, data={"k": "1"}).json()["hits"][0]
        response = admin.delete("/v1/gallery", params={"crop_id": keep["crop_id"]}).json()
        assert response["forgotten"] == 1 and response["request"] == {"crop_id": keep["crop_id"]}
        response = admin.delete("/v1/gallery", params={"older_than": "1d"}).json()
        assert response["forgotten"] == left - 1 and response["warning"] is None
        assert datetime.fromisoformat(response["request"]["before"]) > T0
        assert admin.get("/v1/gallery/stats").json()["size"] == 0
        for params in ({}, {"track_id": "a", "path": "b"}, {"older_than": "soon"}):
            assert admin.delete("/v1/gallery", params=params).status_code == 422
    with server.client(tokens.write) as writer:
        assert writer.post("/v1/gallery", **upload_form(batch[:3])).json()["added"] == 3
        everything = {"all": "true", "confirm": "erase-everything"}
        assert writer.delete("/v1/gallery", params=everything).status_code == 403
    with server.client(tokens.admin) as admin:
        response = admin.delete("/v1/gallery", params=everything).json()
        assert response == {"forgotten": 3, "request": {"everything": True}, "warning": None}
        assert admin.get("/v1/gallery/stats").json()["size"] == 0
    lines = audit_lines(server.gallery)
    searches = [line for line in lines if "search" in line]
    forgets = [line for line in lines if "forget" in line]
    assert searches and all("privacy-officer" in line for line in searches)
    assert len(forgets) == 6 and all("privacy-officer" in line for line in forgets)
    assert track in forgets[1] and victim.key in forgets[0]


def test_gallery_reopens_consistent_after_kill_mid_add(
    tmp_path: Path, start_server, tokens: Tokens, crops: list[Crop]
) -> None:
    """SIGKILL while three clients keep adding: each add is then wholly there or wholly absent."""
    gallery = tmp_path / "gallery"
    server: Server = start_server(gallery)
    acknowledged: list[int] = []
    counter = iter(range(10**6))

    def next_batch() -> dict:
        """16 crops under fresh keys, so every add stores all 16."""
        form = upload_form(crops[:16])
        metadata = json.loads(form["data"]["metadata"])
        round_ = next(counter)
        for entry in metadata:
            entry["path"] = f"{entry['path']}#{round_}"
        form["data"]["metadata"] = json.dumps(metadata)
        return form

    def keep_adding() -> None:
        with server.client(tokens.write) as writer:
            while True:
                try:
                    response = writer.post("/v1/gallery", **next_batch())
                except httpx.TransportError:
                    return
                assert response.status_code == 201, response.text
                acknowledged.append(response.json()["added"])

    writers = [threading.Thread(target=keep_adding) for _ in range(3)]
    for writer in writers:
        writer.start()
    deadline = time.monotonic() + 20
    while len(acknowledged) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.kill()
    for writer in writers:
        writer.join(timeout=30)
    done = sum(acknowledged)
    assert done >= 4 * 16

    restarted: Server = start_server(gallery)
    with restarted.client(tokens.admin) as admin:
        size = admin.get("/v1/gallery/stats").json()["size"]
        # Acknowledged adds are all there; the (up to 3) in flight are there whole or not at all.
        assert size in {done + extra * 16 for extra in range(4)}, (size, done)
        query = [("images", ("q.jpg", crops[0].path.read_bytes(), "image/jpeg"))]
        hits = admin.post("/v1/search", files=query, data={"k": "100"}).json()["hits"]
        assert len(hits) == min(size, 100)
        for hit in hits[:: max(1, len(hits) // 10)]:
            assert admin.get(f"/v1/crops/{hit['crop_id']}").status_code == 200
        assert admin.post("/v1/gallery", **upload_form(crops[:2])).status_code == 201
        assert admin.get("/v1/gallery/stats").json()["size"] == size + 2


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_json_is_a_4xx_not_a_dropped_connection(
    site, tokens: Tokens, depth: int
) -> None:
    """Issue 25: a deeply nested JSON value (in a form field or as the whole body) is refused
    with a 4xx and a one-line reason; the server answers the next request."""
    server, stored = site
    nested = "[" * depth + "]" * depth
    image = [("images", ("q.jpg", next(iter(stored.values())).path.read_bytes(), "image/jpeg"))]
    with server.client(tokens.admin) as admin:
        answers = [
            admin.post("/v1/search", data={"embedding": nested}),
            admin.post("/v1/gallery", files=image, data={"metadata": nested}),
            admin.post("/v1/search", content=nested, headers={"Content-Type": "application/json"}),
            admin.post("/v1/gallery", content=nested, headers={"Content-Type": "application/json"}),
        ]
        for response in answers:
            assert response.status_code in (413, 422), response.text
            detail = response.json()["detail"]  # one line, or FastAPI's list of field errors
            assert isinstance(detail, list) or "\n" not in detail, detail
        assert admin.get("/healthz").json()["gallery_size"] == len(stored)


def test_an_age_past_the_calendar_is_a_422_and_erases_nothing(
    tmp_path: Path, start_server, tokens: Tokens, crops: list[Crop]
) -> None:
    """``older_than`` beyond what a date holds (over timedelta's 999,999,999 days, a cutoff
    before year 1, more digits than int() reads) was a 500 with a traceback in the log."""
    server: Server = start_server(tmp_path / "gallery")
    with server.client(tokens.write) as writer:
        assert writer.post("/v1/gallery", **upload_form(crops[:2])).json()["added"] == 2
    with server.client(tokens.admin) as admin:
        for age in ("1000000000d", "999999999d", "99999999999s", "9" * 5000 + "d"):
            refused = admin.delete("/v1/gallery", params={"older_than": age})
            assert refused.status_code == 422, (age[:20], refused.text)
            assert refused.json() == {"detail": "older_than reaches back before year 1"}
        assert admin.get("/v1/gallery/stats").json()["size"] == 2
    assert "Traceback" not in server.log.read_text()


def test_query_vectors_are_numbers_searched_by_their_direction(site, tokens: Tokens) -> None:
    """A query vector's booleans are no numbers (``true`` was read as 1), and its finite
    numbers are searched by their direction whatever their scale: a value past 2**63 was a
    500, past float32's range a 422 blaming the model, and 64 values of 3e38 overflowed the
    norm into a zero query, so every hit came back at distance 2.0 with a 200."""
    server, _ = site
    ones, axis = [1.0] * 64, [1.0] + [0.0] * 63
    with server.client(tokens.search) as searcher:

        def hits(vector: str) -> list[tuple[str, float]]:
            response = searcher.post("/v1/search", data={"k": "5", "embedding": vector})
            assert response.status_code == 200, response.text
            return [(h["path"], h["distance"]) for h in response.json()["hits"]]

        for refused in ([True] * 64, [True] + [0.0] * 63, [False, 1.0] + [0.0] * 62):
            response = searcher.post("/v1/search", data={"embedding": json.dumps(refused)})
            assert response.status_code == 422, response.text
            assert "true/false" in response.json()["detail"]
        huge = "[1" + "0" * 400 + "," + ",".join(["0"] * 63) + "]"
        response = searcher.post("/v1/search", data={"embedding": huge})
        assert response.status_code == 422, response.text
        assert "64 finite numbers" in response.json()["detail"]
        scaled_alike = (([3e38] * 64, ones), ([1e-30] * 64, ones), ([1e39, *axis[1:]], axis))
        for scaled, same in scaled_alike:
            found, expected = hits(json.dumps(scaled)), hits(json.dumps(same))
            assert [p for p, _ in found] == [p for p, _ in expected], scaled[:2]
            assert [d for _, d in found] == pytest.approx([d for _, d in expected], abs=1e-5)
    assert "Traceback" not in server.log.read_text()


def test_a_camera_given_as_true_or_false_is_refused(
    site, tokens: Tokens, crops: list[Crop]
) -> None:
    """``"camera": true`` in an add's metadata was stored as camera 1 (and ``false`` as 0):
    lax validation reads a boolean as a number. Refused as the spec files refuse it; a
    camera written as text is still read, as the manifest reads it."""
    server, stored = site
    one = upload_form(crops[:1])
    meta = json.loads(one["data"]["metadata"])[0]
    with server.client(tokens.write) as writer:
        for flag in (True, False):
            bad = {"metadata": json.dumps([{**meta, "camera": flag, "path": f"flag-{flag}"}])}
            response = writer.post("/v1/gallery", files=one["files"], data=bad)
            assert response.status_code == 422, response.text
            assert response.json() == {"detail": "metadata[0.camera]: a number, not true/false"}
    with server.client(tokens.search) as searcher:
        assert searcher.get("/v1/gallery/stats").json()["size"] == len(stored)


def test_a_search_window_in_numbers_is_unix_seconds_as_in_metadata(site, tokens: Tokens) -> None:
    """``start``/``end`` written as numbers are unix seconds, by the rule an add's metadata
    and the manifest use. Pydantic reads numbers past 2e10 as milliseconds: ``start`` of
    32503680000 (the year 3000 in seconds) became January 1971, a window holding every crop."""
    server, stored = site
    latest = max(c.timestamp for c in stored.values())
    vector = json.dumps([1.0] * 64)
    with server.client(tokens.search) as searcher:
        for far in ("32503680000", "1767225600000"):
            response = searcher.post("/v1/search", data={"embedding": vector, "start": far})
            assert response.status_code == 422, (far, response.text)
            assert "unix seconds, not milliseconds" in response.text
        after = str(int(latest.timestamp()))  # the last crop's second: only it is at or after
        response = searcher.post("/v1/search", data={"embedding": vector, "start": after})
        assert [h["timestamp"] for h in response.json()["hits"]] == [
            latest.isoformat().replace("+00:00", "Z")
        ]
