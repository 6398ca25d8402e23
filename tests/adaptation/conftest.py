"""A real source model and real target crops small enough for adaptation rounds in seconds.

The source model is MobileNetV2 with the shared ImageNet weights at 64x32, saved exactly as
``reidkit train`` saves a model (weights + card): ImageNet features already group the crops of
one person seen by one camera, which is the structure adaptation starts from. The target is
16 identities of the real ``pku_views`` train split (two cameras, 16 crops each).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidkit.config.loading import load_spec
from reidkit.config.spec import ExperimentSpec
from reidkit.models import ReidModel, load_pretrained
from reidkit.models.card import MODEL_PREFIX, attach_card
from reidkit.models.checkpoint_file import save_checkpoint
from tests.conftest import SHARED

PKU_TRAIN = SHARED / "data" / "pku_views" / "train"
WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet_features.pth"
SIZE = (64, 32)
NUM_CLASSES = 10
#: People in the target (16 crops each, two cameras): enough for rounds that find them.
TARGET_IDS = 16


def target_folder(root: Path, identities: int) -> Path:
    """The first ``identities`` pku_views train identities, linked into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for person in sorted(PKU_TRAIN.iterdir())[:identities]:
        (root / person.name).symlink_to(person, target_is_directory=True)
    return root


def source_checkpoint(path: Path, spec: ExperimentSpec) -> Path:
    """The ImageNet MobileNetV2 re-id model of ``spec``'s shape, saved with its card."""
    model = ReidModel(
        "mobilenet_v2",
        NUM_CLASSES,
        input_size=(spec.model.input_height, spec.model.input_width),
        feat_dim=spec.model.feat_dim,
        last_stride=2,
    )
    load_pretrained(model, str(WEIGHTS))
    checkpoint = {"state_dict": {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}}
    attach_card(checkpoint, model.card(spec.dataset.pixel_mean, spec.dataset.pixel_std))
    save_checkpoint(checkpoint, path, None)
    return path


def adapt_overrides(results: Path, source: Path, target: Path) -> list[str]:
    return [
        f"results_dir={results}",
        "model.backbone=mobilenet_v2",
        f"model.input_height={SIZE[0]}",
        f"model.input_width={SIZE[1]}",
        "model.feat_dim=1280",
        "model.last_stride=2",
        f"dataset.num_classes={NUM_CLASSES}",
        "dataset.batch_size=16",
        "dataset.num_instances=4",
        "dataset.num_workers=0",
        f"adapt.checkpoint={source}",
        f"adapt.target={target}",
        "adapt.num_epochs=2",
    ]


@pytest.fixture(scope="session")
def adapt_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(source checkpoint, target folder of 16 real identities), made once per run."""
    root = tmp_path_factory.mktemp("adapt_inputs")
    spec = load_spec(None, adapt_overrides(root, root / "source.pth", root / "target"))
    return source_checkpoint(root / "source.pth", spec), target_folder(root / "target", TARGET_IDS)


@pytest.fixture
def adapt_spec(adapt_inputs: tuple[Path, Path], tmp_path: Path) -> ExperimentSpec:
    source, target = adapt_inputs
    return load_spec(None, adapt_overrides(tmp_path / "results", source, target))


def noise_crops(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` crops of uniformly random pixels, Market-named over three cameras."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, size=(128, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}_c{i % 3 + 1}s1_{i:06d}_00.jpg")
    return folder
