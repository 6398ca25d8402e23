"""``reidkit automl``: tune the train action's hyper-parameters with an optuna study.

The study machinery (:mod:`reidkit.automl`) is a library: it is handed the function that
trains one trial, which is this layer's :func:`~reidkit.actions.fit.run_training`.
"""

from __future__ import annotations

from reidkit.actions.fit import run_training
from reidkit.actions.lifecycle import run_action
from reidkit.actions.run_record import AutomlOutcome
from reidkit.automl.space import check_automl_spec
from reidkit.automl.study import AutomlResult, run_study
from reidkit.config.spec import ExperimentSpec

__all__ = ["AutomlResult", "automl"]


def automl(spec: ExperimentSpec) -> AutomlResult:
    """Run (or resume, or join) the study until it holds ``automl_max_recommendations`` trials."""
    space = check_automl_spec(spec)
    with run_action(spec, "automl", exclusive=False) as run:
        result = run_study(spec, space, run.folder, run_training)
        outcome = AutomlOutcome(
            best_trial=result.best_trial, best_trial_dir=str(result.best_trial_dir)
        )
        kpi = {spec.automl.metric: round(result.best_value, 2)}
        run.succeed(f"best trial {result.best_trial}", kpi, outcome)
        return result
