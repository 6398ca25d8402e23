"""Checkpoints to export: small real models saved exactly as ``reidkit train`` saves them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.transforms.v2 import functional as F

from reidkit.actions.export import export
from reidkit.config.loading import apply_overrides, load_spec
from reidkit.config.spec import ExperimentSpec
from reidkit.export import ExportResult
from reidkit.models.card import MODEL_PREFIX, attach_card
from reidkit.models.checkpoint_file import save_checkpoint
from tests.conftest import model_from

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
    model = model_from(spec.model, NUM_CLASSES, spec.train.optim)
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
    path = folder / "model.pth"
    checkpoint = {"state_dict": {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}}
    attach_card(checkpoint, model.card(spec.dataset.pixel_mean, spec.dataset.pixel_std))
    save_checkpoint(checkpoint, path, None)
    return apply_overrides(spec, {"export.checkpoint": str(path)})


@pytest.fixture(scope="session")
def resnet_spec(tmp_path_factory: pytest.TempPathFactory) -> ExperimentSpec:
    return make_checkpoint(tmp_path_factory.mktemp("resnet"), "model.backbone=resnet_18")


@pytest.fixture(scope="session")
def exported(resnet_spec: ExperimentSpec) -> ExportResult:
    """The ResNet-18 checkpoint exported once with default settings, shared by the tests."""
    return export(resnet_spec)


@torch.no_grad()
def embed_by_hand(
    model: torch.nn.Module,
    paths: Sequence[Path],
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
) -> np.ndarray:
    """``model``'s raw embeddings of crops resized and normalised here, step by step: the
    reference that tells which preprocessing an action really applied."""
    mean_t = torch.tensor(mean)[:, None, None]
    std_t = torch.tensor(std)[:, None, None]
    images = []
    for path in paths:
        with Image.open(path) as image:
            pixels = F.resize(F.to_image(image.convert("RGB")), list(size), antialias=True)
        images.append((pixels.float() / 255 - mean_t) / std_t)
    return model.eval()(torch.stack(images)).numpy()
