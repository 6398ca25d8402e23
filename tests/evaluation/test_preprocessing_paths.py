"""Evaluate and inference feed a model as its card says, unless the spec says otherwise.

The model here was trained (its card says) with a normalisation that is not TAO's default. A
spec that does not mention the normalisation must not feed it the spec's defaults; a spec that
sets ``dataset.pixel_std`` explicitly is obeyed. Which preprocessing an action applied is read
off its embeddings, against the network run on crops preprocessed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reidkit.actions.infer import infer
from reidkit.config.loading import load_spec
from reidkit.data import synthesize
from reidkit.models import restore_model
from tests.export.conftest import embed_by_hand, make_checkpoint

CARD_MEAN, CARD_STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fed-as-trained")
    synthesize(root / "data", ids=4, cameras=2, images_per_id=3, height=64, width=32, seed=2)
    make_checkpoint(
        root,
        "model.backbone=resnet_18",
        f"dataset.pixel_mean={list(CARD_MEAN)}",
        f"dataset.pixel_std={list(CARD_STD)}",
    )
    return root


def _embeddings(site: Path, tmp_path: Path, *extra: str) -> tuple[list[Path], np.ndarray]:
    spec = load_spec(
        None,
        [
            f"results_dir={tmp_path}",
            "model.backbone=resnet_18",
            "model.input_height=64",
            "model.input_width=32",
            "model.feat_dim=64",
            f"dataset.test_dataset_dir={site / 'data' / 'bounding_box_test'}",
            f"dataset.query_dataset_dir={site / 'data' / 'query'}",
            "dataset.num_workers=0",
            f"inference.checkpoint={site / 'model.pth'}",
            *extra,
        ],
    )
    rows = json.loads(infer(spec).output_file.read_text())
    return [Path(r["img_path"]) for r in rows], np.array([r["embedding"] for r in rows])


def test_the_card_wins_over_the_specs_defaults(site: Path, tmp_path: Path) -> None:
    paths, ours = _embeddings(site, tmp_path)
    model, card = restore_model(site / "model.pth")
    assert (card.pixel_mean, card.pixel_std) == (CARD_MEAN, CARD_STD)
    expected = embed_by_hand(model, paths, (64, 32), CARD_MEAN, CARD_STD)
    assert np.abs(ours - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())


def test_an_explicit_spec_key_wins_over_the_card(site: Path, tmp_path: Path) -> None:
    paths, ours = _embeddings(site, tmp_path, "dataset.pixel_std=[0.226,0.226,0.226]")
    model, _ = restore_model(site / "model.pth")
    expected = embed_by_hand(model, paths, (64, 32), CARD_MEAN, (0.226, 0.226, 0.226))
    assert np.abs(ours - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())
    as_trained = embed_by_hand(model, paths, (64, 32), CARD_MEAN, CARD_STD)
    assert np.abs(ours - as_trained).max() > 1e-2  # the two really differ
