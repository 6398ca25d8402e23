"""TAO's train-action policy: with ``automl_policy: auto`` and AutoML enabled, train = AutoML.

TAO routes a train request through AutoML only when the model enables it *and* the packaged
train schema and spec template exist and parse; otherwise it says why and trains plainly.
"""

from __future__ import annotations

import logging

from reidkit.automl.study import AutomlResult, run_automl
from reidkit.config.schema import packaged_schema, packaged_template
from reidkit.config.spec import ExperimentSpec
from reidkit.engine.train import TrainResult, train
from reidkit.errors import ReidkitError, SpecError

log = logging.getLogger("reidkit")

POLICIES = ("auto", "off")


def route_train(spec: ExperimentSpec, policy: str | None = None) -> AutomlResult | TrainResult:
    """Run AutoML or plain training as the policy says; returns that action's result.

    ``policy`` (the CLI's ``--automl-policy``) wins over ``spec.automl_policy``.
    """
    chosen = policy if policy is not None else spec.automl_policy
    if chosen not in POLICIES:
        raise SpecError(f"automl_policy: got '{chosen}'; allowed: {', '.join(POLICIES)}")
    if chosen == "auto" and spec.automl.automl_enabled:
        why = _not_runnable()
        if why is None:
            return run_automl(spec)
        log.warning("AutoML is enabled but not runnable: %s; training plainly", why)
    return train(spec)


def _not_runnable() -> str | None:
    """Why AutoML cannot run from this installation (None when it can)."""
    try:
        packaged_schema("train")
        packaged_template("train")
    except ReidkitError as error:
        return str(error)
    return None
