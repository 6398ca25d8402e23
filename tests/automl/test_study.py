"""Real studies: trials train on the synthetic data, get pruned, survive a kill, share a study."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc

from reidkit.actions.automl import automl as run_automl
from reidkit.automl import open_study, storage_url
from reidkit.config.loading import load_spec, save_spec
from reidkit.config.spec import ExperimentSpec
from tests.conftest import (
    FOREGROUND_SIGINT,
    REPO,
    RunMain,
    assert_one_line_error,
    empty_spec,
    tiny_overrides,
)

pytestmark = pytest.mark.slow

WORKER = (
    f"{FOREGROUND_SIGINT}; import sys; from reidkit.actions.automl import automl; "
    "from reidkit.config.loading import load_spec; automl(load_spec(sys.argv[1]))"
)


def _automl_spec(data: Path, results: Path, *extra: str) -> ExperimentSpec:
    """Trials of two batches per epoch on the 24-id synthetic set: seconds each."""
    return load_spec(
        None,
        [
            *tiny_overrides(data, results),
            "train.steps_per_epoch=2",
            "automl.automl_enabled=true",
            "automl.heartbeat_interval=1",
            "automl.automl_hyperparameters=[train.optim.base_lr,dataset.re_prob,model.label_smooth]",
            *extra,
        ],
    )


def _start_worker(spec_file: Path, log: Path) -> subprocess.Popen[bytes]:
    """``run_automl`` in its own process; its output goes to ``log`` (a pipe could fill up)."""
    # One thread per worker: two workers share the two cores without thrashing.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-c", WORKER, str(spec_file)],
            cwd=REPO,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )


def _trials(spec: ExperimentSpec) -> list[optuna.trial.FrozenTrial]:
    if not (spec.action_dir("automl") / "automl.db").is_file():
        return []
    try:
        return optuna.load_study(study_name="reid_automl", storage=storage_url(spec)).trials
    # The worker is still creating the tables or the study: opening the storage here races
    # it to the same inserts (as two workers do), and the loser of that race sees an error.
    except (KeyError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError):
        return []


def test_killed_study_resumes_prunes_and_reports_the_best(synth_root: Path, tmp_path: Path) -> None:
    spec = _automl_spec(
        synth_root,
        tmp_path / "results",
        "automl.automl_algorithm=asha",
        "automl.automl_max_recommendations=5",
        "automl.automl_max_epochs=2",
        "automl.automl_reduction_factor=3",
        "automl.metric=mAP",  # continuous, so trials rarely tie and ASHA prunes
    )
    spec_file = tmp_path / "automl.yaml"
    save_spec(spec, spec_file)
    log = tmp_path / "worker.log"
    worker = _start_worker(spec_file, log)
    deadline = time.monotonic() + 240
    try:
        while True:
            trials = _trials(spec)
            done = [t for t in trials if t.state.is_finished()]
            # Killed only once its parameters are drawn, so there is something to retry.
            running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING and t.params]
            if len(done) >= 2 and running:
                break
            assert worker.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the worker never got two trials done"
            time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    killed = running[0].number

    result = run_automl(spec)  # the rerun: same study, only the missing trials

    trials = {t.number: t for t in open_study(spec).trials}
    states = [t.state.name for t in trials.values()]
    assert trials[killed].state.name == "FAIL"
    retry = next(t for t in trials.values() if t.system_attrs.get("failed_trial") == killed)
    assert retry.state.name in ("COMPLETE", "PRUNED")
    # The retry trains in the killed trial's folder (and so resumes from its checkpoint).
    assert retry.user_attrs["results_dir"] == trials[killed].user_attrs["results_dir"]
    assert retry.params == trials[killed].params
    assert states.count("COMPLETE") + states.count("PRUNED") == 5 == result.trials
    assert "PRUNED" in states and "RUNNING" not in states and "WAITING" not in states

    folder = spec.action_dir("automl")
    with open(folder / "leaderboard.csv") as handle:
        rows = list(csv.DictReader(handle))
    board = json.loads((folder / "leaderboard.json").read_text())
    assert [r["trial"] for r in rows] == [str(b["trial"]) for b in board]
    assert {r["trial"] for r in rows} == {str(n) for n in trials}
    best_row = max((r for r in rows if r["metric"]), key=lambda r: float(r["metric"]))
    assert rows[0] == best_row and float(best_row["metric"]) == result.best_value
    assert all(r["state"] != "COMPLETE" or int(r["epochs"]) == 2 for r in rows)
    assert {"dataset.re_prob", "model.label_smooth", "train.optim.base_lr"} <= set(rows[0])

    best = load_spec(folder / "best_spec.yaml")
    assert best.train.num_epochs == 2 and not best.automl.automl_enabled
    assert best.train.optim.base_lr == result.best_params["train.optim.base_lr"]
    assert best.dataset.re_prob == result.best_params["dataset.re_prob"]
    status = json.loads((best.action_dir("train") / "status.json").read_text())
    assert status["status"] == "SUCCESS"
    assert status["kpi"]["mAP"] == round(float(best_row["metric"]), 2)
    for plot in ("automl_history.png", "automl_intermediate.png"):
        assert (folder / plot).read_bytes().startswith(b"\x89PNG")
    automl_status = json.loads((folder / "status.json").read_text())
    assert automl_status["status"] == "SUCCESS"

    again = run_automl(spec)  # a finished study runs nothing more
    assert again.trials == 5 and len(open_study(spec).trials) == len(trials)


def test_two_workers_share_one_sqlite_study(synth_root: Path, tmp_path: Path) -> None:
    spec = _automl_spec(
        synth_root,
        tmp_path / "results",
        "automl.automl_algorithm=random",
        "automl.automl_max_recommendations=4",
        "automl.automl_max_epochs=1",
        "automl.heartbeat_interval=2",
    )
    spec_file = tmp_path / "automl.yaml"
    save_spec(spec, spec_file)
    logs = [tmp_path / f"worker_{n}.log" for n in range(2)]
    workers = [_start_worker(spec_file, log) for log in logs]
    for worker, log in zip(workers, logs, strict=True):
        assert worker.wait(timeout=240) == 0, log.read_text()[-2000:]

    trials = [t for t in _trials(spec) if not t.user_attrs.get("surplus")]
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    folders = {t.user_attrs["results_dir"] for t in trials}
    assert len(folders) == 4
    assert sorted(p.name for p in spec.action_dir("automl").glob("trial_*")) == sorted(folders)
    assert len({t.user_attrs["worker"] for t in trials}) == 2, "one worker ran every trial"
    board = json.loads((spec.action_dir("automl") / "leaderboard.json").read_text())
    assert len(board) == 4


def test_ctrl_c_queues_the_interrupted_trial_for_retry(synth_root: Path, tmp_path: Path) -> None:
    spec = _automl_spec(
        synth_root,
        tmp_path / "results",
        "automl.automl_max_recommendations=1",
        # Far more epochs than the test waits for: Ctrl-C must land inside training, never
        # after a trial that a slow, loaded machine let finish.
        "automl.automl_max_epochs=50",
    )
    spec_file = tmp_path / "automl.yaml"
    save_spec(spec, spec_file)
    worker = _start_worker(spec_file, tmp_path / "worker.log")
    deadline = time.monotonic() + 120
    while not any(t.state.name == "RUNNING" and t.intermediate_values for t in _trials(spec)):
        assert worker.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    worker.send_signal(signal.SIGINT)
    assert worker.wait(timeout=60) != 0
    interrupted, retry = _trials(spec)
    assert interrupted.state.name == "FAIL" and retry.state.name == "WAITING"
    assert retry.params == interrupted.params
    assert retry.user_attrs["results_dir"] == interrupted.user_attrs["results_dir"]


def test_infeasible_draw_is_a_failed_trial_and_the_study_goes_on(
    synth_root: Path, tmp_path: Path
) -> None:
    """32 images as 2 per identity need 16 of the 12 train identities: that trial cannot run."""
    spec = _automl_spec(
        synth_root,
        tmp_path / "results",
        "automl.automl_max_recommendations=2",
        "automl.automl_max_epochs=1",
        "automl.automl_hyperparameters=[dataset.batch_size,dataset.num_instances]",
        "automl.automl_range_override=[{parameter: dataset.batch_size, valid_options: [16, 32]},"
        " {parameter: dataset.num_instances, valid_options: [2, 4]}]",
    )
    spec.action_dir("automl").mkdir(parents=True)
    study = open_study(spec)
    study.enqueue_trial({"dataset.batch_size": 32, "dataset.num_instances": 2})
    study.enqueue_trial({"dataset.batch_size": 16, "dataset.num_instances": 4})

    result = run_automl(spec)

    trials = open_study(spec).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[0].user_attrs["error"] == (
        "infeasible: dataset.batch_size 32 / dataset.num_instances 2 needs 16 identities per "
        "batch but the train set has 12"
    )
    assert result.best_trial == 1 and result.trials == 2


def test_a_random_batch_larger_than_the_train_set_is_a_failed_trial_and_the_study_goes_on(
    synth_root: Path, tmp_path: Path
) -> None:
    """With random (``softmax``) batches, a drawn batch size above the train set's images left
    no step: the run is refused, and that refusal stopped the whole study at the first such draw.
    It belongs to the draw, so only that trial fails."""
    spec = _automl_spec(
        synth_root,
        tmp_path / "results",
        "dataset.sampler=softmax",
        "automl.automl_max_recommendations=2",
        "automl.automl_max_epochs=1",
        "automl.automl_hyperparameters=[dataset.batch_size]",
        "automl.automl_range_override=[{parameter: dataset.batch_size, valid_options: [16, 4096]}]",
    )
    spec.action_dir("automl").mkdir(parents=True)
    study = open_study(spec)
    study.enqueue_trial({"dataset.batch_size": 4096})
    study.enqueue_trial({"dataset.batch_size": 16})

    result = run_automl(spec)

    trials = open_study(spec).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert (
        trials[0]
        .user_attrs["error"]
        .startswith("infeasible: dataset.batch_size=4096 is more than the ")
    ), trials[0].user_attrs["error"]
    assert result.best_trial == 1 and result.trials == 2


def _one_epoch_random_search(synth_root: Path, tmp_path: Path) -> list[str]:
    """Overrides of the smallest study: random search of the learning rate, one short epoch
    per trial, in ``tmp_path / "results"``."""
    return [
        *tiny_overrides(synth_root, tmp_path / "results"),
        "train.steps_per_epoch=2",
        "automl.automl_enabled=true",
        "automl.automl_hyperparameters=[train.optim.base_lr]",
        "automl.automl_algorithm=random",
        "automl.automl_max_epochs=1",
    ]


def test_a_rerun_with_another_metric_is_refused_and_keeps_the_study(
    synth_root: Path, tmp_path: Path, run_main: RunMain
) -> None:
    """A study's values are one metric's: a rerun that scored its new trials by another one
    ranked a mAP against the earlier trials' rank-1 and reported the best of the mix (as the
    new metric in ``status.json``), exit 0."""
    overrides = _one_epoch_random_search(synth_root, tmp_path)
    spec_file = empty_spec(tmp_path)
    first = run_main(
        "automl", "-e", str(spec_file), *overrides, "automl.automl_max_recommendations=1"
    )
    assert first.returncode == 0, first.stderr
    folder = tmp_path / "results" / "automl"
    board = (folder / "leaderboard.csv").read_text()

    again = [*overrides, "automl.automl_max_recommendations=2", "automl.metric=mAP"]
    result = run_main("automl", "-e", str(spec_file), *again)

    assert_one_line_error(result, "automl.metric", "'mAP'", "'cmc_rank_1'", "automl.study_name")
    assert (folder / "leaderboard.csv").read_text() == board
    assert not (folder / "trial_001").exists()
    # The same metric still opens the study (it already holds its one trial).
    same = run_main(
        "automl", "-e", str(spec_file), *overrides, "automl.automl_max_recommendations=1"
    )
    assert same.returncode == 0, same.stderr


def test_a_new_study_in_a_used_folder_never_takes_over_its_trials(
    synth_root: Path, tmp_path: Path, run_main: RunMain
) -> None:
    """A second study in the same results folder (another automl.study_name, or automl.db
    deleted to start again): its trial 0 "resumed" the first study's finished trial_000 and
    scored that old model for its own, different parameters, without training; the first
    study's leaderboard and best_spec.yaml were then overwritten."""
    overrides = [
        *_one_epoch_random_search(synth_root, tmp_path),
        "automl.automl_max_recommendations=1",
    ]
    spec_file = empty_spec(tmp_path)
    first = run_main("automl", "-e", str(spec_file), *overrides)
    assert first.returncode == 0, first.stderr
    folder = tmp_path / "results" / "automl"
    # The study database takes the second study in; every other file stays as it was.
    files = [p for p in folder.rglob("*") if p.is_file() and p.suffix not in (".lock", ".db")]
    kept = {p: p.read_bytes() for p in files}

    other = [*overrides, "automl.automl_hyperparameters=[dataset.re_prob]"]
    result = run_main("automl", "-e", str(spec_file), *other, "automl.study_name=second")

    assert_one_line_error(result, str(folder / "trial_000"), "results_dir")
    assert "resuming from" not in result.stderr
    assert {p: p.read_bytes() for p in kept} == kept
