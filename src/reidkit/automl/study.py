"""``run_automl``: an optuna study over the train action, resumable and shareable.

The study lives in an optuna RDB storage (by default ``<automl folder>/automl.db``, SQLite); a
rerun, or a worker on another machine given the same ``automl.storage`` URL, loads it and runs
only the trials still missing. Trials send heartbeats: a trial whose process died is failed
once its heartbeat is stale and optuna queues a retry with the same parameters, which resumes
from the dead trial's checkpoint. A worker that finds every remaining slot held by running
trials waits for them, so a study never ends with a lost trial unretried.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy.exc
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from reidkit.automl.algorithms import make_pruner, make_sampler
from reidkit.automl.report import BEST_SPEC, LEADERBOARD, write_reports
from reidkit.automl.space import SearchParam
from reidkit.automl.trial import (
    Objective,
    SurplusTrial,
    TrainFunction,
    TrialFailed,
    holds_slot,
    is_finished,
)
from reidkit.config.spec import ExperimentSpec
from reidkit.errors import ReidkitError, SpecError, first_line
from reidkit.interrupts import RunInterrupted
from reidkit.redaction import mask_url_credentials, redact_url

log = logging.getLogger("reidkit")

# A killed trial is retried this many times before it stays failed.
MAX_RETRIES = 3
_OPEN_ATTEMPTS = 3
CONNECT_TIMEOUT_S = 10
#: The study's user attribute that records the metric its trials are scored by.
METRIC_ATTR = "reidkit_metric"
_NOT_A_STUDY = "; it is not an optuna study storage: give a new file or an optuna database"


@dataclass
class AutomlResult:
    """Where the study is, its best trial (metric in percent) and the files written."""

    results_dir: Path
    storage: str
    study_name: str
    trials: int
    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    best_spec: Path
    leaderboard: Path
    #: The best trial's results folder (its ``train`` run holds the checkpoints).
    best_trial_dir: Path


def storage_url(spec: ExperimentSpec) -> str:
    """``automl.storage``, or a SQLite file in the AutoML folder."""
    if spec.automl.storage:
        return spec.automl.storage
    return f"sqlite:///{(spec.action_dir('automl') / 'automl.db').resolve()}"


def open_study(spec: ExperimentSpec) -> optuna.Study:
    """Create the study, or load it when it exists (a resume or another worker)."""
    url = storage_url(spec)
    name = spec.automl.study_name or f"{spec.model_name}_automl"
    try:
        study = optuna.create_study(
            storage=_open_storage(url, spec.automl.heartbeat_interval),
            sampler=make_sampler(spec),
            pruner=make_pruner(spec),
            study_name=name,
            direction=spec.automl.direction,
            load_if_exists=True,
        )
    except optuna.exceptions.StorageInternalError as error:
        # A database whose tables are not optuna's (another program's ``studies`` table):
        # the driver's error, which names the table and column, is the one worth showing.
        raise SpecError(_cannot_open(url, error.__cause__ or error, _NOT_A_STUDY)) from None
    wanted = (
        StudyDirection.MAXIMIZE if spec.automl.direction == "maximize" else StudyDirection.MINIMIZE
    )
    if study.direction != wanted:
        raise SpecError(
            f"automl.direction: got '{spec.automl.direction}' but study '{name}' in "
            f"{redact_url(url)} {study.direction.name.lower()}s; use another automl.study_name"
        )
    _require_same_metric(study, spec.automl.metric, f"study '{name}' in {redact_url(url)}")
    return study


def _require_same_metric(study: optuna.Study, metric: str, where: str) -> None:
    """Refuse a rerun or worker that scores trials by another metric than the study's.

    optuna keeps only the values, so trials scored by ``mAP`` would be ranked against earlier
    ones scored by ``cmc_rank_1`` and the best of the mix reported as the new metric. The
    study records its metric when it is first opened (a study from before this record was kept
    adopts the metric it is opened with: its own cannot be known).
    """
    recorded = study.user_attrs.get(METRIC_ATTR)
    if recorded is None:
        study.set_user_attr(METRIC_ATTR, metric)
    elif recorded != metric:
        raise SpecError(
            f"automl.metric: got '{metric}' but {where} scores its trials by '{recorded}'; "
            f"set automl.metric={recorded} or use another automl.study_name"
        )


def _connect_args(url: str) -> dict[str, Any]:
    """Workers sharing one SQLite file wait for each other's writes; a database server that
    does not answer fails the worker within seconds instead of the TCP timeout's minutes."""
    if url.startswith("sqlite"):
        return {"timeout": 120}
    if url.startswith(("postgresql", "mysql")):
        return {"connect_timeout": CONNECT_TIMEOUT_S}
    return {}


def _open_storage(url: str, interval: int) -> optuna.storages.RDBStorage:
    """The RDB storage with heartbeats and retries of lost trials.

    Workers started together race to create the tables; the loser sees an integrity or lock
    error and simply opens the tables the winner made.
    """
    attempts = 0
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs={"connect_args": _connect_args(url)},
                    heartbeat_interval=interval,
                    grace_period=3 * interval,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                        max_retry=MAX_RETRIES, inherit_intermediate_values=True
                    ),
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError) as error:
            attempts += 1
            if attempts == _OPEN_ATTEMPTS:
                raise SpecError(_cannot_open(url, error)) from None
            time.sleep(attempts)
        except (ValueError, ImportError, sqlalchemy.exc.SQLAlchemyError) as error:
            raise SpecError(_cannot_open(url, error)) from None


def _cannot_open(url: str, error: BaseException, hint: str = "") -> str:
    reason = first_line(error) + hint
    if isinstance(error, ImportError) and url.startswith("postgresql://"):
        reason += "; write postgresql+psycopg:// to use psycopg (pip install 'psycopg[binary]')"
    # The driver's reason may quote the URL it was given: masked here, where it is known.
    return f"automl.storage: cannot open '{redact_url(url)}': {mask_url_credentials(reason)}"


def run_study(
    spec: ExperimentSpec, space: list[SearchParam], folder: Path, train: TrainFunction
) -> AutomlResult:
    """Run trials in ``folder`` until the study holds ``automl_max_recommendations`` of them.

    ``train`` trains one trial's spec (the train action's own function, handed down so this
    library never imports the action layer).
    """
    study = open_study(spec)
    target = spec.automl.automl_max_recommendations
    objective = Objective(spec, space, folder, train)

    def report(study: optuna.Study, _: Any) -> None:
        write_reports(study, spec, space, folder)

    while True:
        trials = study.get_trials(deepcopy=False)
        if sum(is_finished(t) for t in trials) >= target:
            break
        queued = any(t.state == TrialState.WAITING for t in trials)
        if queued or sum(holds_slot(t) for t in trials) < target:
            try:
                study.optimize(
                    objective, n_trials=1, catch=(TrialFailed, SurplusTrial), callbacks=[report]
                )
            except (KeyboardInterrupt, SystemExit, RunInterrupted):
                _queue_retry(study, objective.current)
                raise
        else:
            log.info("waiting for trials running elsewhere (or lost, until their heartbeat stops)")
            time.sleep(spec.automl.heartbeat_interval)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)

    best = write_reports(study, spec, space, folder)
    finished = sum(is_finished(t) for t in study.get_trials(deepcopy=False))
    if best is None:
        raise ReidkitError(
            f"AutoML ran {finished} trials and none completed (all pruned or failed); "
            f"see {folder / (LEADERBOARD + '.csv')}"
        )
    return AutomlResult(
        results_dir=folder,
        storage=storage_url(spec),
        study_name=study.study_name,
        trials=finished,
        best_trial=best.number,
        best_value=float(best.value),
        best_params={p.key: p.decode(best.params[p.key]) for p in space if p.key in best.params},
        best_spec=folder / BEST_SPEC,
        best_trial_dir=folder / best.user_attrs.get("results_dir", f"trial_{best.number:03d}"),
        leaderboard=folder / f"{LEADERBOARD}.csv",
    )


def _queue_retry(study: optuna.Study, number: int | None) -> None:
    """An interrupted trial is retried on the next run at once, like a lost one after a while.

    Ctrl-C inside training reaches here as Lightning's ``SystemExit`` with the trial still
    RUNNING (optuna only handles Exception and KeyboardInterrupt); outside it, optuna has
    already failed the trial. Either way it ends FAIL with a retry queued.
    """
    trial = _find(study, number)
    if trial is None or "surplus" in trial.user_attrs:
        return
    if trial.state == TrialState.RUNNING:
        study.tell(trial.number, state=TrialState.FAIL)
        trial = _find(study, number)
    elif trial.state != TrialState.FAIL or holds_slot(trial):
        return  # it finished, or failed by its own error: nothing to retry
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(
            max_retry=MAX_RETRIES, inherit_intermediate_values=True
        )
        retry(study, trial)


def _find(study: optuna.Study, number: int | None) -> FrozenTrial | None:
    return next((t for t in study.get_trials(deepcopy=False) if t.number == number), None)
