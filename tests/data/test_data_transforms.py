"""Train/eval transforms: output size and type follow the spec, augmentation is real."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from reidkit.config.spec import DatasetSpec, ModelSpec
from reidkit.data.preprocessing import training_preprocessing
from reidkit.data.transforms import build_eval_transform, build_train_transform


def _train(model: ModelSpec, data: DatasetSpec):
    return build_train_transform(training_preprocessing(model, data), data)


def _eval(model: ModelSpec, data: DatasetSpec):
    return build_eval_transform(training_preprocessing(model, data))


def _photo(width: int = 50, height: int = 120) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize(("height", "width"), [(256, 128), (384, 128), (64, 32), (224, 224)])
def test_both_transforms_produce_the_spec_size(height: int, width: int) -> None:
    model = ModelSpec(input_height=height, input_width=width)
    data = DatasetSpec()
    for build in (_train, _eval):
        out = build(model, data)(_photo())
        assert type(out) is torch.Tensor
        assert out.shape == (3, height, width) and out.dtype == torch.float32


def test_eval_normalises_with_the_spec_statistics() -> None:
    data = DatasetSpec(pixel_mean=[0.5, 0.25, 0.0], pixel_std=[0.5, 0.25, 1.0])
    model = ModelSpec(input_height=32, input_width=16)
    grey = Image.new("RGB", (10, 20), (255, 255, 255))
    out = _eval(model, data)(grey)
    assert torch.allclose(out[:, 5, 5], torch.tensor([1.0, 3.0, 1.0]))
    photo = _photo()
    transform = _eval(model, data)
    assert torch.equal(transform(photo), transform(photo))


def test_train_augments_and_honours_its_probabilities() -> None:
    model = ModelSpec(input_height=64, input_width=32)
    photo = _photo()
    off = _train(model, DatasetSpec(prob=0.0, re_prob=0.0, padding=0))
    assert torch.equal(off(photo), _eval(model, DatasetSpec())(photo))

    torch.manual_seed(0)
    flip = _train(model, DatasetSpec(prob=1.0, re_prob=0.0, padding=0))
    assert torch.equal(flip(photo), off(photo).flip(-1))

    erase = _train(model, DatasetSpec(prob=0.0, re_prob=1.0, padding=0))
    erased = erase(photo)
    zeros = (erased == 0).all(0).float().mean().item()
    assert 0.02 <= zeros <= 0.4  # one erased box of 2-40 % of the area, mean-filled (0)

    crop = _train(model, DatasetSpec(prob=0.0, re_prob=0.0, padding=10))
    outputs = [crop(photo) for _ in range(8)]
    assert any(not torch.equal(outputs[0], o) for o in outputs[1:])
