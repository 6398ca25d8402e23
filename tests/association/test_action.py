"""``reidkit associate`` end to end: a DeepStream site through the CLI, crops cut from frames
with a really trained model, and bad input as one line with exit code 2, nothing written."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import reidkit
from reidkit.actions.export import export
from reidkit.cli import main
from reidkit.config.loading import load_spec
from tests.association.conftest import make_synthetic_site
from tests.conftest import assert_one_line_error, empty_spec, run_cli

PEOPLE_COLOURS = {1: (200, 30, 30), 2: (30, 30, 200)}


@pytest.fixture(scope="module")
def synthetic_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic site (DeepStream JSON lines with embeddings), made by the CLI."""
    return make_synthetic_site(
        tmp_path_factory.mktemp("site"), cameras=6, tracks=300, hours=2, dim=32, seed=4
    )


def test_a_deepstream_site_in_global_ids_out(synthetic_site: Path, tmp_path: Path) -> None:
    site = synthetic_site
    result = run_cli(
        "associate", "-e", str(empty_spec(tmp_path)), f"results_dir={tmp_path / 'out'}",
        f"associate.site={site / 'site.yaml'}", f"associate.tracks={site / 'tracks.jsonl'}",
        f"associate.ground_truth={site / 'ground_truth.txt'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "out" / "associate"
    with open(folder / "global_ids.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "camera",
        "track_id",
        "global_id",
        "first_seen",
        "last_seen",
        "n_crops",
    ]
    assert len(rows) == 300 and all(int(r["n_crops"]) >= 1 for r in rows)
    assert rows[0]["first_seen"].endswith("Z") and rows[0]["first_seen"] <= rows[0]["last_seen"]
    mot = sorted(p.name for p in (folder / "mot").iterdir())
    assert len(mot) == 6 and mot[0].endswith(".txt")
    ids_in_csv = {r["global_id"] for r in rows}
    ids_in_mot = {
        line.split(",")[1]
        for p in (folder / "mot").iterdir()
        for line in p.read_text().splitlines()
    }
    assert ids_in_mot == ids_in_csv
    with Image.open(folder / "timeline.png") as image:
        assert image.width == 1200 and image.height > 100
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["IDF1"] == metrics["IDF1_own_count"] and 0 < metrics["IDF1"] <= 100
    assert {"HOTA", "AssA", "DetA", "IDP", "IDR"} <= set(metrics)
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "SUCCESS" and status["kpi"]["IDF1"] == metrics["IDF1"]
    calibration = json.loads((folder / "calibration.json").read_text())
    assert len(calibration["camera_scales"]) == 6
    assert min(min(scale) for scale in calibration["camera_scales"].values()) > 0
    assert len(calibration["site_mean"]) == len(next(iter(calibration["camera_means"].values())))
    assert len(calibration["camera_means"]) == 6 and calibration["threshold_source"] in (
        "site",
        "stability",
    )


def draw_frames(folder: Path, frames: range, people: dict[int, tuple[int, int]]) -> None:
    """Grey frames 96x64 with each person a coloured figure at (x, y) (moving right)."""
    folder.mkdir(parents=True)
    for frame in frames:
        pixels = np.full((64, 96, 3), 120, dtype=np.uint8)
        for pid, (x, y) in people.items():
            x += frame
            pixels[y : y + 40, x : x + 16] = PEOPLE_COLOURS[pid]
            pixels[y : y + 8, x + 4 : x + 12] = (230, 190, 160)
        Image.fromarray(pixels).save(folder / f"{frame:06d}.jpg")


def frames_site(root: Path, frame_base: int = 1) -> Path:
    """Two cameras, 1-based frames; person 1 in both, person 2 beside person 1 in camera a."""
    spans = {"a": {1: (5, 10), 2: (50, 12)}, "b": {1: (20, 8)}}
    for camera, people in spans.items():
        draw_frames(root / camera, range(1, 21), people)
        rows = [
            f"{f},{pid},{x + f},{y},16,40,0.9,-1,-1,-1"
            for f in range(1, 21)
            for pid, (x, y) in people.items()
        ]
        (root / f"{camera}.txt").write_text("\n".join(rows) + "\n")
    cameras = "\n".join(
        f"  {c}:\n    fps: 10\n    frame_base: {frame_base}\n    width: 96\n    height: 64\n"
        f"    tracks: {c}.txt\n    frames: {c}"
        for c in spans
    )
    (root / "site.yaml").write_text(f"cameras:\n{cameras}\n")
    return root / "site.yaml"


@pytest.fixture(scope="module")
def trained_models(trained, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The really trained tiny model as a checkpoint and as its verified ONNX export."""
    spec, checkpoint = trained
    folder = tmp_path_factory.mktemp("exported")
    export_spec = load_spec(
        None, [*model_keys(spec), f"results_dir={folder}", f"export.checkpoint={checkpoint}"]
    )
    return {"pth": checkpoint, "onnx": export(export_spec).onnx_file}


def model_keys(spec) -> list[str]:
    """Overrides that describe the trained model, as a user's spec would."""
    return [f"model.{k}={v}" for k, v in spec.model.model_dump().items() if not isinstance(v, list)]


@pytest.mark.parametrize("kind", ["pth", "onnx"])
def test_crops_cut_from_frames_with_a_trained_model(
    trained, trained_models: dict[str, Path], kind: str, tmp_path: Path
) -> None:
    site = frames_site(tmp_path / "site")
    spec = load_spec(
        None,
        [
            f"results_dir={tmp_path / 'out'}",
            f"associate.site={site}",
            f"associate.checkpoint={trained_models[kind]}",
            "associate.crops_per_track=4",
            *model_keys(trained[0]),
        ],
    )
    result = reidkit.associate(spec)
    assert result.tracks == 3 and 2 <= result.identities <= 3
    # 20 shared frames prove one pair different: too few to learn a threshold from
    assert result.threshold_source == "stability"
    with open(result.results_dir / "global_ids.csv", newline="") as handle:
        rows = {(r["camera"], r["track_id"]): r for r in csv.DictReader(handle)}
    assert rows[("a", "1")]["global_id"] != rows[("a", "2")]["global_id"]  # same camera, same time
    assert {r["n_crops"] for r in rows.values()} == {"4"}


def test_bad_input_is_one_line_and_writes_nothing(
    synthetic_site: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's own ``main`` in this process (the subprocess path is the first test's)."""
    site = frames_site(tmp_path / "site")
    out = tmp_path / "out"
    spec = str(empty_spec(tmp_path))

    def associate(*overrides: str) -> subprocess.CompletedProcess[str]:
        code = main(["associate", "-e", spec, f"results_dir={out}", *overrides])
        captured = capsys.readouterr()
        return subprocess.CompletedProcess([], code, captured.out, captured.err)

    assert_one_line_error(associate(), "associate.site is not set")
    (tmp_path / "site" / "a.txt").write_text("1,1,5,10,16,40\n2,1,6,10,16\n")
    assert_one_line_error(associate(f"associate.site={site}"), "a.txt:2: 5 columns")
    (tmp_path / "site" / "a.txt").write_text("0,1,5,10,16,40\n")
    assert_one_line_error(associate(f"associate.site={site}"), "a.txt:1: frame 0", "frame_base: 0")
    (tmp_path / "site" / "a.txt").write_text("1,1,500,10,16,40\n")
    assert_one_line_error(associate(f"associate.site={site}"), "a.txt:1: box", "outside camera a")
    (tmp_path / "site" / "a.txt").write_text("21,1,5,10,16,40\n")  # no image for frame 21
    assert_one_line_error(
        associate(f"associate.site={site}"), "a.txt:1: frame 21 of track 1 has no image"
    )
    (tmp_path / "site" / "a.txt").write_text("1,1,5,10,16,40\n")
    shutil.copy(tmp_path / "site" / "a" / "000001.jpg", tmp_path / "site" / "a" / "1.png")
    assert_one_line_error(
        associate(f"associate.site={site}"), "holds two images of frame 1 (000001.jpg, 1.png)"
    )
    aicity = tmp_path / "aicity.txt"
    aicity.write_text("7 1 0 5 10 16 40 -1 -1\n")
    assert_one_line_error(
        associate(f"associate.site={site}", f"associate.tracks={aicity}"),
        "aicity.txt:1: camera '7' is not in",
    )
    assert not (out / "associate" / "global_ids.csv").exists()
    # a failed rerun leaves the previous run's results as they were
    good = associate(
        f"associate.site={synthetic_site / 'site.yaml'}",
        f"associate.tracks={synthetic_site / 'tracks.jsonl'}",
    )
    assert good.returncode == 0, good.stderr
    before = (out / "associate" / "global_ids.csv").read_bytes()
    broken = tmp_path / "broken.jsonl"
    shutil.copy(synthetic_site / "tracks.jsonl", broken)
    with open(broken, "a") as handle:
        handle.write('{"sensorId": "0", "timestamp": 1, "objects": [{"id": "x"}]}\n')
    lines = len(broken.read_text().splitlines())
    assert_one_line_error(
        associate(f"associate.site={synthetic_site / 'site.yaml'}", f"associate.tracks={broken}"),
        f"broken.jsonl:{lines}: an object needs 'id' and 'bbox'",
    )
    assert (out / "associate" / "global_ids.csv").read_bytes() == before
    status = json.loads((out / "associate" / "status.json").read_text())
    assert status["status"] == "SUCCESS"  # the failed rerun's record stays staged
