"""Readers: MOTChallenge, AI City and DeepStream JSON into tracks; every bad row is file:line."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from reidkit.association.features import track_embeddings
from reidkit.association.readers import read_ground_truth, read_tracks
from reidkit.association.site import SiteError, load_site, site_from_dict
from reidkit.association.tracks import split_at_gaps

SITE = {
    "cameras": {
        "c0": {"fps": 10, "frame_base": 1, "width": 640, "height": 480, "tracks": "c0.txt"},
        "c1": {"fps": 10, "frame_base": 0, "width": 640, "height": 480},
    }
}


def mot_site(tmp_path: Path, rows: str):
    (tmp_path / "c0.txt").write_text(rows)
    return site_from_dict(SITE, tmp_path, source="site.yaml")


def test_mot_rows_become_tracks_in_site_time(tmp_path: Path) -> None:
    site = mot_site(
        tmp_path,
        "1,7,10,20,30,60,0.9,-1,-1,-1\n2,7,12,20,30,60,0.8,-1,-1,-1\n"
        "1,8,300,20,30,60,-1,-1,-1,-1\n11,7,14,20,30,60,0.7,-1,-1,-1\n",
    )
    tracks = read_tracks(site)
    by_id = {t.track_id: t for t in tracks}
    assert sorted(by_id) == ["7", "8"]
    seven = by_id["7"]
    assert seven.frames.tolist() == [1, 2, 11]
    assert seven.times.tolist() == pytest.approx([0.0, 0.1, 1.0])  # frame_base 1: frame 1 is t0
    assert seven.boxes[1].tolist() == [12, 20, 30, 60]
    assert by_id["8"].confidence.tolist() == [1.0]  # -1: no confidence given
    parts = split_at_gaps(tracks, max_gap_s=0.5)
    assert sorted((t.track_id, t.part, len(t)) for t in parts) == [
        ("7", 0, 2),
        ("7", 1, 1),
        ("8", 0, 1),
    ]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ("1,7,10,20,30\n", r"c0.txt:1: 5 columns, expected frame,id,x,y,w,h"),
        ("1,7,10,20,30,60\n2,7,a,20,30,60\n", r"c0.txt:2: 'a' is not a number"),
        ("-3,7,10,20,30,60\n", r"c0.txt:1: frame -3 is before camera c0's frame_base 1"),
        ("0,7,10,20,30,60\n", r"c0.txt:1: frame 0 is before .* set cameras.c0.frame_base: 0"),
        (
            "1,7,10,20,30,60\n5,7,10,20,30,60\n3,7,10,20,30,60\n",
            r"c0.txt:3: frame 3 of track 7 does not come after frame 5 \(.*c0.txt:2\)",
        ),
        ("1,7,10,20,30,60\n1,7,10,20,30,60\n", r"c0.txt:2: frame 1 of track 7 does not come after"),
        (
            "1,7,700,20,30,60\n",
            r"c0.txt:1: box \(700, 20, 30, 60\) lies outside camera c0's 640x480",
        ),
        ("1,7,10,20,0,60\n", r"c0.txt:1: box width and height must be > 0"),
        ("1,-1,10,20,30,60\n", r"c0.txt:1: track id -1 is not a tracker id"),
        # float() reads "1_0" as 10: a silently different frame
        ("1,7,10,20,30,60\n1_0,7,10,20,30,60\n", r"c0.txt:2: '1_0' is not a number"),
        ("1e300,7,10,20,30,60\n", r"c0.txt:1: frame 1e\+300 is past 2\*\*53"),  # not 300 digits
    ],
)
def test_bad_mot_rows_are_one_line_naming_file_and_line(
    tmp_path: Path, rows: str, expected: str
) -> None:
    with pytest.raises(SiteError, match=expected):
        read_tracks(mot_site(tmp_path, rows))


def test_aicity_rows_use_world_coordinates_and_refuse_unknown_cameras(tmp_path: Path) -> None:
    site = site_from_dict(
        {"cameras": {"1": {"fps": 10, "frame_base": 0}, "2": {"fps": 10, "frame_base": 1}}}
    )
    path = tmp_path / "aicity.txt"
    path.write_text("1 4 0 10 20 30 60 1.5 2.5\n2 4 1 15 20 30 60 -1 -1\n")
    tracks = read_tracks(site, path)
    assert [(t.camera, t.start) for t in tracks] == [("1", 0.0), ("2", 0.0)]
    assert tracks[0].ground.tolist() == [[1.5, 2.5]]
    assert tracks[1].ground is None  # no world coordinates, no homography
    path.write_text("1 4 0 10 20 30 60 1.5 2.5\n9 4 0 10 20 30 60 1.5 2.5\n")
    with pytest.raises(SiteError, match=r"aicity.txt:2: camera '9' is not in site"):
        read_tracks(site, path)
    # finite, but its squared distance to anyone overflows (a numpy warning, a wrong ground gate)
    path.write_text("1 4 0 10 20 30 60 1.5 2.5\n2 5 1 10 20 30 60 1e308 2.5\n")
    with pytest.raises(SiteError, match=r"aicity.txt:2: world position \(1e\+308, 2.5\) is past"):
        read_tracks(site, path)


def test_deepstream_lines_bring_embeddings_and_time(tmp_path: Path) -> None:
    site = site_from_dict({"cameras": {"cam-1": {"fps": 30, "frame_base": 0}}})
    frames = [
        {
            "version": "4.0",
            "id": "3",
            "@timestamp": "2024-05-01T08:00:00.100Z",
            "sensorId": "cam-1",
            "objects": [
                {
                    "id": "12",
                    "bbox": {"leftX": 10, "topY": 20, "rightX": 40, "bottomY": 80},
                    "type": "Person",
                    "confidence": 0.8,
                    "embedding": {"vector": [0.6, 0.8]},
                },
                "13|100|20|130|80|Person",
            ],
        },
        {
            "id": "4",
            "timestamp": "2024-05-01T08:00:00.133Z",
            "sensorId": "cam-1",
            "objects": [
                {"id": "12", "bbox": {"leftX": 11, "topY": 20, "rightX": 41, "bottomY": 80}}
            ],
        },
    ]
    path = tmp_path / "frames.jsonl"
    path.write_text("\n".join(json.dumps(f) for f in frames) + "\n")
    tracks = {t.track_id: t for t in read_tracks(site, path)}
    twelve = tracks["12"]
    assert twelve.frames.tolist() == [3, 4]
    assert twelve.boxes[0].tolist() == [10, 20, 30, 60]
    assert twelve.start == pytest.approx(1714550400.1)
    assert np.isnan(twelve.embeddings[1]).all() and twelve.embeddings[0].tolist() == pytest.approx(
        [0.6, 0.8]
    )
    assert tracks["13"].embeddings is None and tracks["13"].boxes[0].tolist() == [100, 20, 30, 60]
    # a gap shorter than the 33 ms between the frames cuts off the frame without an embedding:
    # the error names the part and the key that cut it (it blamed the file alone)
    parts = split_at_gaps([twelve], max_gap_s=0.01)
    assert (
        len(track_embeddings(parts[:1], site, embedder=None, transform=None, full_height=256)[0])
        == 1
    )
    with pytest.raises(SiteError, match=r"track 12 \(part 2, after cuts at gaps over associate"):
        track_embeddings(parts, site, embedder=None, transform=None, full_height=256)
    path.write_text('{"sensorId": "cam-9", "timestamp": 1, "objects": []}\n')
    with pytest.raises(SiteError, match=r"frames.jsonl:1: camera 'cam-9' is not in site"):
        read_tracks(site, path)
    path.write_text(
        '{"sensorId": "cam-1", "timestamp": 1, "objects": [{"id": 1, "bbox": {"leftX": 1}}]}\n'
    )
    with pytest.raises(SiteError, match=r"frames.jsonl:1: object 1 has a bbox without numeric"):
        read_tracks(site, path)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            '{"sensorId": "cam-1", "timestamp": 1, "objects": [{"id": 1, "bbox": {"leftX": NaN, '
            '"topY": 1, "rightX": 5, "bottomY": 9}}]}',
            r"frames.jsonl:1: box \(nan, 1, nan, 8\) is not finite",
        ),
        (
            '{"sensorId": "cam-1", "timestamp": 1, "objects": [{"id": 1, "confidence": "high", '
            '"bbox": {"leftX": 1, "topY": 1, "rightX": 5, "bottomY": 9}}]}',
            r"frames.jsonl:1: object 1's confidence 'high' is not a finite number",
        ),
        ('{"a": ' * 100_000 + "1" + "}" * 100_000, r"frames.jsonl:1: JSON nested too deep"),
        (
            '{"sensorId": "cam-1", "timestamp": 1714550400123, "objects": []}',
            r"frames.jsonl:1: time 1714550400123 is outside 1970..2200 \(unix seconds, not milli",
        ),
        (
            '{"sensorId": "cam-1", "timestamp": 1, "objects": [{"id": null, '
            '"bbox": {"leftX": 1, "topY": 1, "rightX": 5, "bottomY": 9}}]}',
            r"frames.jsonl:1: object id None is neither text nor a whole number",
        ),
        (
            '{"sensorId": "cam-1", "timestamp": 1, "objects": [{"id": 1, "embedding": [[1], [2]], '
            '"bbox": {"leftX": 1, "topY": 1, "rightX": 5, "bottomY": 9}}]}',
            r"frames.jsonl:1: object 1's embedding holds a non-number",
        ),
        # text and booleans are not numbers, although a cast to float32 reads them as such
        *(
            (
                '{"sensorId": "cam-1", "timestamp": 1, "objects": [{"id": 1, "embedding": '
                + vector
                + ', "bbox": {"leftX": 1, "topY": 1, "rightX": 5, "bottomY": 9}}]}',
                r"frames.jsonl:1: object 1's embedding holds a non-number \(text, true/false",
            )
            for vector in ("[0.5, true]", "[true, false]", '["0.5", 1]', "[null, 1]")
        ),
        (
            '{"sensorId": "cam-1", "timestamp": 1, "objects": [{"id": 1, "embedding": [1e39, 1], '
            '"bbox": {"leftX": 1, "topY": 1, "rightX": 5, "bottomY": 9}}]}',
            r"frames.jsonl:1: object 1's embedding is zero or not a finite float32",
        ),
        ("[1, 2, 3]", r"frames.jsonl:1: not a JSON object; one frame message per line"),
        # json refuses an integer of over 4300 digits with a ValueError that is no JSONDecodeError
        (
            '{"sensorId": "cam-1", "timestamp": 1, "id": ' + "9" * 5000 + ', "objects": []}',
            r"frames.jsonl:1: not a JSON object \(a number too long\); one frame per line",
        ),
        # finite float32 values whose length overflows (or vanishes) where pooling divides by it
        (
            '{"sensorId": "cam-1", "timestamp": 1, "objects": [{"id": 1, "embedding": [1e30, 1], '
            '"bbox": {"leftX": 1, "topY": 1, "rightX": 5, "bottomY": 9}}]}',
            r"frames.jsonl:1: object 1's embedding has length inf, outside \[1e-06",
        ),
        (
            '{"sensorId": "cam-1", "timestamp": 1, "objects": [{"id": 1, "embedding": [1e-44, '
            '1e-44], "bbox": {"leftX": 1, "topY": 1, "rightX": 5, "bottomY": 9}}]}',
            r"frames.jsonl:1: object 1's embedding has length 0, outside \[1e-06",
        ),
        (
            '{"sensorId": "cam-1", "timestamp": 1, "objects": [{"id": 1, "bbox": {"leftX": true, '
            '"topY": 1, "rightX": 5, "bottomY": 9}}]}',
            r"frames.jsonl:1: object 1 has a bbox without numeric leftX",
        ),
        (
            '{"sensorId": "cam-1", "timestamp": 1, "objects": [{"id": "7\\nx", '
            '"bbox": {"leftX": 1, "topY": 1, "rightX": 5, "bottomY": 9}}]}',
            r"frames.jsonl:1: object id '7\\nx' holds a control character",
        ),
    ],
)
def test_hostile_deepstream_lines_are_one_line(tmp_path: Path, message: str, expected: str) -> None:
    site = site_from_dict({"cameras": {"cam-1": {"fps": 30, "frame_base": 0}}})
    path = tmp_path / "frames.jsonl"
    path.write_text(message + "\n")
    with pytest.raises(SiteError, match=expected), warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy warning would be a second line on stderr
        read_tracks(site, path, tracks_format="auto")


def test_deepstream_time_and_embedding_width_must_agree_across_rows(tmp_path: Path) -> None:
    """A message's timestamp gives its time, its id its frame: a track whose frames go forward
    while its clock goes back, or two tracks embedded by models of two widths, is refused at
    its line, not found later without a file to name."""
    site = site_from_dict({"cameras": {"cam-1": {"fps": 30, "frame_base": 0}}})
    path = tmp_path / "frames.jsonl"
    box = {"leftX": 1, "topY": 1, "rightX": 5, "bottomY": 9}

    def write(*rows: tuple[int, float, int, list[float]]) -> None:
        path.write_text(
            "".join(
                json.dumps(
                    {"sensorId": "cam-1", "id": frame, "timestamp": time,
                     "objects": [{"id": track, "bbox": box, "embedding": vector}]}
                ) + "\n"
                for frame, time, track, vector in rows
            )
        )  # fmt: skip

    write((3, 2.0, 1, [1.0, 0.0]), (4, 1.0, 1, [1.0, 0.0]))
    with pytest.raises(SiteError, match=r"frames.jsonl:2: track 1's time 1.000 is before .*:1\)"):
        read_tracks(site, path)
    write((3, 1.0, 1, [1.0, 0.0]), (4, 2.0, 2, [1.0, 0.0, 0.0]))
    with pytest.raises(
        SiteError, match=r"frames.jsonl:2: embeddings of 3 values, but .*frames.jsonl:1 has 2; "
    ):
        read_tracks(site, path)
    write((3, 1.0, 1, [1.0, 0.0]), (4, 1.0, 1, [0.0, 1.0]), (5, 2.0, 2, [0.0, 1.0]))
    assert [t.track_id for t in read_tracks(site, path)] == ["1", "2"]  # equal times are fine


def test_deepstream_tracked_only_objects_count_as_unknown_confidence(tmp_path: Path) -> None:
    """DeepStream marks an object the tracker kept without a detection with confidence -0.1."""
    site = site_from_dict({"cameras": {"cam-1": {"fps": 30, "frame_base": 0}}})
    path = tmp_path / "frames.jsonl"
    box = {"leftX": 1, "topY": 1, "rightX": 5, "bottomY": 9}
    lines = [
        {"sensorId": "cam-1", "timestamp": t, "objects": [{"id": 1, "confidence": c, "bbox": box}]}
        for t, c in ((1, 0.5), (2, -0.1))
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    (track,) = read_tracks(site, path)
    assert track.confidence.tolist() == [0.5, 1.0]
    # the same lines as a Windows editor saves them: a byte-order mark and CRLF are not data
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    (again,) = read_tracks(site, path)
    assert again.confidence.tolist() == [0.5, 1.0] and again.times.tolist() == [1.0, 2.0]


def test_ground_truth_counted_from_the_same_frame_base(tmp_path: Path) -> None:
    (tmp_path / "gt.txt").write_text("1,3,10,20,30,60,1,1,1\n2,3,10,20,30,60,0,1,1\n")
    (tmp_path / "site.yaml").write_text(
        "cameras:\n  c0: {fps: 10, frame_base: 1, ground_truth: gt.txt}\n"
    )
    truth = read_ground_truth(load_site(tmp_path / "site.yaml"))
    assert [t.frames.tolist() for t in truth] == [[1]]  # the ignored row (7th column 0) is skipped
    (tmp_path / "gt.txt").write_text("0,3,10,20,30,60,1,1,1\n")
    with pytest.raises(SiteError, match=r"gt.txt:1: frame 0 is before camera c0's frame_base 1"):
        read_ground_truth(load_site(tmp_path / "site.yaml"))
    (tmp_path / "gt.txt").write_text("# nothing annotated yet\n")  # scoring asked, nothing to score
    with pytest.raises(SiteError, match=r"ground truth .*site.yaml's ground_truth: files holds no"):
        read_ground_truth(load_site(tmp_path / "site.yaml"))
    (tmp_path / "gt.txt").write_text(f"{10**12},3,10,20,30,60,1,1,1\n")  # a frame of year 5138
    with pytest.raises(SiteError, match=r"gt.txt:1: frame 1000000000000 of camera c0: time .* is"):
        read_ground_truth(load_site(tmp_path / "site.yaml"))


def test_a_track_id_cannot_reach_outside_the_crops_folder(tmp_path: Path) -> None:
    from reidkit.association.features import plan_crops

    (tmp_path / "crops").mkdir()
    site = site_from_dict(
        {"cameras": {"c": {"fps": 5, "frame_base": 0, "crops": "crops"}}}, tmp_path
    )
    path = tmp_path / "frames.jsonl"
    path.write_text(
        '{"sensorId": "c", "timestamp": 1, "objects": ["../../etc|1|1|20|40|Person"]}\n'
    )
    with pytest.raises(
        SiteError, match=r"frames.jsonl:1: track id '../../etc' cannot name a folder"
    ):
        plan_crops(read_tracks(site, path), site, per_track=4, full_height=128)


def test_a_line_too_long_to_parse_is_refused_before_it_is_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file within the size limit can be one line of gigabytes, whose parse would exhaust
    memory (a 100 MB line took 1.5 GB): lines are read at most MAX_LINE_CHARS at a time."""
    from reidkit.association import readers

    monkeypatch.setattr(readers, "MAX_LINE_CHARS", 200)
    site = site_from_dict({"cameras": {"cam-1": {"fps": 30, "frame_base": 0}}})
    path = tmp_path / "frames.jsonl"
    box = {"leftX": 1, "topY": 1, "rightX": 5, "bottomY": 9}
    line = {"sensorId": "cam-1", "timestamp": 1, "objects": [{"id": 1, "bbox": box}]}
    path.write_text(json.dumps(line) + "\n")
    assert len(read_tracks(site, path)) == 1
    long = line | {"timestamp": 2, "objects": [{"id": 1, "bbox": box, "embedding": [1.0] * 100}]}
    path.write_text(json.dumps(line) + "\n" + json.dumps(long) + "\n")
    with pytest.raises(SiteError, match=r"frames.jsonl:2: line longer than 200 characters"):
        read_tracks(site, path)
