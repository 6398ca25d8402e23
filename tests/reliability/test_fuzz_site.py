"""Property-based tests (hypothesis) of what the site verbs parse: one rule for the command line
and HTTP (issue 25).

* a crop's metadata: the manifest reader of ``gallery add`` and the HTTP request model of
  ``POST /v1/gallery`` accept exactly the same camera, time and track id, with the same values,
  and refuse the rest in one line naming ``file:line`` or the field;
* any manifest bytes give crops or one ``file:line`` ``GalleryError``, never another exception;
* a forget's age: any text is refused with a 422 or is an age of at least the documented minimum;
* any DeepStream frame messages give tracks whose every value is usable, or one ``file:line``
  ``SiteError`` (``reidkit associate``'s JSON lines); so do any MOTChallenge and AI City rows;
* any site file gives a site or one ``SiteError`` line;
* ``reidkit associate`` checks its gallery and results folder before it writes its first output.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import yaml
from fastapi import HTTPException
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from reidkit.association.readers import read_tracks
from reidkit.association.site import Site, SiteError, site_from_dict
from reidkit.config.times import within_clock
from reidkit.gallery import validation
from reidkit.gallery.ingest import read_manifest
from reidkit.gallery.store import GalleryError
from reidkit.serve.routes.gallery import _parse_age
from reidkit.serve.schemas import CropMeta
from tests.association.conftest import make_synthetic_site
from tests.conftest import RunMain, assert_one_line_error
from tests.strategies import json_values, mostly, numbers

# As many examples as the profile says (tests/conftest.py): 200 in the suite.
FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Text a CSV file can hold (no lone surrogates); the csv module quotes the rest.
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=140)
moments = st.datetimes(
    min_value=datetime(1000, 1, 1), max_value=datetime(9000, 1, 1), timezones=st.just(timezone.utc)
)
times = st.one_of(
    moments.map(lambda m: m.isoformat()),
    st.floats(-1e11, 1e11, allow_nan=False).map(repr),
    st.integers(-(10**12), 10**13).map(str),
    text,
)
cameras = st.one_of(st.integers(-5, validation.CAMERA_MAX + 5), st.integers())


def _manifest(camera: str, timestamp: str, track: str) -> tuple[bool, object]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "site.csv"
        buffer = io.StringIO(newline="")
        csv.writer(buffer).writerows(
            [["path", "camera", "timestamp", "track_id"], ["a.jpg", camera, timestamp, track]]
        )
        path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
        try:
            (meta,) = read_manifest(path)
        except GalleryError as refused:
            message = str(refused)
            assert message.startswith(f"{path}:") and "\n" not in message, message
            return False, message
        return True, (meta.camera, meta.timestamp, meta.track_id)


def _request(camera: int, timestamp: str, track: str) -> tuple[bool, object]:
    try:
        meta = CropMeta.model_validate(
            {"camera": camera, "timestamp": timestamp, "track_id": track}
        )
    except ValidationError as refused:
        assert refused.errors()[0]["loc"][0] in {"camera", "timestamp", "track_id"}
        return False, refused.errors()[0]["msg"]
    return True, (meta.camera, meta.timestamp.timestamp(), meta.track_id)


@FAST
@given(camera=cameras, timestamp=times, track=text)
@example(camera=-1, timestamp="2026-01-01T00:00:00Z", track="t")
@example(camera=0, timestamp="32503680000", track="t")  # a thousand years away
@example(camera=0, timestamp="1767225600000", track="t")  # milliseconds, not seconds
@example(camera=0, timestamp="0", track=" ")
@example(camera=0, timestamp="0", track="t" * 129)
@example(camera=0, timestamp="0.0078125", track="0")  # below the API's microsecond
def test_manifest_and_http_accept_and_refuse_the_same_crop(
    camera: int, timestamp: str, track: str
) -> None:
    by_file, from_file = _manifest(str(camera), timestamp, track)
    by_http, from_http = _request(camera, timestamp, track)
    assert by_file == by_http, (from_file, from_http)
    if by_file:
        assert from_file == pytest.approx(from_http, abs=1e-6)  # HTTP times are microseconds
        assert 0 <= camera <= validation.CAMERA_MAX
        assert validation.TIME_MIN <= from_file[1] < validation.TIME_MAX
        assert track.strip() == track and 0 < len(track) <= validation.TRACK_ID_MAX


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=400))
@example(body=b"path,camera,timestamp,track_id\n" + b"a.jpg,1,0," + b"t" * 200_000 + b"\n")
@example(body=b"path,camera,timestamp,track_id\na.jpg,1,0\n")
@example(body=b"\xef\xbb\xbfpath,camera,timestamp,track_id\na.jpg,1,1e400,t\n")
def test_any_manifest_bytes_give_crops_or_one_line(body: bytes) -> None:
    header = b"path,camera,timestamp,track_id\n"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "site.csv"
        for content in (body, header + body):
            path.write_bytes(content)
            try:
                metas = read_manifest(path)
            except GalleryError as refused:
                assert "\n" not in str(refused) and str(path) in str(refused)
                continue
            for meta in metas:
                validation.camera(meta.camera)
                validation.timestamp(meta.timestamp)
                assert meta.track_id is not None
                validation.track_id(meta.track_id)


@FAST
@given(age=st.one_of(text, st.from_regex(r"\A-?\d{1,6}[smhdw]?\Z")))
@example(age="0m")
@example(age="59m")
@example(age="1h")
def test_any_forget_age_is_at_least_the_minimum_or_refused(age: str) -> None:
    try:
        parsed = validation.forget_age(_parse_age(age))
    except HTTPException as refused:
        assert refused.status_code == 422 and "\n" not in str(refused.detail)
        return
    except ValueError as refused:
        assert "under the minimum of 1h" in str(refused)
        return
    assert parsed >= validation.MIN_FORGET_AGE


# DeepStream / Metropolis frame messages (``reidkit associate``'s JSON lines): each field either
# as a tracker sends it or any other JSON value, NaN and infinities included.
EDGES = ("leftX", "topY", "rightX", "bottomY")
boxes = st.tuples(st.floats(0, 600), st.floats(0, 400), st.floats(1, 40), st.floats(1, 80)).map(
    lambda b: dict(zip(EDGES, (b[0], b[1], b[0] + b[2], b[1] + b[3]), strict=True))
)
vectors = st.lists(st.floats(-2, 2), min_size=4, max_size=4)
frame_objects = st.fixed_dictionaries(
    {
        "id": mostly(st.sampled_from(["7", 7, "8"]), json_values),
        "bbox": mostly(
            boxes, st.one_of(st.fixed_dictionaries(dict.fromkeys(EDGES, numbers)), json_values)
        ),
    },
    optional={
        "confidence": mostly(st.floats(-1, 1), st.one_of(numbers, json_values)),
        "embedding": mostly(
            st.one_of(vectors, vectors.map(lambda v: {"vector": v})),
            st.one_of(st.lists(st.one_of(numbers, json_values), max_size=5), json_values),
        ),
    },
)
frame_messages = st.fixed_dictionaries(
    {
        "sensorId": mostly(st.just("cam-1"), json_values),
        "timestamp": mostly(st.floats(1.7e9, 1.7e9 + 60), st.one_of(times, numbers, json_values)),
        "objects": mostly(st.lists(frame_objects, max_size=3), json_values),
    },
    optional={"id": mostly(st.integers(0, 100), st.one_of(numbers, json_values))},
)
#: The smallest sound object of a frame message.
DOT = {"id": "7", "bbox": {"leftX": 0.0, "topY": 0.0, "rightX": 1.0, "bottomY": 1.0}}
WIDE = {"leftX": -19416859.0, "topY": 0.0, "rightX": 1, "bottomY": 1}
FRAME_SITE = site_from_dict(
    {"cameras": {"cam-1": {"fps": 30, "frame_base": 0, "width": 640, "height": 480}}}
)


@FAST
@given(messages=st.lists(frame_messages, min_size=1, max_size=4))
@example(messages=[{"sensorId": "cam-1", "timestamp": 1.7e12, "objects": []}])  # milliseconds
@example(  # frame ids forward, the clock backward
    messages=[
        {"sensorId": "cam-1", "timestamp": 1.7e9 - i, "objects": [DOT], "id": i} for i in (1, 2)
    ]
)
@example(  # two tracks embedded by models of two widths
    messages=[
        {
            "sensorId": "cam-1",
            "timestamp": 1.7e9,
            "objects": [DOT | {"id": str(n), "embedding": [1.0] * n} for n in (2, 3)],
        }
    ]
)
@example(  # finite float32 values whose length is not
    messages=[{"sensorId": "cam-1", "timestamp": 1.7e9, "objects": [DOT | {"embedding": [3e38]}]}]
)
@example(messages=[{"sensorId": "cam-1", "timestamp": 1.7e9, "objects": [], "id": math.inf}])
@example(messages=[{"sensorId": "cam-1", "timestamp": 1.7e9, "objects": [], "id": 10**400}])
@example(messages=[{"sensorId": "cam-1", "timestamp": 1.7e9, "objects": [DOT], "id": 2.0**63}])
@example(messages=[{"sensorId": "cam\n1", "timestamp": 1.7e9, "objects": ["\n", "\n|1|2|3|4"]}])
@example(messages=[{"sensorId": "cam-1", "timestamp": 1.7e9, "objects": ["x" * 200 + "|1|2|3|4"]}])
@example(  # float32 rounds this box's right edge onto the frame's left edge
    messages=[{"sensorId": "cam-1", "timestamp": 1.7e9, "objects": [DOT | {"bbox": WIDE}]}]
)
@example(
    messages=[
        {"sensorId": "cam-1", "timestamp": 1.7e9, "objects": [DOT | {"confidence": c}]}
        for c in (2.0, 3.4028235677973366e38)
    ]
)
@example(
    messages=[
        {
            "sensorId": "cam-1",
            "timestamp": 1.7e9,
            "objects": [
                {
                    "id": "7",
                    "bbox": dict.fromkeys(EDGES, 1.0) | {"rightX": 9.0, "bottomY": 9.0},
                    "embedding": [[1.0], [2.0]],
                }
            ],
        }
    ]
)
def test_any_frame_message_gives_sound_tracks_or_one_line(messages: list[dict]) -> None:
    """Whatever a message broker hands over gives tracks whose every value is usable, or one
    ``SiteError`` line naming the file; never another exception, nor a numpy warning (a second
    line on stderr)."""
    text = "".join(json.dumps(m, allow_nan=True) + "\n" for m in messages)
    _assert_sound_tracks_or_one_line(FRAME_SITE, "frames.jsonl", text, as_camera_file=False)


def _row_cell(good: st.SearchStrategy) -> st.SearchStrategy:
    """A text cell: as a tracker writes it three times in four, else any number or word."""
    hostile = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.integers(-(10**30), 10**30).map(str),
        st.sampled_from(["inf", "-inf", "nan", "1e300", "-1", "0", "1.5", "1e-300"]),
        st.text(max_size=6),
    )
    return mostly(good, hostile)


_box_cells = (
    _row_cell(st.floats(0, 600).map(repr)),
    _row_cell(st.floats(0, 400).map(repr)),
    _row_cell(st.floats(1, 40).map(repr)),
    _row_cell(st.floats(1, 80).map(repr)),
)
_ids = _row_cell(st.integers(0, 3).map(str))
_frames = _row_cell(st.integers(1, 50).map(str))
#: A detection's cells: frame, track id, x, y, w, h, and a last number (MOTChallenge's
#: confidence; AI City's world x and y).
row_cells = st.tuples(_frames, _ids, *_box_cells, _row_cell(st.floats(-1, 1).map(repr)))
ROW_CAMERA = {"fps": 30, "frame_base": 1, "width": 640, "height": 480, "clock_origin": 1.7e9}


@FAST
@given(rows=st.lists(row_cells, min_size=1, max_size=6), camera_file=st.booleans())
@example(rows=[("1", "1e200", "0", "0", "1", "1", "0")], camera_file=True)  # a 201-digit id
@example(rows=[("1", "0", "0", "0", "1", "1", "inf")], camera_file=False)  # a world x of inf
def test_any_mot_or_aicity_rows_give_sound_tracks_or_one_line(
    rows: list[tuple[str, ...]], camera_file: bool
) -> None:
    """Whatever a tracker writes in a MOTChallenge file (one camera's ``tracks:``) or an AI City
    file (``associate.tracks``): tracks whose every value is usable, or one ``file:line``
    ``SiteError``."""
    if camera_file:
        text = "".join(",".join(row) + "\n" for row in rows)
        site = {"cameras": {"1": ROW_CAMERA | {"tracks": "tracks.txt"}}}
    else:  # AI City: camera, id, frame, box, world x and y
        text = "".join(" ".join(["1", r[1], r[0], *r[2:6], r[6], r[6]]) + "\n" for r in rows)
        site = {"cameras": {"1": ROW_CAMERA}}
    _assert_sound_tracks_or_one_line(site, "tracks.txt", text, as_camera_file=camera_file)


def _assert_sound_tracks_or_one_line(
    site: Site | dict, name: str, text: str, *, as_camera_file: bool
) -> None:
    """``text`` as a tracks file gives tracks whose every value is usable (ids by the gallery's
    rules, times on the clock, boxes inside the 640x480 frame, confidences in [0, 1], finite
    embeddings and ground positions), or one ``SiteError`` line naming the file; never another
    exception, nor a numpy warning (a second line on stderr)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_text(text)
        if isinstance(site, dict):
            site = site_from_dict(site, folder)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                tracks = read_tracks(site) if as_camera_file else read_tracks(site, path)
            except SiteError as refused:
                assert "\n" not in str(refused) and str(path) in str(refused), str(refused)
                return
    widths = {t.embeddings.shape[1] for t in tracks if t.embeddings is not None}
    assert len(widths) <= 1, widths  # one model's embeddings, or no distance means anything
    for track in tracks:
        validation.track_id(track.track_id)
        assert np.isfinite(track.times).all() and (np.diff(track.frames) > 0).all()
        assert (np.diff(track.times) >= 0).all()  # splitting at gaps and pooling assume it
        for seconds in track.times:
            within_clock(float(seconds))
        x, _, w, h = track.boxes.T
        assert (w > 0).all() and (h > 0).all() and (x + w > 0).all() and (x < 640).all()
        assert ((track.confidence >= 0) & (track.confidence <= 1)).all()
        if track.ground is not None:
            assert not np.isinf(track.ground).any()  # NaN: no position
        if track.embeddings is not None:
            rows = track.embeddings[~np.isnan(track.embeddings).all(1)]
            assert np.isfinite(rows).all() and (np.abs(rows).sum(1) > 0).all()
            with np.errstate(all="ignore"):  # the length pooling divides by, as it computes it
                lengths = np.linalg.norm(rows, axis=1)
            assert (np.isfinite(lengths) & (lengths >= 1e-6)).all(), lengths


_identity = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
_site_camera = st.fixed_dictionaries(
    {
        "fps": mostly(st.just(25), st.one_of(numbers, json_values)),
        "frame_base": mostly(st.just(0), json_values),
    },
    optional={
        "clock_origin": mostly(
            st.just("2024-05-01T08:00:00Z"), st.one_of(numbers, json_values, st.text(max_size=20))
        ),
        "width": mostly(st.just(640), st.one_of(numbers, json_values)),
        "height": mostly(st.just(480), st.one_of(numbers, json_values)),
        "homography": mostly(
            st.just(_identity),
            st.one_of(
                st.lists(st.lists(numbers, min_size=3, max_size=3), min_size=3, max_size=3),
                json_values,
            ),
        ),
    },
)
_camera_names = mostly(st.sampled_from(["a", "b", "c"]), st.text(max_size=6))
_transit = st.fixed_dictionaries(
    {
        "cameras": mostly(st.lists(_camera_names, min_size=2, max_size=2), json_values),
        "min_s": mostly(st.floats(0, 100), st.one_of(numbers, json_values)),
    },
    optional={
        "max_s": mostly(st.floats(100, 200), st.one_of(numbers, json_values)),
        "both_ways": json_values,
    },
)
site_files = st.fixed_dictionaries(
    {
        "cameras": mostly(
            st.dictionaries(_camera_names, _site_camera, min_size=1, max_size=3), json_values
        )
    },
    optional={
        "transit": mostly(st.lists(_transit, max_size=3), json_values),
        "ground_gate": mostly(st.floats(0.1, 5), st.one_of(numbers, json_values)),
    },
)


@FAST
@given(data=st.one_of(site_files, json_values))
@example(data={"cameras": {"\n": {"fps": 25, "frame_base": None}}})  # a key holding a newline
@example(  # the determinant of this invertible homography overflows float64
    data={
        "cameras": {
            "a": {
                "fps": 25,
                "frame_base": 0,
                "homography": [[0, 0, 1.7e302], [0, 200, 0], [5541, 0, 0]],
            }
        }
    }
)
@example(
    data={
        "cameras": {"a\nb": {"fps": 25, "frame_base": 0}},
        "transit": [{"cameras": ["x", "y"], "min_s": 1}],
    }
)
def test_any_site_file_gives_a_site_or_one_line(data: object) -> None:
    """Whatever a site file's YAML holds (what ``load_site`` hands over once the YAML is read):
    a site, or one ``SiteError`` line, even where a key or camera name holds a newline; never
    another exception, nor a numpy warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            site = site_from_dict(data, tempfile.gettempdir())
        except SiteError as refused:
            assert "\n" not in str(refused), str(refused)
            return
    assert site.cameras and all(camera.fps > 0 for camera in site.cameras.values())


@pytest.fixture(scope="module")
def small_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic site whose tracks bring their embeddings (no model), made by the CLI."""
    return make_synthetic_site(
        tmp_path_factory.mktemp("site"), cameras=2, tracks=12, hours=0.2, dim=16, seed=5
    )


def test_associate_checks_the_gallery_and_its_folder_before_writing_anything(
    small_site: Path, tmp_path: Path, run_main: RunMain
) -> None:
    """Both were found only after global_ids.csv and mot/ were written (exit 2 with a folder
    half this run's, half the previous one's); each is now one line with nothing written."""
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"associate:\n  site: {small_site / 'site.yaml'}\n  tracks: {small_site / 'tracks.jsonl'}\n"
    )
    site = ["-e", str(spec)]
    folder = tmp_path / "results" / "associate"
    result = run_main("associate", *site, f"results_dir={tmp_path / 'results'}",
                      f"associate.gallery={tmp_path / 'no_gallery'}")  # fmt: skip
    assert_one_line_error(result, "no_gallery", "is not a gallery")
    assert not (folder / "global_ids.csv").exists() and not (folder / "mot").exists()
    (folder / "timeline.png").mkdir(parents=True)  # a folder where a file goes
    result = run_main("associate", *site, f"results_dir={tmp_path / 'results'}")
    assert_one_line_error(result, str(folder), "'timeline.png' of the wrong kind")
    assert not (folder / "global_ids.csv").exists() and not (folder / "mot").exists()
    (folder / "timeline.png").rmdir()
    assert run_main("associate", *site, f"results_dir={tmp_path / 'results'}").returncode == 0
    assert (folder / "global_ids.csv").is_file() and (folder / "timeline.png").is_file()


def test_associate_refuses_two_cameras_that_make_one_file_name(
    small_site: Path, tmp_path: Path, run_main: RunMain
) -> None:
    """``a/b`` and ``a_b`` are both written to mot/a_b.txt: the second silently replaced the
    first camera's MOT file."""
    site = yaml.safe_load((small_site / "site.yaml").read_text())
    first, second = list(site["cameras"])
    site["cameras"] = {"a/b": site["cameras"][first], "a_b": site["cameras"][second]}
    for window in site["transit"]:
        window["cameras"] = [{first: "a/b", second: "a_b"}[c] for c in window["cameras"]]
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(site))
    renamed = {first: "a/b", second: "a_b"}
    with open(small_site / "tracks.jsonl") as source, open(tmp_path / "t.jsonl", "w") as out:
        for line in source:
            message = json.loads(line)
            out.write(json.dumps(message | {"sensorId": renamed[message["sensorId"]]}) + "\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"associate:\n  site: {tmp_path / 'site.yaml'}\n  tracks: {tmp_path / 't.jsonl'}\n"
    )
    result = run_main("associate", "-e", str(spec), f"results_dir={tmp_path / 'results'}")
    assert_one_line_error(result, "site.yaml", "'a/b' and 'a_b'", "mot/a_b.txt")
    assert not (tmp_path / "results" / "associate" / "global_ids.csv").exists()
