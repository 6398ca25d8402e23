"""Checkpoints to export: small real models saved exactly as ``reidkit train`` saves them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from reidkit.config.spec import ExperimentSpec, apply_overrides, load_spec
from reidkit.engine.checkpoints import save_checkpoint
from reidkit.engine.module import model_card
from reidkit.export import ExportResult, export
from reidkit.models import ReidModel

NUM_CLASSES = 10


def make_checkpoint(folder: Path, *overrides: str) -> ExperimentSpec:
    """A spec whose ``export.checkpoint`` holds a randomly initialised model of that spec.

    BatchNorm running statistics are moved away from (0, 1) so the exported graph really has to
    carry them (an identity BN would hide a wrongly folded one).
    """
    spec = load_spec(
        None,
        [
            f"results_dir={folder / 'results'}",
            "model.pretrain_choice=self",
            "model.input_height=64",
            "model.input_width=32",
            "model.feat_dim=64",
            f"dataset.num_classes={NUM_CLASSES}",
            *overrides,
        ],
    )
    torch.manual_seed(0)
    model = ReidModel(spec.model, NUM_CLASSES, spec.train.optim)
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    path = folder / "model.pth"
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    save_checkpoint(
        {"state_dict": state, "reidkit": model_card(spec, model, NUM_CLASSES)}, path, None
    )
    return apply_overrides(spec, {"export.checkpoint": str(path)})


@pytest.fixture(scope="session")
def resnet_spec(tmp_path_factory: pytest.TempPathFactory) -> ExperimentSpec:
    return make_checkpoint(tmp_path_factory.mktemp("resnet"), "model.backbone=resnet_18")


@pytest.fixture(scope="session")
def exported(resnet_spec: ExperimentSpec) -> ExportResult:
    """The ResNet-18 checkpoint exported once with default settings, shared by the tests."""
    return export(resnet_spec)
