"""AutoML: optuna studies over the train action, searched as the packaged train schema says.

A library: the train action's function is handed to :func:`run_study`; the ``automl`` action
(:mod:`reidkit.actions.automl`) wires the two together.
"""

from reidkit.automl.space import SearchParam, check_automl_spec
from reidkit.automl.study import AutomlResult, open_study, run_study, storage_url
from reidkit.automl.trial import trial_spec

__all__ = [
    "AutomlResult",
    "SearchParam",
    "check_automl_spec",
    "open_study",
    "run_study",
    "storage_url",
    "trial_spec",
]
