"""Multi-process training on the CPU (DDP over gloo): two processes, and two "nodes".

Both topologies go through the same story: rank 1 is SIGKILLed at the start of the second
epoch, rank 0 stops with a one-line error, the same command run again resumes from the
first epoch's checkpoint and finishes. Along the way: the ranks drew disjoint identity shards
that together make up the epoch, ``metrics.csv`` has each epoch once, and the validation
metrics equal a one-process evaluation of the final checkpoint.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import reidkit
from reidkit.config.loading import apply_overrides, load_spec, save_spec
from reidkit.config.spec import ExperimentSpec
from reidkit.data import prepare_splits
from reidkit.data.dataset import relabel
from reidkit.data.sampler import IdentitySampler
from reidkit.engine.distributed import LAUNCHER_VARIABLES, trainer_devices
from reidkit.errors import SpecError
from reidkit.runlock import LOCK_FILE
from tests.conftest import REPO, tiny_overrides

pytestmark = pytest.mark.slow

RUNNER = Path(__file__).with_name("ddp_runner.py")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch(topology: str, spec_file: Path, log_dir: Path, **env: str) -> list[subprocess.Popen]:
    """Rank 0's process first. 'two_processes': one command, Lightning starts rank 1 itself;
    'two_nodes': one command per node, found through MASTER_ADDR/PORT and NODE_RANK."""
    log_dir.mkdir(parents=True)
    base = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO / 'src'}:{REPO}", **env}
    command = [sys.executable, str(RUNNER), str(spec_file), str(log_dir), "train.accelerator=cpu"]
    if topology == "two_processes":
        commands = [([*command, "train.num_processes=2"], base)]
    else:
        port = str(_free_port())
        nodes = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "WORLD_SIZE": "2"}
        commands = [
            ([*command, "train.num_nodes=2"], base | nodes | {"NODE_RANK": str(rank)})
            for rank in (0, 1)
        ]
    return [
        subprocess.Popen(
            args, env=environ, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for args, environ in commands
    ]


def _finish(processes: list[subprocess.Popen]) -> list[tuple[int, str]]:
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        results.append((process.returncode, out + err))
    return results


def _metrics_rows(spec: ExperimentSpec) -> list[dict[str, str]]:
    with open(spec.action_dir("train") / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def _ranks(log_dir: Path) -> list[dict]:
    ranks = [json.loads((log_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    return ranks


def _shards(log_dir: Path) -> dict[int, list[list[int]]]:
    """Epoch -> per rank, the identities of the images it drew."""
    ranks = _ranks(log_dir)
    epochs = {int(e) for r in ranks for e in r["epochs"]}
    return {e: [r["epochs"][str(e)] for r in ranks] for e in epochs}


@pytest.mark.parametrize("topology", ["two_processes", "two_nodes"])
def test_ddp_on_cpu_shards_survives_a_killed_rank_and_resumes(
    topology: str, synth_root: Path, tmp_path: Path
) -> None:
    spec = load_spec(None, tiny_overrides(synth_root, tmp_path / "results"))  # 2 epochs
    spec_file = tmp_path / "spec.yaml"
    save_spec(spec, spec_file)
    folder = spec.action_dir("train")

    first = _finish(_launch(topology, spec_file, tmp_path / "run1", KILL_RANK="1", KILL_EPOCH="1"))

    status, output = first[0]  # rank 0 outlives rank 1 and says why it stops
    assert status == 2, output[-3000:]
    errors = [line for line in output.splitlines() if "error:" in line]
    assert len(errors) == 1 and "lost its peers" in errors[0], output[-3000:]
    assert "Traceback" not in output
    assert [row["epoch"] for row in _metrics_rows(spec)] == ["1"]
    failed = json.loads((folder / "status.json").read_text())
    assert failed["status"] == "FAILURE" and "lost its peers" in failed["message"]

    second = _finish(_launch(topology, spec_file, tmp_path / "run2"))

    assert all(code == 0 for code, _ in second), second[0][1][-3000:]
    rows = _metrics_rows(spec)
    assert [row["epoch"] for row in rows] == ["1", "2"]  # each epoch once
    labels = relabel(prepare_splits(spec, train=True).train)
    batch, instances = spec.dataset.batch_size, spec.dataset.num_instances
    one_process = IdentitySampler(labels, batch, instances, spec.train.seed)
    steps = len(one_process) // spec.dataset.batch_size // 2  # per rank and epoch
    periodic = [f"model_001_{steps:05d}.pth", f"model_002_{2 * steps:05d}.pth"]
    assert sorted(p.name for p in folder.glob("*.pth")) == [*periodic, "reid_model_latest.pth"]
    # No partial writes (the run lock's file stays by design: reidkit.runlock).
    assert not [p for p in folder.iterdir() if p.name.startswith(".") and p.name != LOCK_FILE]

    # Epoch 1 ran in the first launch, epoch 2 alone in the resumed one (it started from the
    # first epoch's checkpoint); each epoch dealt the identities anew.
    assert set(_shards(tmp_path / "run2")) == {1}
    for log_dir, epoch in ((tmp_path / "run1", 0), (tmp_path / "run2", 1)):
        rank0, rank1 = _shards(log_dir)[epoch]
        assert not set(rank0) & set(rank1), f"epoch {epoch}: ranks share identities"
        assert set(rank0) | set(rank1) == set(labels), f"epoch {epoch}: identities left out"
        assert len(rank0) == len(rank1) and len(rank0) + len(rank1) == len(one_process)

    # Every rank validated the whole split with rank 0's weights and BatchNorm statistics: the
    # ranks agree, and rank 0's row equals one process evaluating the checkpoint it wrote.
    rank0, rank1 = (r["validation"] for r in _ranks(tmp_path / "run2"))
    assert rank0 == rank1 and rank0["1"]["mAP"] > 0
    evaluated = reidkit.evaluate(
        apply_overrides(spec, {"evaluate.checkpoint": str(folder / "reid_model_latest.pth")})
    ).metrics
    status = json.loads((folder / "status.json").read_text())  # any rank may write it last
    for key in ("mAP", "cmc_rank_1", "cmc_rank_5"):
        assert float(rows[-1][key]) == pytest.approx(evaluated[key], abs=0.011), key
        assert status["kpi"][key] == float(rows[-1][key]), key


def test_a_launcher_world_size_that_disagrees_with_the_spec_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(SpecError, match=r"WORLD_SIZE is 4 but the spec asks for 2 process"):
        trainer_devices(accelerator="cpu", precision="32", num_processes=2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    settings = trainer_devices(accelerator="cpu", precision="32", num_processes=1, num_nodes=2)
    assert (settings["devices"], settings["num_nodes"], settings["sync_batchnorm"]) == (1, 2, False)
    assert settings["strategy"].process_group_backend == "gloo"


def test_several_nodes_without_a_launcher_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a launcher's variables, ``train.num_nodes=2`` waited for a second node for ever
    (a rendezvous on 127.0.0.1 as node 0)."""
    for name in LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SpecError, match=r"train.num_nodes is 2 but no launcher"):
        trainer_devices(accelerator="cpu", precision="32", num_nodes=2)
    assert trainer_devices(accelerator="cpu", precision="32")["num_nodes"] == 1
    monkeypatch.setenv("NODE_RANK", "1")  # by hand, as docs/scale-out.md shows
    assert trainer_devices(accelerator="cpu", precision="32", num_nodes=2)["num_nodes"] == 2
