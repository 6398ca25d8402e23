"""Fault injection on the real CLI: signals, a full disk, concurrent runs, NaN, at several points.

Each test starts ``python -m reidkit`` as a user (or a scheduler) would, injects one fault and
checks what the user is left with: the exit code, one error line, ``status.json``, and files
that are either the previous complete ones or the new complete ones, never half of either.
Trainings use two batches per epoch so that the whole module stays within a few minutes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from reidkit.models.checkpoint_file import load_checkpoint
from tests.conftest import REIDKIT_FOREGROUND, REPO, empty_spec, run_cli, tiny_overrides

pytestmark = pytest.mark.slow

LATEST = "reid_model_latest.pth"


def _train_args(data: Path, results: Path, *extra: str) -> list[str]:
    spec = empty_spec(results.parent)
    return [
        "train",
        "-e",
        str(spec),
        *tiny_overrides(data, results),
        "train.steps_per_epoch=2",
        *extra,
    ]


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """The CLI in its own process, with SIGINT delivered as in a foreground terminal."""
    with open(log, "wb") as handle:
        return subprocess.Popen(
            [*REIDKIT_FOREGROUND, *args],
            cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.DEVNULL,
            stderr=handle,
        )


def _wait(condition: Callable[[], bool], process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert process.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.05)


def _error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if "error:" in line]


def _status(folder: Path) -> dict:
    return json.loads((folder / "status.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The suite's 24-identity synthetic set, built once for this module."""
    from reidkit.data import synthesize

    root = tmp_path_factory.mktemp("faults-data")
    synthesize(root, ids=24, cameras=3, images_per_id=8, height=64, width=32, seed=3)
    return root


def test_sigterm_then_ctrl_c_in_train_with_a_concurrent_run(data: Path, tmp_path: Path) -> None:
    """SIGTERM: exit 143, the last finished epoch kept, a resume hint, status FAILURE; a second
    run on the folder meanwhile stops at once naming the first; the rerun resumes, and Ctrl-C
    on it exits 130 the same way."""
    results = tmp_path / "results"
    folder = results / "train"
    args = _train_args(data, results, "train.num_epochs=50")
    log = tmp_path / "first.log"
    first = _start(args, log)
    _wait(lambda: (folder / LATEST).is_file(), first, log)

    second = run_cli(*args, timeout=120)
    assert second.returncode == 2
    [line] = _error_lines(second.stderr)
    assert f"is in use by train run pid {first.pid} on host" in line

    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) == 143
    stderr = log.read_text()
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert "interrupted by SIGTERM" in last and "rerun the same command to resume" in last
    status = _status(folder)
    assert status["status"] == "FAILURE" and "SIGTERM" in status["message"]
    kept = load_checkpoint(folder / LATEST, None)["epoch"] + 1  # Lightning counts from 0
    assert f"epoch {kept}" in last

    log = tmp_path / "resumed.log"
    written = (folder / LATEST).stat().st_mtime_ns
    resumed = _start(args, log)
    _wait(lambda: (folder / LATEST).stat().st_mtime_ns != written, resumed, log)
    resumed.send_signal(signal.SIGINT)
    assert resumed.wait(timeout=60) == 130
    stderr = log.read_text()
    assert "resuming from" in stderr and "Traceback" not in stderr
    assert "interrupted by SIGINT" in stderr.strip().splitlines()[-1]
    assert _status(folder)["status"] == "FAILURE"


def test_signal_before_training_starts_is_still_an_honest_exit(data: Path, tmp_path: Path) -> None:
    """SIGTERM while the data is being checked: 143 and status FAILURE, not a silent 0."""
    results = tmp_path / "results"
    log = tmp_path / "run.log"
    process = _start(_train_args(data, results), log)
    _wait(lambda: (results / "train" / "status.json").is_file(), process, log)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    assert "Traceback" not in log.read_text()
    assert _status(results / "train")["status"] == "FAILURE"


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder holding one finished epoch of training (shared, read by the tests)."""
    results = tmp_path_factory.mktemp("faults-trained") / "results"
    done = run_cli(*_train_args(data, results, "train.num_epochs=1"), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return results


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_nan_stops_a_rerun_and_keeps_the_previous_run(
    data: Path, trained: Path, tmp_path: Path
) -> None:
    """A rerun resumed from weights holding a NaN stops at its first step with one line,
    before any checkpoint, leaving the finished run's files exactly as they were."""
    import torch

    folder = trained / "train"
    poisoned = load_checkpoint(folder / LATEST, None)
    weight = next(k for k in poisoned["state_dict"] if k.endswith("conv1.weight"))
    poisoned["state_dict"][weight][0, 0, 0, 0] = float("nan")  # any layout (channels-last)
    torch.save(poisoned, tmp_path / "poisoned.pth")
    before = _snapshot(folder)

    args = _train_args(
        data, trained, "train.num_epochs=3",
        f"train.resume_training_checkpoint_path={tmp_path / 'poisoned.pth'}",
    )  # fmt: skip
    result = run_cli(*args, timeout=300)

    assert result.returncode == 2
    [line] = _error_lines(result.stderr)
    assert "training stopped at epoch 2, batch 1: loss term" in line and "nan" in line
    after = _snapshot(folder)
    pending = after.pop("status.pending.json")
    after.pop("experiment.pending.yaml")
    assert after == before  # checkpoints, metrics, experiment.yaml and status.json untouched
    assert json.loads(pending)["status"] == "FAILURE"
    assert json.loads(before["status.json"])["status"] == "SUCCESS"


@pytest.mark.parametrize("delay", [1.0, 3.0])
def test_killed_export_leaves_no_half_file(trained: Path, tmp_path: Path, delay: float) -> None:
    """SIGKILL at several moments of an export: the ONNX file is absent or complete, and a
    rerun writes it."""
    onnx_file = tmp_path / "model.onnx"
    args = [
        "export", "-e", str(empty_spec(tmp_path)), f"results_dir={tmp_path / 'r'}",
        "model.backbone=resnet_18", "model.input_height=64", "model.input_width=32",
        "model.feat_dim=64", f"export.checkpoint={trained / 'train' / LATEST}",
        f"export.onnx_file={onnx_file}",
    ]  # fmt: skip
    log = tmp_path / "export.log"
    process = _start(args, log)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    if onnx_file.exists():
        import onnx

        onnx.checker.check_model(onnx.load(str(onnx_file)))
    again = run_cli(*args, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    import onnx

    onnx.checker.check_model(onnx.load(str(onnx_file)))


def test_full_disk_and_read_only_folder_are_one_line(data: Path, tmp_path: Path) -> None:
    """A results_dir on a 4 MB file system: the first checkpoint does not fit. Then the same
    file system read-only: ``dataset synth`` cannot write. One line each, naming the path."""
    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        results = mount / "results"
        result = run_cli(*_train_args(data, results), timeout=300)
        assert result.returncode == 2
        [line] = _error_lines(result.stderr)
        assert str(results / "train") in line and "no space left" in line
        assert not [p for p in (results / "train").iterdir() if p.suffix == ".tmp"]
        status = _status(results / "train")
        assert status["status"] == "FAILURE" and "no space left" in status["message"]

        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        result = run_cli("dataset", "synth", "--out", str(mount / "synth"), "--ids", "4")
        assert result.returncode == 2
        [line] = _error_lines(result.stderr)
        assert str(mount / "synth") in line and "read-only" in line
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_resume_with_a_changed_model_is_refused_before_loading(data: Path, trained: Path) -> None:
    """Resuming into another architecture crashed with a wall of missing keys, and a changed
    input size resumed silently; both are refused naming the fields and the fix."""
    folder = trained / "train"
    pending = ("status.pending.json", "experiment.pending.yaml")
    before = {k: v for k, v in _snapshot(folder).items() if k not in pending}
    changes = ("model.input_height=96", "model.feat_dim=32")
    result = run_cli(*_train_args(data, trained, "train.num_epochs=3", *changes), timeout=300)
    assert result.returncode == 2
    [line] = _error_lines(result.stderr)
    assert "model.input_height" in line and "model.feat_dim" in line and "resuming" in line
    assert "new results_dir" in line
    assert {k: v for k, v in _snapshot(folder).items() if k not in pending} == before


def test_sigterm_during_evaluate(data: Path, trained: Path, tmp_path: Path) -> None:
    """SIGTERM once evaluate has started: 143 and FAILURE, no half metrics file (or, if the
    signal came after the end, a complete success)."""
    results = tmp_path / "results"
    args = [
        "evaluate", "-e", str(empty_spec(tmp_path)), *tiny_overrides(data, results),
        f"evaluate.checkpoint={trained / 'train' / LATEST}",
    ]  # fmt: skip
    log = tmp_path / "evaluate.log"
    process = _start(args, log)
    _wait(lambda: (results / "evaluate" / "status.json").is_file(), process, log)
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=120)
    assert "Traceback" not in log.read_text()
    status = _status(results / "evaluate")
    if code == 143:
        assert status["status"] == "FAILURE" and "SIGTERM" in status["message"]
        assert not (results / "evaluate" / "metrics.json").exists()
    else:
        assert code == 0 and status["status"] == "SUCCESS"
        json.loads((results / "evaluate" / "metrics.json").read_text())
