"""TAO's train policy: auto + enabled = AutoML, off = plain training, broken package = say why."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from reidkit.actions.automl import AutomlResult
from reidkit.actions.fit import TrainResult
from reidkit.actions.train import train as route_train
from reidkit.config import schema
from reidkit.config.loading import load_spec
from reidkit.config.spec import ExperimentSpec
from reidkit.errors import SpecError
from tests.conftest import tiny_overrides


@pytest.fixture
def enabled(synth_root: Path, tmp_path: Path) -> ExperimentSpec:
    """AutoML on, with a one-trial, one-epoch study so that routing into it costs seconds."""
    return load_spec(
        None,
        [
            *tiny_overrides(synth_root, tmp_path / "results"),
            "train.num_epochs=1",
            "train.steps_per_epoch=1",
            "automl.automl_enabled=true",
            "automl.automl_max_recommendations=1",
            "automl.automl_max_epochs=1",
            "automl.automl_hyperparameters=[dataset.re_prob]",
        ],
    )


def test_auto_with_automl_enabled_runs_the_study(enabled: ExperimentSpec) -> None:
    result = route_train(enabled)
    assert isinstance(result, AutomlResult) and result.trials == 1
    assert (enabled.action_dir("automl") / "best_spec.yaml").is_file()
    assert not enabled.action_dir("train").exists()


def test_off_trains_plainly_whatever_the_spec_says(enabled: ExperimentSpec) -> None:
    result = route_train(enabled, "off")
    assert isinstance(result, TrainResult) and result.epochs == 1
    assert not enabled.action_dir("automl").exists()


def test_missing_packaged_schema_trains_plainly_and_says_why(
    enabled: ExperimentSpec,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(schema, "PACKAGED", tmp_path / "no_assets")
    with caplog.at_level(logging.WARNING, logger="reidkit"):
        result = route_train(enabled, "auto")
    assert isinstance(result, TrainResult)
    assert "AutoML is enabled but not runnable: packaged file 'schemas/train.schema.json'" in (
        caplog.text
    )
    assert not enabled.action_dir("automl").exists()


def test_unknown_policy_is_refused(enabled: ExperimentSpec) -> None:
    with pytest.raises(SpecError, match="automl_policy: got 'on'; allowed: auto, off"):
        route_train(enabled, "on")
