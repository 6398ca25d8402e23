"""The GPU check runs end to end where no GPU is lent: ``gpu_check.sh --dry-run`` on the CPU.

The figures themselves need a GPU; what these tests prove is that every part of the script runs
(a broken import or spec key would otherwise surface only on a scarce GPU lease), that the
CUHK03 packer writes an archive the check trains on, and that one failing part leaves the
others their figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from reidkit.data import synthesize

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
PARTS = ("env", "train", "eval", "onnx", "cuhk03")


def run_check(tmp_path: Path, *args: str, python: str = sys.executable) -> tuple[int, str]:
    env = os.environ | {"PYTHON": python, "GPU_DATA": str(tmp_path / "gpu_data")}
    env |= {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out", str(tmp_path / "out"), *args],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


def figures(tmp_path: Path, part: str) -> list[dict]:
    return json.loads((tmp_path / "out" / f"{part}.json").read_text())


@pytest.mark.slow
def test_dry_run_runs_every_part_and_prints_the_summary(tmp_path: Path) -> None:
    synthesize(tmp_path / "cuhk", ids=12, cameras=2, images_per_id=6, height=96, width=48)
    archive = tmp_path / "gpu_data" / "cuhk03_128x64.tar.gz"
    packed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "pack_cuhk03.py"), "--source",
         str(tmp_path / "cuhk"), "--out", str(archive), "--height", "64", "--width", "32"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "64x32" in packed.stdout
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert {name.split("/")[0] for name in names} == {"bounding_box_train", "bounding_box_test",
                                                       "query"}  # fmt: skip
    assert len(names) == sum(1 for p in (tmp_path / "cuhk").rglob("*.jpg"))

    status, output = run_check(tmp_path)

    assert status == 0, output[-3000:]
    summary = output[output.index("== GPU check summary ==") :]
    assert "FAILED" not in summary and "no figures" not in summary
    for part in PARTS:
        assert f"| {part} |" in summary
    rates = [row["value"] for row in figures(tmp_path, "train") if row["unit"] == "img/s"]
    assert len(rates) == 2 and all(rate > 0 for rate in rates)  # device cache on, loader
    (seconds,) = [row["value"] for row in figures(tmp_path, "eval")]
    assert seconds > 0
    onnx = [row for row in figures(tmp_path, "onnx") if row["unit"] == "img/s"]
    assert {row["figure"].split(": ")[1] for row in onnx} == {
        "torch fp32", "onnxruntime CPUExecutionProvider"}  # fmt: skip
    cuhk = {row["figure"]: row["value"] for row in figures(tmp_path, "cuhk03")}
    maps = [value for figure, value in cuhk.items() if figure.endswith("mAP")]
    assert len(maps) == 2 and all(0 < value <= 100 for value in maps)  # mobilenet, resnet_50


def test_a_failing_part_leaves_the_others_their_figures(tmp_path: Path) -> None:
    """A Python that dies in 'train' (as a CUDA crash would) must not stop 'eval'."""
    wrapper = tmp_path / "python"
    wrapper.write_text(
        f'#!/bin/sh\ncase " $* " in *" train "*) exit 3 ;; esac\nexec {sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)

    status, output = run_check(tmp_path, "--parts", "train,eval", python=str(wrapper))

    assert status == 1
    assert "FAILED: train: exit status 3" in output
    assert "no figures from part 'train'" in output
    assert figures(tmp_path, "eval")[0]["value"] > 0
    assert not (tmp_path / "out" / "env.json").exists()  # not asked for


@pytest.mark.parametrize("with_venv", [True, False], ids=["venv", "no-venv"])
def test_the_projects_venv_is_preferred_to_the_system_python3(
    tmp_path: Path, with_venv: bool
) -> None:
    """Without $PYTHON the script takes .venv/bin/python where it exists, else python3.

    A copy of the checkout (the script, the check, the sources) where ``python3`` on the PATH
    is one that lacks reidkit's dependencies, as the system one does.
    """
    checkout = tmp_path / "checkout"
    (checkout / "benchmarks").mkdir(parents=True)
    for name in ("gpu_check.sh", "gpu_check.py"):
        (checkout / "benchmarks" / name).symlink_to(ROOT / "benchmarks" / name)
    (checkout / "src").symlink_to(ROOT / "src")
    if with_venv:  # the environment running these tests, as the checkout's .venv
        (checkout / ".venv").symlink_to(Path(sys.executable).parents[1])
    system = tmp_path / "system"
    system.mkdir()
    bare = system / "python3"
    bare.write_text("#!/bin/sh\necho 'system python3: No module named torch' >&2\nexit 1\n")
    bare.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env |= {"PATH": f"{system}:{env['PATH']}", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    env |= {"GPU_DATA": str(tmp_path / "gpu_data")}
    done = subprocess.run(
        ["bash", str(checkout / "benchmarks" / "gpu_check.sh"), "--dry-run", "--parts", "env",
         "--out", str(tmp_path / "out")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = done.stdout + done.stderr
    if with_venv:  # (the summary still fails: the other parts were not asked for)
        assert "system python3" not in output
        assert "== env done" in output and "(exit 0) ==" in output, output[-3000:]
        assert {row["figure"] for row in figures(tmp_path, "env")} >= {"torch", "lightning"}
    else:
        assert "system python3: No module named torch" in output
        assert not (tmp_path / "out" / "env.json").exists()
