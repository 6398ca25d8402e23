"""``reidkit train``: spec in; checkpoints, ``metrics.csv`` and ``status.json`` out.

:func:`train` is what the CLI and ``reidkit.train(spec)`` call: with ``automl_policy: auto``
and AutoML enabled it runs the AutoML study instead (TAO's policy), otherwise one training run
(:func:`reidkit.actions.fit.run_training`, which AutoML's trials also use).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from reidkit.actions.fit import TrainResult, run_training
from reidkit.config.schema import packaged_schema, packaged_template
from reidkit.config.spec import ExperimentSpec
from reidkit.errors import ReidkitError, SpecError

if TYPE_CHECKING:
    from reidkit.automl.study import AutomlResult

log = logging.getLogger("reidkit")

POLICIES = ("auto", "off")


def train(spec: ExperimentSpec, policy: str | None = None) -> TrainResult | AutomlResult:
    """Train as the spec says, through AutoML when the policy routes it there.

    ``policy`` (the CLI's ``--automl-policy``) wins over ``spec.automl_policy``. TAO routes a
    train request through AutoML only when the model enables it *and* the packaged train schema
    and spec template exist and parse; otherwise it says why and trains plainly.
    """
    chosen = policy if policy is not None else spec.automl_policy
    if chosen not in POLICIES:
        raise SpecError(f"automl_policy: got '{chosen}'; allowed: {', '.join(POLICIES)}")
    if chosen == "auto" and spec.automl.automl_enabled:
        why = _automl_not_runnable()
        if why is None:
            from reidkit.actions.automl import automl  # optuna only when AutoML runs

            return automl(spec)
        log.warning("AutoML is enabled but not runnable: %s; training plainly", why)
    return run_training(spec)


def _automl_not_runnable() -> str | None:
    """Why AutoML cannot run from this installation (None when it can)."""
    try:
        packaged_schema("train")
        packaged_template("train")
    except ReidkitError as error:
        return str(error)
    return None
