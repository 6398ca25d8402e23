"""The one preprocessing rule: explicit spec keys, then the model card, then TAO's defaults."""

from __future__ import annotations

import logging

import pytest

from reidkit.config.loading import apply_overrides, load_spec
from reidkit.data.preprocessing import (
    CARD,
    DEFAULT,
    resolve_preprocessing,
    spec_settings,
    training_preprocessing,
)
from reidkit.models.card import ModelCard

# TAO's documented defaults (shared/reference/tao_reid.md), written out independently of the code.
TAO_SIZE = (256, 128)
TAO_MEAN = (0.485, 0.456, 0.406)
TAO_STD = (0.226, 0.226, 0.226)

TRAINED = ModelCard(
    backbone="resnet_18",
    input_height=64,
    input_width=32,
    embedding_dim=64,
    pixel_mean=(0.5, 0.5, 0.5),
    pixel_std=(0.25, 0.25, 0.25),
)
# What an ONNX file without reidkit's metadata (TAO's export) tells: its graph's shapes only.
FOREIGN = ModelCard(backbone=None, input_height=256, input_width=128, embedding_dim=256)


def test_nothing_known_gives_taos_defaults() -> None:
    fed = resolve_preprocessing()
    assert (fed.input_size, fed.pixel_mean, fed.pixel_std) == (TAO_SIZE, TAO_MEAN, TAO_STD)
    assert set(fed.sources.values()) == {DEFAULT}


def test_the_specs_defaults_are_not_explicit_and_lose_to_the_card() -> None:
    spec = load_spec(None, ["model.backbone=resnet_18", "dataset.num_classes=5"])
    assert spec_settings(spec.model, spec.dataset) == {}
    fed = resolve_preprocessing(spec_settings(spec.model, spec.dataset), TRAINED)
    assert (fed.input_size, fed.pixel_mean, fed.pixel_std) == ((64, 32), (0.5,) * 3, (0.25,) * 3)
    assert set(fed.sources.values()) == {CARD}
    assert fed.note("checkpoint 'm.pth'") is None  # nothing assumed: nothing to say


def test_an_explicit_key_wins_over_the_card_and_the_note_says_so() -> None:
    spec = load_spec(None, ["dataset.pixel_std=[0.2,0.3,0.4]"])
    fed = resolve_preprocessing(spec_settings(spec.model, spec.dataset), TRAINED)
    assert fed.pixel_std == (0.2, 0.3, 0.4) and fed.pixel_mean == (0.5, 0.5, 0.5)
    assert fed.sources["pixel_std"] == "dataset.pixel_std"
    assert fed.overridden == {"pixel_std": (0.25, 0.25, 0.25)}
    note = fed.note("checkpoint 'm.pth'")
    assert note is not None and "\n" not in note
    assert "dataset.pixel_std, not the model card's [0.25, 0.25, 0.25]" in note


def test_explicit_keys_equal_to_the_card_override_nothing() -> None:
    spec = load_spec(None, ["dataset.pixel_mean=[0.5,0.5,0.5]", "model.input_height=64"])
    fed = resolve_preprocessing(spec_settings(spec.model, spec.dataset), TRAINED)
    assert fed.overridden == {} and fed.note("x") is None
    assert fed.sources["pixel_mean"] == "dataset.pixel_mean"


def test_a_card_less_file_takes_its_size_from_the_graph_and_assumes_the_rest(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="reidkit"):
        fed = resolve_preprocessing({}, FOREIGN, model="ONNX file 'tao.onnx'")
    assert (fed.input_size, fed.pixel_mean, fed.pixel_std) == ((256, 128), TAO_MEAN, TAO_STD)
    assert fed.sources == {
        "input_height": CARD,
        "input_width": CARD,
        "pixel_mean": DEFAULT,
        "pixel_std": DEFAULT,
    }
    (record,) = caplog.records  # logged once, one line
    assert "ONNX file 'tao.onnx'" in record.message and "\n" not in record.message
    assert "TAO's default" in record.message and "dataset.pixel_mean" in record.message


def test_a_card_and_its_dictionary_resolve_alike() -> None:
    spec = load_spec(None, ["dataset.pixel_mean=[0.1,0.2,0.3]"])
    explicit = spec_settings(spec.model, spec.dataset)
    assert resolve_preprocessing(explicit, TRAINED) == resolve_preprocessing(
        explicit, TRAINED.to_dict()
    )


def test_training_is_fed_the_specs_values() -> None:
    spec = load_spec(None, ["model.input_height=384", "dataset.pixel_std=[0.229,0.224,0.225]"])
    fed = training_preprocessing(spec.model, spec.dataset)
    assert fed.input_size == (384, spec.model.input_width)
    assert fed.pixel_mean == tuple(spec.dataset.pixel_mean) == TAO_MEAN
    assert fed.pixel_std == tuple(spec.dataset.pixel_std)


def test_a_copied_spec_keeps_what_was_explicit() -> None:
    """AutoML trials and tests copy specs with apply_overrides: a default stays a default."""
    spec = load_spec(None, ["dataset.pixel_std=[0.2,0.2,0.2]"])
    copy = apply_overrides(spec, {"model.input_width": 64})
    assert set(spec_settings(copy.model, copy.dataset)) == {"pixel_std", "input_width"}


def test_a_card_records_the_preprocessing_it_is_fed() -> None:
    fed = resolve_preprocessing({}, FOREIGN)
    card = FOREIGN.with_preprocessing(fed.values())
    assert (card.pixel_mean, card.pixel_std) == (TAO_MEAN, TAO_STD)
    assert card.identity() != FOREIGN.identity()  # fed otherwise, another embedding space
    with pytest.raises(ValueError, match="backbone"):
        FOREIGN.with_preprocessing({"backbone": "resnet_50"})
