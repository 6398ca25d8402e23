"""One AutoML trial: the spec it trains, its slot in the study, and the objective that runs it.

A study has exactly ``automl_max_recommendations`` slots. Completed, pruned, running and
waiting (queued retries) trials hold one, and so does a trial whose training raised; a trial
lost with its process (stale heartbeat) gives its slot to the retry optuna queues for it, and
a trial started when another worker had just taken the last slot gives it back. Counting this
way lets any number of workers, and any number of kills and reruns, end with exactly the
requested number of trials.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from reidkit.automl.pruning import OptunaPruning
from reidkit.automl.space import SearchParam, identities_problem
from reidkit.config.loading import apply_overrides
from reidkit.config.spec import ExperimentSpec
from reidkit.errors import BatchLargerThanData, ReidkitError, SpecError, TrainingDivergedError

#: Trains one trial's spec with extra Lightning callbacks; returns an object with ``kpi``
#: (metric name -> percent) and ``epochs``: the train action's ``run_training``.
TrainFunction = Callable[..., Any]

_HOLDING = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


class TrialFailed(Exception):
    """A trial's training raised; the trial is recorded as failed and the study goes on."""


class SurplusTrial(Exception):
    """Another worker took the last slot first; this trial ends unrun and holds no slot."""


def trial_spec(spec: ExperimentSpec, params: dict[str, Any], folder: Path) -> ExperimentSpec:
    """The full train spec of a trial: the user's spec, the tuned values, its own folder.

    ``train.num_epochs`` becomes the trial budget; a fixed train results folder or resume
    checkpoint would make every trial share one run, so both are cleared; AutoML is switched
    off so that the spec (and ``best_spec.yaml``) trains plainly when run again.
    """
    return apply_overrides(
        spec,
        {
            **params,
            "results_dir": str(folder),
            "train.results_dir": None,
            "train.resume_training_checkpoint_path": None,
            "train.num_epochs": spec.automl.automl_max_epochs,
            "automl.automl_enabled": False,
        },
    )


def holds_slot(trial: FrozenTrial) -> bool:
    if trial.state == TrialState.FAIL:
        return "error" in trial.user_attrs
    return trial.state in _HOLDING


def is_finished(trial: FrozenTrial) -> bool:
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and "error" in trial.user_attrs
    )


def _require_unused(folder: Path, trial: optuna.Trial) -> None:
    """Refuse a new trial whose folder an earlier study left (another ``automl.study_name`` or
    storage, or ``automl.db`` deleted to start again) in the same results folder.

    A trial resumes from the checkpoint in its folder, so the new trial would have taken the
    old trial's model and score for its own parameters without training, and the old study's
    reports been overwritten. A retried trial of this study is not new: it inherits its
    folder through its user attributes and never comes here.
    """
    if folder.exists():
        raise SpecError(
            f"'{folder}' holds a trial that study '{trial.study.study_name}' did not run (an "
            "earlier study in this results folder); set results_dir to a new folder, or "
            "automl.study_name and automl.storage to that study's"
        )


class Objective:
    """Trains one trial in ``<automl folder>/trial_<number>`` and returns its metric."""

    def __init__(
        self, spec: ExperimentSpec, space: list[SearchParam], folder: Path, train: TrainFunction
    ) -> None:
        self.spec = spec
        self.space = space
        self.folder = folder
        self.train = train
        self.current: int | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        self.current = trial.number
        self._claim_slot(trial)
        # A retried trial inherits its original's user attributes, so it trains in the same
        # folder and resumes from that trial's latest checkpoint.
        name = trial.user_attrs.get("results_dir")
        if name is None:
            name = f"trial_{trial.number:03d}"
            _require_unused(self.folder / name, trial)
            trial.set_user_attr("results_dir", name)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        params = {param.key: param.suggest(trial) for param in self.space}
        infeasible = identities_problem(params, self.spec)
        if infeasible:
            trial.set_user_attr("error", f"infeasible: {infeasible}")
            raise TrialFailed(f"trial {trial.number}: {infeasible}")
        spec = trial_spec(self.spec, params, self.folder / name)
        metric = self.spec.automl.metric
        pruning = OptunaPruning(trial, metric)
        try:
            result = self.train(spec, callbacks=[pruning])
            value = pruning.last if pruning.last is not None else result.kpi.get(metric)
            if value is None:
                raise RuntimeError(f"training logged no {metric}")
        except optuna.TrialPruned:
            trial.set_user_attr("epochs", pruning.epoch)
            raise
        except TrainingDivergedError as error:  # these parameters diverged; others may not
            trial.set_user_attr("error", str(error)[:500])
            raise TrialFailed(f"trial {trial.number}: {error}") from None
        except BatchLargerThanData as error:
            if "dataset.batch_size" not in params:
                raise  # the spec's own batch size: every trial would fail the same way
            trial.set_user_attr("error", f"infeasible: {error}"[:500])
            raise TrialFailed(f"trial {trial.number}: {error}") from None
        except ReidkitError:
            raise  # the user's spec or data: every trial would fail the same way
        except Exception as error:
            trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:500])
            raise TrialFailed(f"trial {trial.number}: {error}") from error
        trial.set_user_attr("epochs", result.epochs)
        return value

    def _claim_slot(self, trial: optuna.Trial) -> None:
        target = self.spec.automl.automl_max_recommendations
        earlier = trial.study.get_trials(deepcopy=False)
        if sum(holds_slot(t) for t in earlier if t.number < trial.number) >= target:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"trial {trial.number}: all {target} trials were taken")
