"""AutoML: optuna studies over the train action, searched as the packaged train schema says."""

from reidkit.automl.routing import route_train
from reidkit.automl.space import SearchParam, check_automl_spec
from reidkit.automl.study import AutomlResult, open_study, run_automl, storage_url
from reidkit.automl.trial import trial_spec

__all__ = [
    "AutomlResult",
    "SearchParam",
    "check_automl_spec",
    "open_study",
    "route_train",
    "run_automl",
    "storage_url",
    "trial_spec",
]
