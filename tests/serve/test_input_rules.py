"""Requests and files the service and the manifest reader used to take by a guess: a query
parameter sent twice, a key holding a line break, a misspelt metadata field or column, a token
file entry that is not hex. Each is now refused with one line naming what to fix, over real
HTTP to a real server (and, for the rules the manifest shares, by ``read_manifest`` too)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from reidkit.gallery import validation
from reidkit.gallery.ingest import read_manifest
from reidkit.gallery.store import GalleryError
from reidkit.serve.schemas import CropMeta
from reidkit.serve.tokens import create_token
from tests.conftest import assert_one_line_error, run_cli
from tests.serve.conftest import Server, Tokens
from tests.serve.site import Crop, site_crops, upload_form

T0 = datetime(2026, 11, 20, 8, 0, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def crops(synth_root: Path) -> list[Crop]:
    return site_crops(synth_root / "bounding_box_test", T0)


@pytest.fixture(scope="module")
def two_tracks(crops: list[Crop]) -> list[Crop]:
    """The first crop and the first of another track."""
    return [crops[0], next(c for c in crops if c.track != crops[0].track)]


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory,
    onnx_model: Path,
    tokens: Tokens,
    two_tracks: list[Crop],
):
    """A server whose gallery holds two crops of two tracks."""
    server = Server(onnx_model, tmp_path_factory.mktemp("rules") / "gallery", tokens.path)
    with server.client(tokens.write) as writer:
        assert writer.post("/v1/gallery", **upload_form(two_tracks)).status_code == 201
    yield server
    server.kill()


def _size(server: Server, tokens: Tokens) -> int:
    with server.client(tokens.search) as searcher:
        return searcher.get("/v1/gallery/stats").json()["size"]


def _manifest_error(tmp_path: Path, text: str) -> str:
    manifest = tmp_path / "site.csv"
    manifest.write_text(text, newline="")
    with pytest.raises(GalleryError) as refused:
        read_manifest(manifest)
    return str(refused.value)


def test_a_single_valued_query_parameter_given_twice_is_a_422_naming_it(
    site: Server, tokens: Tokens, two_tracks: list[Crop]
) -> None:
    """FastAPI took the last of repeated values: ``?track_id=a&track_id=b`` forgot ``b`` alone
    and answered 200, while the client meant both tracks."""
    first, second = (crop.track for crop in two_tracks)
    with site.client(tokens.admin) as admin:
        for query, name in (
            (f"track_id={first}&track_id={second}", "track_id"),
            ("crop_id=1&crop_id=2", "crop_id"),
            ("older_than=30d&older_than=1h&older_than=2h", "older_than"),
        ):
            response = admin.delete(f"/v1/gallery?{query}")
            assert response.status_code == 422, (query, response.text)
            assert response.json()["detail"].endswith(f"; give {name} once"), response.text
            assert name in response.json()["detail"].split(" is given")[0]
        assert admin.delete("/v1/gallery?track_id=a&track_id=b").json() == {
            "detail": "track_id is given 2 times; give track_id once"
        }
    assert _size(site, tokens) == 2


def test_a_single_valued_form_field_given_twice_is_a_422_naming_it(
    site: Server, tokens: Tokens, crops: list[Crop]
) -> None:
    """A search form with ``k`` twice returned as many hits as the last ``k`` said; a list
    field (``cameras``) still takes every value."""
    form = upload_form(crops[:1])
    with site.client(tokens.search) as searcher:
        repeated = searcher.post(
            "/v1/search", files=form["files"], data={"k": ["1", "2"], "cameras": ["1", "2"]}
        )
        listed = searcher.post("/v1/search", files=form["files"], data={"cameras": ["1", "2"]})
    assert repeated.status_code == 422, repeated.text
    assert repeated.json() == {"detail": "k is given 2 times; give k once"}
    assert listed.status_code == 200, listed.text


def test_head_healthz_answers_like_get(site: Server) -> None:
    """Load balancers probe with HEAD; it was a 405, read as the service being down."""
    with site.client() as anonymous:
        head, get = anonymous.head("/healthz"), anonymous.get("/healthz")
    assert head.status_code == get.status_code == 200
    assert head.headers["content-type"] == get.headers["content-type"] == "application/json"
    assert head.content == b""
    assert get.json()["gallery_size"] == 2


@pytest.mark.parametrize(
    ("key", "what"),
    [
        ("cam1/a\nb.jpg", "a line break ('\\n') at character 7"),
        ("cam1/a\rb.jpg", "a line break ('\\r') at character 7"),
        ("cam1/a\u2028b.jpg", "a line break ('\\u2028') at character 7"),
        ("cam1/a\tb.jpg", "a control character ('\\t') at character 7"),
        ("cam1/a\x1b[2Jb.jpg", "a control character ('\\x1b') at character 7"),
    ],
)
def test_a_key_with_a_line_break_or_control_character_is_refused_by_add_and_manifest(
    site: Server, tokens: Tokens, crops: list[Crop], tmp_path: Path, key: str, what: str
) -> None:
    """An HTTP add stored keys the manifest refused (a line break, a tab, an escape sequence
    that clears the operator's terminal): both now apply one rule, with the same words."""
    form = upload_form(crops[2:3])
    meta = {**json.loads(form["data"]["metadata"])[0], "path": key}
    with site.client(tokens.write) as writer:
        response = writer.post(
            "/v1/gallery", files=form["files"], data={"metadata": json.dumps([meta])}
        )
    assert response.status_code == 422, response.text
    reason = f"path has {what}; remove it (in a manifest: a quote left open?)"
    assert response.json() == {"detail": f"metadata[0.path]: {reason}"}
    assert _size(site, tokens) == 2
    cell = '"' + key.replace('"', '""') + '"'
    message = _manifest_error(tmp_path, f"path,camera,timestamp,track_id\n{cell},1,0,t\n")
    assert message.endswith(f"{reason}; fix that row"), message
    # A track id is typed back to forget a track, so it is held to the same rule.
    meta = {**json.loads(form["data"]["metadata"])[0], "track_id": key}
    with site.client(tokens.write) as writer:
        response = writer.post(
            "/v1/gallery", files=form["files"], data={"metadata": json.dumps([meta])}
        )
    reason = reason.replace("path has", "track_id has")
    assert response.status_code == 422, response.text
    assert response.json() == {"detail": f"metadata[0.track_id]: {reason}"}
    assert _size(site, tokens) == 2
    message = _manifest_error(tmp_path, f"path,camera,timestamp,track_id\na.jpg,1,0,{cell}\n")
    assert message.endswith(f"{reason}; fix that row"), message


def test_an_unknown_metadata_field_is_a_422_listing_the_known_ones(
    site: Server, tokens: Tokens, crops: list[Crop]
) -> None:
    """``trackid`` for ``track_id`` was dropped: the crop was stored untracked, with a 201."""
    form = upload_form(crops[2:3])
    meta = json.loads(form["data"]["metadata"])[0]
    meta["trackid"] = meta.pop("track_id")
    with site.client(tokens.write) as writer:
        response = writer.post(
            "/v1/gallery", files=form["files"], data={"metadata": json.dumps([meta])}
        )
    assert response.status_code == 422, response.text
    assert response.json() == {
        "detail": "metadata[0]: unknown field(s) 'trackid'; the known fields are path, camera, "
        "timestamp, track_id, site, zone"
    }
    assert _size(site, tokens) == 2
    # The list the message gives is the request model's own fields.
    assert sorted(CropMeta.model_fields) == sorted(validation.CROP_FIELDS)


def test_an_unknown_manifest_column_is_refused_naming_file_column_and_known_ones(
    tmp_path: Path,
) -> None:
    """A misspelt optional column (``zones``) was ignored with its cells: every crop was
    stored without its zone."""
    message = _manifest_error(
        tmp_path, "path,camera,timestamp,track_id,zones,Site\na.jpg,1,0,t,door,north\n"
    )
    assert message == (
        f"{tmp_path / 'site.csv'}:1: unknown column(s) 'zones', 'Site'; the known columns are "
        "path, camera, timestamp, track_id, site, zone; fix the header"
    )


def _bad_salt(path: Path) -> None:
    data = json.loads(path.read_text())
    data["tokens"][0]["salt"] = "not hex at all"
    path.write_text(json.dumps(data, indent=2))


def test_a_token_file_with_a_salt_that_is_not_hex_stops_the_server_with_one_line(
    tmp_path: Path, onnx_model: Path
) -> None:
    """The server started with such a file and answered that token's requests with a 500."""
    tokens = tmp_path / "tokens.json"
    create_token(tokens, "desk", ["search"])
    _bad_salt(tokens)
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"results_dir: {tmp_path / 'results'}\nserve:\n  threads: 1\n")
    result = run_cli(
        "serve", "-e", str(spec), f"serve.model={onnx_model}",
        f"serve.gallery_uri={tmp_path / 'g'}", f"serve.token_file={tokens}", timeout=120,
    )  # fmt: skip
    assert_one_line_error(result, f"token file '{tokens}': token 1 ('desk')", "salt (hex")


def test_a_token_file_spoilt_while_serving_is_a_401_not_a_500(
    tmp_path: Path, onnx_model: Path
) -> None:
    """Re-read after a hand edit, a salt that is not hex was a 500 with a traceback."""
    tokens = tmp_path / "tokens.json"
    token = create_token(tokens, "desk", ["search"])
    server = Server(onnx_model, tmp_path / "gallery", tokens)
    try:
        with server.client(token) as desk:
            assert desk.get("/v1/me").status_code == 200
            _bad_salt(tokens)
            refused = desk.get("/v1/me")
            assert refused.status_code == 401, refused.text
            assert desk.get("/healthz").status_code == 200
    finally:
        server.kill()
    assert "Traceback" not in server.log.read_text()
