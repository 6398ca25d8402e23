"""Model identity: the card's weights digest names the trained weights in every file of a model.

A checkpoint, its ONNX export and its fp16 variant are one model; two trainings of one
architecture are two; a gallery filled by one refuses the other, in one line.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import onnx
import pytest
import torch

from reidkit.actions.export import export
from reidkit.actions.gallery import gallery_add
from reidkit.actions.train import train
from reidkit.config.loading import apply_overrides, load_spec
from reidkit.config.spec import ExperimentSpec
from reidkit.export.onnx import to_onnx
from reidkit.export.runtime import load_embedder
from reidkit.models import ReidModel, restore_model
from reidkit.models.card import CARD_KEY, IDENTITY_FIELDS, model_weights
from reidkit.models.checkpoint_file import read_checkpoint_object, save_checkpoint
from reidkit.models.digest import weights_digest
from tests.conftest import RunMain, assert_one_line_error, empty_spec, tiny_overrides

Trained = tuple[ExperimentSpec, Path]


@pytest.fixture(scope="module")
def retrained(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``trained`` fixture's architecture and data trained again from another seed."""
    results = tmp_path_factory.mktemp("retrained")
    spec = load_spec(None, [*tiny_overrides(synth_root, results), "train.seed=7"])
    return train(spec).checkpoint


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = ReidModel("resnet_18", 5, input_size=(64, 32), feat_dim=16)
    return model.state_dict()


def test_the_digest_depends_on_the_numbers_not_on_how_they_are_stored() -> None:
    weights = _weights()
    digest = weights_digest(weights)
    assert weights_digest(dict(reversed(list(weights.items())))) == digest  # any order
    contiguous = {k: v.contiguous() for k, v in weights.items()}  # the model is channels-last
    assert any(not v.is_contiguous() for v in weights.values())
    assert weights_digest(contiguous) == digest
    # Values exactly representable in fp16 hash alike stored as fp16 or fp32.
    halves = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    widened = {k: v.float() if v.is_floating_point() else v for k, v in halves.items()}
    assert weights_digest(halves) == weights_digest(widened)


def test_the_digest_changes_with_any_weight_its_name_or_its_shape() -> None:
    weights = _weights()
    digest = weights_digest(weights)
    name = "neck.bn.weight" if "neck.bn.weight" in weights else next(iter(weights))
    nudged = dict(weights)
    nudged[name] = torch.nextafter(weights[name], torch.tensor(2.0))  # one ulp
    assert weights_digest(nudged) != digest
    renamed = {("x" + k if k == name else k): v for k, v in weights.items()}
    assert weights_digest(renamed) != digest
    reshaped = dict(weights)
    reshaped[name] = weights[name].reshape(1, -1)
    assert weights_digest(reshaped) != digest
    assert weights_digest(_weights(seed=1)) != digest


def test_a_training_checkpoint_records_the_digest_of_its_weights(trained: Trained) -> None:
    _, checkpoint = trained
    stored = read_checkpoint_object(checkpoint, None)
    recorded = stored[CARD_KEY]["weights_digest"]
    assert recorded == weights_digest(model_weights(stored))
    _, card = restore_model(checkpoint)
    assert card.weights_digest == recorded


def test_checkpoint_onnx_and_fp16_export_are_one_model(trained: Trained, tmp_path: Path) -> None:
    spec, checkpoint = trained
    onnx_file = tmp_path / "model.onnx"
    overrides = {
        "results_dir": str(tmp_path),
        "export.checkpoint": str(checkpoint),
        "export.onnx_file": str(onnx_file),
        "export.fp16": True,
    }
    result = export(apply_overrides(spec, overrides))
    assert result.fp16_file is not None and result.fp16_file.is_file()
    _, card = restore_model(checkpoint, neck_feat=spec.model.neck_feat)
    identities = [card.identity()]
    for path in (onnx_file, result.fp16_file):
        _, exported = load_embedder(path)
        identities.append(exported.identity())
    assert identities[0]["weights_digest"] is not None
    assert identities[0] == identities[1] == identities[2]


def test_two_trainings_of_one_architecture_are_two_models(
    trained: Trained, retrained: Path
) -> None:
    _, first = restore_model(trained[1])
    _, second = restore_model(retrained)
    assert first.identity() != second.identity()
    # Their cards agree on everything else: only the digest tells them apart.
    differing = [k for k in IDENTITY_FIELDS if first.identity()[k] != second.identity()[k]]
    assert differing == ["weights_digest"]


def test_a_checkpoint_written_before_digests_gets_its_own_on_load(
    trained: Trained, tmp_path: Path
) -> None:
    stored = read_checkpoint_object(trained[1], None)
    expected = stored[CARD_KEY].pop("weights_digest")
    old = tmp_path / "old.pth"
    save_checkpoint(stored, old, None)
    assert restore_model(old)[1].weights_digest == expected
    assert load_embedder(old)[1].weights_digest == expected


def test_weights_edited_after_the_card_are_another_model(
    trained: Trained, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stored = read_checkpoint_object(trained[1], None)
    recorded = stored[CARD_KEY]["weights_digest"]
    weights = stored["state_dict"]
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = weights[name] + 0.01
    edited = tmp_path / "edited.pth"
    save_checkpoint(stored, edited, None)
    with caplog.at_level(logging.WARNING, logger="reidkit"):
        _, card = restore_model(edited)
    assert card.weights_digest == weights_digest(model_weights(stored)) != recorded
    assert "weights changed after its card was written" in caplog.text


def test_a_foreign_onnx_file_is_identified_by_its_bytes(trained: Trained, tmp_path: Path) -> None:
    model, card = restore_model(trained[1])
    foreign = tmp_path / "tao.onnx"
    onnx.save(to_onnx(model, card.input_height, card.input_width, 17), foreign)
    _, loaded = load_embedder(foreign)
    assert loaded.weights_digest == hashlib.sha256(foreign.read_bytes()).hexdigest()
    assert loaded.weights_digest != card.weights_digest


def test_a_gallery_refuses_a_retrained_model_in_one_line(
    trained: Trained, retrained: Path, synth_root: Path, tmp_path: Path, run_main: RunMain
) -> None:
    spec, checkpoint = trained
    crops = synth_root / "bounding_box_test"
    common = [
        "-e", str(empty_spec(tmp_path)), f"results_dir={tmp_path / 'results'}",
        "model.backbone=resnet_18", "model.input_height=64", "model.input_width=32",
        f"model.feat_dim={spec.model.feat_dim}", f"gallery.uri={tmp_path / 'gallery'}",
    ]  # fmt: skip
    filled = load_spec(
        empty_spec(tmp_path),
        [*common[2:], f"gallery.checkpoint={checkpoint}", f"gallery.crops={crops}"],
    )
    assert gallery_add(filled).added > 0
    query = sorted(crops.glob("*.jpg"))[0]
    for verb, extra in (("add", f"gallery.crops={crops}"), ("search", f"gallery.query=[{query}]")):
        refused = run_main("gallery", verb, *common, f"gallery.checkpoint={retrained}", extra)
        assert_one_line_error(refused, str(tmp_path / "gallery"))
