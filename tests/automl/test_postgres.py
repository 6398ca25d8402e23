"""AutoML across hosts: worker processes share one study on a real PostgreSQL server.

A throwaway server (Debian's ``postgresql`` binaries: ``initdb`` + ``pg_ctl`` in a temporary
folder, a free local port, trust authentication) stands in for the team's database host; each
worker is a ``reidkit automl`` process, as on separate machines sharing a results folder.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml

from reidkit.config.loading import load_spec
from reidkit.config.spec import ExperimentSpec
from tests.conftest import REPO, assert_one_line_error, run_cli, tiny_overrides

pytestmark = pytest.mark.slow


def _server_bin() -> Path | None:
    """The folder of ``pg_ctl``: on the PATH, or Debian's newest ``/usr/lib/postgresql/N/bin``."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3])
    )
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A running server; yields its SQLAlchemy URL (database ``postgres``, user ``reidkit``)."""
    server_bin = _server_bin()
    if server_bin is None:
        pytest.skip("PostgreSQL server binaries not installed (.ci/run installs Debian's)")
    root = Path(tempfile.mkdtemp(prefix="reidkit-pg-"))
    as_owner: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as an ordinary account
        try:
            owner = pwd.getpwnam("postgres").pw_name
        except KeyError:
            owner = "nobody"
        shutil.chown(root, owner)
        as_owner = ["runuser", "-u", owner, "--"]
    data, port = root / "data", _free_port()
    subprocess.run(
        [*as_owner, str(server_bin / "initdb"), "-D", str(data), "-U", "reidkit",
         "--auth=trust", "--no-sync", "-E", "UTF8"],
        check=True, capture_output=True,
    )  # fmt: skip
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    pg_ctl = [*as_owner, str(server_bin / "pg_ctl"), "-D", str(data)]
    started = subprocess.run(
        [*pg_ctl, "-l", str(root / "server.log"), "-o", options, "-w", "start"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr + (root / "server.log").read_text()
    try:
        yield f"postgresql+psycopg://reidkit@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def _spec(data: Path, results: Path, storage: str, name: str, *extra: str) -> ExperimentSpec:
    return load_spec(
        None,
        [
            *tiny_overrides(data, results),
            "train.steps_per_epoch=2",
            "automl.automl_enabled=true",
            "automl.automl_algorithm=random",
            "automl.heartbeat_interval=1",
            "automl.automl_hyperparameters=[train.optim.base_lr,dataset.re_prob]",
            f"automl.storage={storage}",
            f"automl.study_name={name}",
            *extra,
        ],
    )


def _start_worker(spec_file: Path, log: Path) -> subprocess.Popen[bytes]:
    """``reidkit automl -e spec`` as a user starts it on each host; output to ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "reidkit", "automl", "-e", str(spec_file)],
            cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _write_spec(spec: ExperimentSpec, path: Path) -> None:
    """The spec file as its user writes it, storage password included (``save_spec``, which
    writes run records, masks it)."""
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))


def _trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=name, storage=storage).trials
    except KeyError:  # the study is still being created
        return []


def test_two_workers_finish_the_study_when_one_is_killed_mid_trial(
    synth_root: Path, tmp_path: Path, postgres: str
) -> None:
    target = 4
    spec = _spec(
        synth_root, tmp_path / "results", postgres, "two_hosts",
        f"automl.automl_max_recommendations={target}",
        "automl.automl_max_epochs=3",  # long enough to be caught inside training
    )  # fmt: skip
    spec_file = tmp_path / "automl.yaml"
    _write_spec(spec, spec_file)
    logs = [tmp_path / f"worker_{n}.log" for n in range(2)]
    workers = {worker.pid: worker for worker in (_start_worker(spec_file, log) for log in logs)}
    try:
        deadline = time.monotonic() + 240
        while True:
            # Inside training: parameters drawn and at least one epoch reported.
            victim = next(
                (t for t in _trials(postgres, "two_hosts")
                 if t.state.name == "RUNNING" and t.intermediate_values),
                None,
            )  # fmt: skip
            if victim is not None:
                break
            assert all(w.poll() is None for w in workers.values()), logs[0].read_text()[-2000:]
            assert time.monotonic() < deadline, "no trial ever reached its first epoch"
            time.sleep(0.1)
        killed_pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
        workers[killed_pid].send_signal(signal.SIGKILL)
        workers[killed_pid].wait()
        (survivor,) = (w for pid, w in workers.items() if pid != killed_pid)
        survivor_log = logs[list(workers).index(survivor.pid)]
        assert survivor.wait(timeout=240) == 0, survivor_log.read_text()[-3000:]
    finally:
        for worker in workers.values():
            if worker.poll() is None:
                worker.kill()
                worker.wait()

    trials = {t.number: t for t in _trials(postgres, "two_hosts")}
    counted = [t for t in trials.values() if not t.user_attrs.get("surplus")]
    states = sorted(t.state.name for t in counted)
    assert states == ["COMPLETE"] * target + ["FAIL"], states
    assert trials[victim.number].state.name == "FAIL"
    retry = next(t for t in counted if t.system_attrs.get("failed_trial") == victim.number)
    assert retry.state.name == "COMPLETE" and retry.params == victim.params
    assert retry.user_attrs["worker"] == f"{socket.gethostname()}:{survivor.pid}"
    # The retry resumed in the killed trial's folder: one folder per slot, none twice.
    assert retry.user_attrs["results_dir"] == victim.user_attrs["results_dir"]
    folders = [t.user_attrs["results_dir"] for t in counted if t.state.name == "COMPLETE"]
    assert len(set(folders)) == target
    on_disk = sorted(p.name for p in spec.action_dir("automl").glob("trial_*"))
    assert on_disk == sorted(folders)
    assert len({tuple(sorted(t.params.items())) for t in counted if t is not retry}) == target


def test_an_unreachable_server_is_one_line_without_the_password(
    synth_root: Path, tmp_path: Path
) -> None:
    url = f"postgresql+psycopg://reidkit:s3cret-pw@127.0.0.1:{_free_port()}/postgres"
    spec = _spec(synth_root, tmp_path / "results", url, "nowhere")
    _write_spec(spec, tmp_path / "automl.yaml")

    result = run_cli("automl", "-e", str(tmp_path / "automl.yaml"), timeout=120)

    assert_one_line_error(result, "automl.storage: cannot open", "***@127.0.0.1")
    assert "s3cret-pw" not in result.stdout + result.stderr


def test_a_malformed_storage_url_is_one_line_without_the_password(
    synth_root: Path, tmp_path: Path
) -> None:
    url = "postgresql+psycopg://reidkit:s3cret-pw@db-host:notaport/reid"
    spec = _spec(synth_root, tmp_path / "results", url, "malformed")
    _write_spec(spec, tmp_path / "automl.yaml")

    result = run_cli("automl", "-e", str(tmp_path / "automl.yaml"))

    assert_one_line_error(result, "automl.storage", "***@db-host")
    assert "s3cret-pw" not in result.stdout + result.stderr
