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
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import REPO, empty_spec, tiny_overrides

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
            [sys.executable, "-m", "reidkit", *args],
            cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.DEVNULL,
            stderr=handle,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
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
