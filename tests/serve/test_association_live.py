"""Live association through real servers: closing tracks POSTed to /v1/tracks get the ids the
offline assigner's online replay gives, even split over two server processes sharing one
gallery; corrections are polled by sequence; writes need the write scope; an answered track is
in the log after a crash. And the live state itself: tracks decided in groups (one durable
commit each) get exactly the decisions they get one at a time, and a group that fails keeps
nothing of itself."""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from reidkit.association.cluster import associate_site
from reidkit.association.constraints import TrackSet
from reidkit.association.features import track_embeddings
from reidkit.association.online import ClosedTrack, final_identity, replay
from reidkit.association.readers import read_tracks
from reidkit.association.shared import LOG_NAME, Decision, LiveAssociation, load_calibration
from reidkit.association.site import load_site
from reidkit.association.tracks import split_at_gaps
from reidkit.gallery.embedded import SqliteEventLog
from reidkit.gallery.factory import open_gallery
from reidkit.gallery.store import CropMeta
from tests.association.conftest import make_synthetic_site
from tests.conftest import empty_spec, run_cli
from tests.strategies import json_values, mostly, numbers


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


def _body(tracks: list, track_set: TrackSet, i: int) -> dict[str, Any]:
    """Track ``i`` as a pipeline POSTs it: its pooled embedding as the one row."""
    track = tracks[i]
    return {
        "camera": track.camera,
        "track_id": f"{track.track_id}.{track.part}",
        "start": track.start,
        "end": track.end,
        "embeddings": [track_set.embeddings[i].tolist()],
    }


def test_replay_through_two_servers_matches_the_offline_replay(
    calibrated_site, start_server, tokens, tmp_path
) -> None:
    folder, calibration = calibrated_site
    tracks, track_set, site = _site_tracks(folder)
    _, learned, _ = associate_site(track_set, site.min_transit_matrix())
    learned.live_threshold = json.loads(calibration.read_text())["live_threshold"]
    expected, _ = replay(track_set, site.min_transit_matrix(), learned)

    gallery = tmp_path / "gallery"
    option = f"serve.association_calibration={calibration}"
    servers = [start_server(gallery, option), start_server(gallery, option)]
    writers = [s.client(tokens.write) for s in servers]
    given, renamed, seqs = {}, {}, []
    for n, i in enumerate(np.argsort(track_set.end, kind="stable").tolist()):
        response = writers[n % 2].post("/v1/tracks", json=_body(tracks, track_set, i))
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
        ({**body, "embeddings": [[1.0] * 64, [1.0] * 63]}, "rows of 64 numbers"),  # ragged
        ({**body, "embeddings": [[0.0] * 64]}, "not all zeros"),
        ({**body, "crops": ["aGVsbG8="]}, "exactly one"),
        ({k: v for k, v in body.items() if k != "embeddings"} | {"crops": ["%%"]}, "not base64"),
        ({**body, "start": 200.0}, "ends before it starts"),
        ({**body, "start": 1.7e12, "end": 1.7e12}, "outside 1970..2200"),  # milliseconds
        # ground rows out of time order interpolate to nonsense; outside the span, they place
        # the person where the track never saw them: either could join two people by place
        ({**body, "ground": [[103.0, 1.0, 1.0], [101.0, 2.0, 2.0]]}, "in time order"),
        ({**body, "ground": [[101.0, 1.0, 1.0], [104.5, 2.0, 2.0]]}, "within the track's"),
        ({**body, "ground": [[99.0, 1.0, 1.0]]}, "within the track's start..end"),
        # booleans and text are no numbers, though lax validation reads them as 1.0 and 0.5
        ({**body, "embeddings": [[True] + [0.0] * 63]}, "valid number"),
        ({**body, "embeddings": [["0.5"] + [0.0] * 63]}, "valid number"),
        ({**body, "ground": [[101.0, True, 1.0]]}, "valid number"),
        ({**body, "start": True}, "valid number"),
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
    with_crops["ground"] = [[100.0, 1.0, 1.0], [100.0, 1.5, 1.0], [104.0, 2.0, 2.0]]
    answer = writer.post("/v1/tracks", json=with_crops)
    assert answer.status_code == 200 and answer.json()["global_id"] >= 1, answer.text
    assert answer.json()["seq"] == 1  # the refused requests logged nothing


_rows = st.lists(st.lists(st.floats(-2, 2), min_size=64, max_size=64), min_size=1, max_size=3)
#: sound ground rows: the one moment inside every generated span (start <= it <= end)
_positions = st.lists(
    st.tuples(st.just(1.7e9 + 3600), st.floats(-50, 50), st.floats(-50, 50)), max_size=3
)
#: Closing tracks as a pipeline sends them, each field now and then any JSON value instead;
#: now and then crops in place of the embeddings, or a key the API does not have.
track_bodies = st.fixed_dictionaries(
    {
        "camera": mostly(st.sampled_from(["0", "1", "2", "3"]), json_values),
        "track_id": mostly(st.text(min_size=1, max_size=5), json_values),
        "start": mostly(st.floats(1.7e9, 1.7e9 + 3600), st.one_of(numbers, json_values)),
        "end": mostly(st.floats(1.7e9 + 3600, 1.7e9 + 7200), st.one_of(numbers, json_values)),
        "embeddings": mostly(
            _rows, st.one_of(st.lists(st.lists(numbers, max_size=65), max_size=3), json_values)
        ),
    },
    optional={
        "ground": mostly(
            _positions, st.one_of(st.lists(st.lists(numbers, max_size=4), max_size=3), json_values)
        )
    },
).flatmap(
    lambda body: st.sampled_from(
        [body] * 6
        + [body | {"unknown": 1}]
        + [
            {k: v for k, v in body.items() if k != "embeddings"} | {"crops": crops}
            for crops in ([], ["%%"], [""], ["aGVsbG8="])
        ]
    )
)


def test_any_closing_track_gets_an_id_or_a_422_never_a_500(
    calibrated_site, start_server, tokens, tmp_path
) -> None:
    """Whatever a pipeline POSTs to /v1/tracks, NaN and infinities included: a global id, or a
    422 that says why; never a 500, and the server keeps answering. (A validation error whose
    input held an infinity was a 500: the 422 echoed the input, which JSON cannot hold.)"""
    _, calibration = calibrated_site
    server = start_server(tmp_path / "gallery", f"serve.association_calibration={calibration}")
    writer = server.client(tokens.write)
    answered: list[int] = []

    @settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=track_bodies)
    @example(body={"camera": "0", "track_id": "1", "start": 1.7e9, "end": 1.7e9 + 1,
                   "embeddings": [[1.0] * 64], "ground": [[math.inf]]})  # fmt: skip
    def check(body: dict[str, Any]) -> None:
        response = writer.post(
            "/v1/tracks",
            content=json.dumps(body, allow_nan=True),
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code in (200, 422), (response.status_code, response.text)
        if response.status_code == 422:
            assert response.json()["detail"], response.text
        else:
            assert response.json()["global_id"] >= 1, response.text
            answered.append(response.json()["seq"])

    check()
    assert answered == sorted(answered) and len(answered) >= 20  # sound tracks were decided
    assert server.process.poll() is None and "Traceback" not in server.log.read_text()


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


def test_an_answered_track_is_in_the_log_after_a_crash(
    calibrated_site, start_server, tokens, tmp_path
) -> None:
    """Tracks sent at once (so they queue and are decided in groups), then SIGKILL: every
    answer's decision is in the log, and a restarted server carries on from it."""
    folder, calibration = calibrated_site
    tracks, track_set, _ = _site_tracks(folder)
    bodies = [_body(tracks, track_set, i) for i in np.argsort(track_set.end, kind="stable")]
    gallery = tmp_path / "gallery"
    option = f"serve.association_calibration={calibration}"
    server = start_server(gallery, option)
    writer = server.client(tokens.write)
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda body: writer.post("/v1/tracks", json=body), bodies[:48]))
    server.kill()  # no shutdown code runs
    assert all(answer.status_code == 200 for answer in answers), answers[0].text

    log = dict(SqliteEventLog(gallery / f"{LOG_NAME}.sqlite").read(0))
    assert sorted(log) == list(range(1, len(log) + 1))
    seqs = [answer.json()["seq"] for answer in answers]
    assert len(set(seqs)) == len(seqs) and max(seqs) == len(log)
    for body, answer in zip(bodies, answers, strict=False):
        seq, global_id = answer.json()["seq"], answer.json()["global_id"]
        decided = [
            (number, record["identity"])
            for number, record in log.items()
            if number <= seq
            and record["op"] != "merge"
            and record["track"]["key"] == [body["camera"], body["track_id"]]
        ]
        assert len(decided) == 1, body
        merges = {
            record["absorbed"]: record["kept"]
            for number, record in sorted(log.items())
            if record["op"] == "merge" and number <= seq
        }
        assert final_identity(decided[0][1], merges) == global_id

    again = start_server(gallery, option)
    answer = again.client(tokens.write).post("/v1/tracks", json=bodies[48])
    assert answer.status_code == 200 and answer.json()["seq"] > len(log), answer.text


def _live_tracks(folder: Path, live: LiveAssociation) -> list[ClosedTrack]:
    """The site's tracks in closing order, as ``live`` takes them."""
    tracks, track_set, _ = _site_tracks(folder)
    return [
        live.track(
            tracks[i].camera,
            f"{tracks[i].track_id}.{tracks[i].part}",
            tracks[i].start,
            tracks[i].end,
            track_set.embeddings[i],
        )
        for i in np.argsort(track_set.end, kind="stable").tolist()
    ]


class _CommitFails:
    """An event log whose next commit fails, as on a full disk: the log rolls back."""

    def __init__(self, log: SqliteEventLog) -> None:
        self.log = log
        self.fail = False

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self.log.exclusive():
            yield
            if self.fail:
                self.fail = False
                raise OSError("database or disk is full")

    def append(self, records: Sequence[dict[str, Any]]) -> int:
        return self.log.append(records)

    def read(self, after: int) -> list[tuple[int, dict[str, Any]]]:
        return self.log.read(after)

    def close(self) -> None:
        self.log.close()


def test_groups_decide_as_tracks_one_at_a_time_and_a_failed_group_keeps_nothing(
    calibrated_site, tmp_path
) -> None:
    folder, calibration_file = calibrated_site
    calibration = load_calibration(calibration_file)
    alone = LiveAssociation(SqliteEventLog(tmp_path / "alone.sqlite"), calibration, 64)
    flaky = _CommitFails(SqliteEventLog(tmp_path / "grouped.sqlite"))
    grouped = LiveAssociation(flaky, calibration, 64)  # type: ignore[arg-type]
    closing = _live_tracks(folder, alone)
    one_by_one = [alone.decide([track])[0] for track in closing]
    assert all(isinstance(d, Decision) for d in one_by_one)

    # groups of several sizes, in order: the same decisions, the same log
    together: list = []
    start = 0
    for size in [1, 7, 2, 16, 5] * 20:
        together += grouped.decide(closing[start : start + size])
        start += size
        if start >= 60:
            break
    assert together == one_by_one[:start]
    assert flaky.read(0) == alone.log.read(0)[: len(flaky.read(0))]
    end = flaky.read(0)[-1][0]

    # a failed commit: nothing of the group is kept, the mirror is what the log holds, and
    # the tracks, decided again, alone, get what they would have got
    flaky.fail = True
    retried = grouped.decide(closing[start : start + 4])
    assert retried == one_by_one[start : start + 4]  # each again, alone, after the failed group
    assert flaky.read(0) == alone.log.read(0)[: len(flaky.read(0))]
    start += 4

    # a track that cannot be decided (an embedding of the wrong width) fails alone
    broken = ClosedTrack(["0", "broken"], 0, 0.0, 1.0, np.ones(3, dtype=np.float32))
    outcomes = grouped.decide([closing[start], broken, closing[start + 1]])
    assert isinstance(outcomes[1], ValueError)
    assert [outcomes[0], outcomes[2]] == one_by_one[start : start + 2]
    assert flaky.read(0) == alone.log.read(0)[: len(flaky.read(0))]
    assert len(flaky.read(0)) > end


def test_a_resent_track_gets_the_identity_it_got_and_logs_nothing(
    calibrated_site, start_server, tokens, tmp_path
) -> None:
    """A pipeline resending a closing track whose answer never came (here the same track 12
    times at once, over two servers on one gallery) gets one identity, and the log holds the
    track once. Each copy used to be a new identity, cannot-linked to the others for good (one
    camera, one moment): ghosts no later track could merge back."""
    _, calibration = calibrated_site
    gallery = tmp_path / "gallery"
    option = f"serve.association_calibration={calibration}"
    writers = [start_server(gallery, option).client(tokens.write) for _ in range(2)]
    body = {"camera": "1", "track_id": "17", "start": 1.7e9, "end": 1.7e9 + 6.0,
            "embeddings": [[0.5] * 64, [0.4] * 64]}  # fmt: skip
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda n: writers[n % 2].post("/v1/tracks", json=body), range(12)))
    assert all(answer.status_code == 200 for answer in answers), answers[0].text
    assert {(answer.json()["global_id"], answer.json()["seq"]) for answer in answers} == {(1, 1)}
    assert sorted(answer.json()["reason"] for answer in answers) == ["new"] + ["repeat"] * 11
    # the tracker's id again later (a new track of the same id), and a retry of it
    later = {**body, "start": 1.7e9 + 60, "end": 1.7e9 + 66}
    for reason in ("appearance", "repeat"):
        answer = writers[1].post("/v1/tracks", json=later)
        assert answer.status_code == 200, answer.text
        assert (answer.json()["global_id"], answer.json()["reason"]) == (1, reason)
    # the same id over a span that overlaps the decided one without being it: one tracker id
    # at one moment is one person, so it is refused rather than made a second identity
    stretched = writers[0].post("/v1/tracks", json={**body, "end": 1.7e9 + 9.0})
    assert stretched.status_code == 422, stretched.text
    assert "track 17 of camera 1 was decided with the span" in stretched.json()["detail"]
    log = SqliteEventLog(gallery / f"{LOG_NAME}.sqlite").read(0)
    assert [record["op"] for _, record in log] == ["create", "attach"]


def test_a_cursor_past_the_log_end_and_rows_that_cancel_out_are_refused(
    calibrated_site, start_server, tokens, tmp_path
) -> None:
    """``since`` beyond the identity log's end (a cursor of another gallery, or a log restored
    from a backup) was answered back as ``last_seq``, so a consumer skipped every correction
    until the log caught up with it; rows whose mean is zero (a row and its negative) pooled
    to a zero vector, which the camera's standardisation turned into minus its mean: every
    such track of a camera looked alike. Both are 422s now, and log nothing."""
    _, calibration = calibrated_site
    server = start_server(tmp_path / "gallery", f"serve.association_calibration={calibration}")
    reader, writer = server.client(tokens.search), server.client(tokens.write)
    row = [0.5] * 32 + [-0.2] * 32
    body = {"camera": "0", "track_id": "9", "start": 1.7e9, "end": 1.7e9 + 4.0,
            "embeddings": [row, [-x for x in row]]}  # fmt: skip
    cancelled = writer.post("/v1/tracks", json=body)
    assert cancelled.status_code == 422 and "cancel out" in cancelled.text, cancelled.text
    assert reader.get("/v1/corrections").json() == {"corrections": [], "last_seq": 0}
    assert reader.get("/v1/corrections", params={"since": 1}).status_code == 422
    answer = writer.post("/v1/tracks", json={**body, "embeddings": [row]})
    assert answer.status_code == 200 and answer.json()["seq"] == 1, answer.text
    assert reader.get("/v1/corrections", params={"since": 1}).json()["last_seq"] == 1
    for since in (2, 10**12):
        refused = reader.get("/v1/corrections", params={"since": since})
        assert refused.status_code == 422, refused.text
        assert "past the end of the identity log" in refused.json()["detail"]
    assert server.process.poll() is None and "Traceback" not in server.log.read_text()


def test_a_broken_calibration_is_a_422_without_the_servers_path(
    start_server, tokens, tmp_path
) -> None:
    """A calibration file the service cannot use is named by its setting in the 422 a client
    gets, never by where it lies on the server (as gallery errors leave the gallery's out)."""
    broken = tmp_path / "private" / "calibration.json"
    broken.parent.mkdir()
    broken.write_text('{"cameras": [')
    server = start_server(tmp_path / "gallery", f"serve.association_calibration={broken}")
    body = {"camera": "0", "track_id": "1", "start": 1.7e9, "end": 1.7e9 + 1.0,
            "embeddings": [[1.0] * 64]}  # fmt: skip
    for response in (
        server.client(tokens.write).post("/v1/tracks", json=body),
        server.client(tokens.search).get("/v1/corrections"),
    ):
        assert response.status_code == 422, response.text
        assert "serve.association_calibration: not a calibration.json" in response.text
        assert str(tmp_path) not in response.text
