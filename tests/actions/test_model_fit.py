"""The fit check follows the one preprocessing rule: only the keys a user set are requirements.

The session's ``trained`` model is a resnet_18 with 64-d embeddings at 64x32, none of them the
spec's defaults (resnet_50, 256, 256x128), so a spec that leaves them out must take the card's
values and say so, a spec that sets another input size must be refused naming the key, and a
resume (where the spec's values, defaults included, are what gets built) must still refuse.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml

from reidkit.actions.evaluate import evaluate
from reidkit.actions.models import card_expectations, training_expectations
from reidkit.actions.train import train
from reidkit.config.loading import apply_overrides, load_spec
from reidkit.config.spec import ExperimentSpec
from reidkit.errors import CheckpointError
from tests.conftest import RunMain, assert_one_line_error

Trained = tuple[ExperimentSpec, Path]


def _spec_without_model_keys(trained: Trained, results: Path) -> ExperimentSpec:
    """The trained run's data and checkpoint, with no ``model.*`` key set by the user."""
    spec, checkpoint = trained
    data = spec.dataset
    return load_spec(
        None,
        [
            f"results_dir={results}",
            f"dataset.train_dataset_dir={data.train_dataset_dir}",
            f"dataset.test_dataset_dir={data.test_dataset_dir}",
            f"dataset.query_dataset_dir={data.query_dataset_dir}",
            f"dataset.num_classes={data.num_classes}",
            "dataset.num_workers=0",
            "dataset.val_batch_size=64",
            f"evaluate.checkpoint={checkpoint}",
        ],
    )


def test_only_keys_the_user_set_are_required(trained: Trained, tmp_path: Path) -> None:
    bare = _spec_without_model_keys(trained, tmp_path)
    assert card_expectations(bare) == {}
    sized = apply_overrides(bare, {"model.input_height": 128})
    assert card_expectations(sized) == {"input_height": ("model.input_height", 128)}
    # resume builds what the spec says, defaults included
    assert training_expectations(bare)["input_height"] == ("model.input_height", 256)
    assert training_expectations(bare)["backbone"] == ("model.backbone", "resnet_50")


def test_a_spec_without_input_size_takes_the_cards_and_says_so(
    trained: Trained, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bare = _spec_without_model_keys(trained, tmp_path)
    with caplog.at_level(logging.WARNING, logger="reidkit"):
        result = evaluate(bare)
    assert 0 <= result.metrics["mAP"] <= 100
    notes = [r.getMessage() for r in caplog.records if "from its model card" in r.getMessage()]
    assert len(notes) == 1, caplog.text
    for taken in ("model.backbone=resnet_18", "model.feat_dim=64", "model.input_height=64",
                  "model.input_width=32"):  # fmt: skip
        assert taken in notes[0]


def test_a_spec_that_sets_another_input_size_is_refused_by_the_cli(
    trained: Trained, tmp_path: Path, run_main: RunMain
) -> None:
    spec_file = tmp_path / "spec.yaml"
    bare = _spec_without_model_keys(trained, tmp_path)
    written = bare.model_dump(mode="json", exclude_unset=True)
    assert "model" not in written
    spec_file.write_text(yaml.safe_dump(written))
    result = run_main("evaluate", "-e", str(spec_file), "model.input_height=128")
    assert_one_line_error(result, "model.input_height=64", "128")
    assert "model.input_width" not in result.stderr  # the width was left to the card
    assert run_main("evaluate", "-e", str(spec_file)).returncode == 0


def test_resume_refuses_a_checkpoint_the_spec_would_not_build(
    trained: Trained, tmp_path: Path
) -> None:
    _, checkpoint = trained
    resume = apply_overrides(
        _spec_without_model_keys(trained, tmp_path),
        {"train.resume_training_checkpoint_path": str(checkpoint)},
    )
    with pytest.raises(CheckpointError, match=r"\(resuming\).*model\.input_height=64"):
        train(resume)
