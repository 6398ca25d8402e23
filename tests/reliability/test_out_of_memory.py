"""Out of memory in training: one line saying what to lower, exit 2, ``status.json`` FAILURE.

The CPU case runs real training in a process whose address space is capped (``RLIMIT_AS``), so
PyTorch's own allocator fails on a real forward pass at an input size that needs gigabytes; the
GPU case caps the process's share of the GPU the same way (it runs where a GPU is present).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from reidkit.engine.memory import out_of_memory
from reidkit.errors import OutOfMemory
from tests.conftest import REPO, empty_spec, tiny_overrides

SETTINGS = {"batch_size": 16, "input_size": (2048, 1024), "num_workers": 0}


def _train_capped(tmp_path: Path, synth_root: Path, cap: str) -> subprocess.CompletedProcess[str]:
    """``reidkit train`` at 2048x1024 with memory capped as ``cap`` says ("host" or "gpu")."""
    overrides = [
        *tiny_overrides(synth_root, tmp_path / "results"),
        "model.input_height=2048",
        "model.input_width=1024",
        f"train.accelerator={'gpu' if cap == 'gpu' else 'cpu'}",
    ]
    script = textwrap.dedent(
        f"""
        import resource, sys, torch
        from reidkit.cli import main
        if {cap!r} == "host":
            with open("/proc/self/statm") as statm:
                used = int(statm.read().split()[0]) * resource.getpagesize()
            resource.setrlimit(resource.RLIMIT_AS, (used + 3 * 2**30, resource.RLIM_INFINITY))
        else:
            torch.cuda.set_per_process_memory_fraction(0.01)
        sys.exit(main(["train", "-e", {str(empty_spec(tmp_path))!r}, *{overrides!r}]))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600
    )


def _assert_one_line_failure(done: subprocess.CompletedProcess[str], tmp_path: Path, where: str):
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith(f"reidkit train: error: training ran out of {where} memory; lower "), (
        line
    )
    assert "dataset.batch_size (now 16)" in line
    assert "model.input_height x model.input_width (now 2048x1024)" in line
    status = json.loads((tmp_path / "results" / "train" / "status.json").read_text())
    assert status["status"] == "FAILURE"
    assert status["message"] == line.removeprefix("reidkit train: error: ")


def test_host_out_of_memory_in_training_is_one_line(tmp_path: Path, synth_root: Path) -> None:
    done = _train_capped(tmp_path, synth_root, "host")
    _assert_one_line_failure(done, tmp_path, "host")
    assert "dataset.num_workers (now 0)" in done.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_out_of_memory_in_training_is_one_line(tmp_path: Path, synth_root: Path) -> None:
    done = _train_capped(tmp_path, synth_root, "gpu")
    _assert_one_line_failure(done, tmp_path, "GPU")
    assert "train.precision to 16-mixed" in done.stderr


class _KilledWorker(Dataset[int]):
    """A loader worker that dies by SIGKILL, as the kernel's out-of-memory killer ends it."""

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> int:
        os.kill(os.getpid(), signal.SIGKILL)
        return index


def test_each_way_memory_runs_out_is_recognised() -> None:
    with pytest.raises(RuntimeError) as cpu:
        torch.empty(2**62, dtype=torch.uint8)  # PyTorch's own allocator refuses it
    with pytest.raises(RuntimeError) as killed:
        next(iter(DataLoader(_KilledWorker(), num_workers=1)))
    lines = {
        "CPU allocator": out_of_memory(cpu.value, **SETTINGS),
        "MemoryError": out_of_memory(MemoryError(), **SETTINGS),
        "killed worker": out_of_memory(killed.value, **SETTINGS),
    }
    assert all(isinstance(line, OutOfMemory) for line in lines.values()), lines
    assert (
        str(lines["CPU allocator"])
        == str(lines["MemoryError"])
        == (
            "training ran out of host memory; lower dataset.batch_size (now 16), "
            "model.input_height x model.input_width (now 2048x1024) or dataset.num_workers "
            "(now 0); the checkpoints on disk are from before it; rerun to resume"
        )
    )
    assert str(lines["killed worker"]).startswith("a data-loader worker died (DataLoader worker")
    assert "lower dataset.num_workers (now 0) or dataset.batch_size (now 16)" in str(
        lines["killed worker"]
    )
    assert out_of_memory(RuntimeError("shape mismatch"), **SETTINGS) is None
