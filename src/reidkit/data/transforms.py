"""Train and eval image pipelines of the Bag-of-Tricks recipe, sized by the spec.

The output size always comes from ``model.input_height`` x ``model.input_width`` so a 384x128
Swin spec gets 384x128 crops. Random erasing fills with 0 *after* normalisation, i.e. with the
dataset mean colour, which is what the recipe's mean-filled erasing amounts to.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from reidkit.config.spec import DatasetSpec, ModelSpec

ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = (0.3, 1 / 0.3)


def _size(model: ModelSpec) -> tuple[int, int]:
    return (model.input_height, model.input_width)


def _to_normalised_tensor(
    pixel_mean: Sequence[float], pixel_std: Sequence[float]
) -> list[v2.Transform]:
    return [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(pixel_mean), std=list(pixel_std)),
    ]


def build_train_transform(model: ModelSpec, data: DatasetSpec) -> v2.Compose:
    """PIL image -> augmented float32 tensor [3, H, W]: resize, flip, pad+crop, normalise, erase."""
    size = _size(model)
    steps: list[v2.Transform] = [
        v2.ToImage(),
        v2.Resize(size, antialias=True),
        v2.RandomHorizontalFlip(p=data.prob),
    ]
    if data.padding:
        steps += [v2.Pad(data.padding), v2.RandomCrop(size)]
    steps += _to_normalised_tensor(data.pixel_mean, data.pixel_std)
    steps += [
        v2.RandomErasing(p=data.re_prob, scale=ERASE_AREA, ratio=ERASE_ASPECT, value=0),
        v2.ToPureTensor(),
    ]
    return v2.Compose(steps)


def build_eval_transform(model: ModelSpec, data: DatasetSpec) -> v2.Compose:
    """PIL image -> float32 tensor [3, H, W]: resize and normalise only (repeatable scores)."""
    return eval_transform(_size(model), data.pixel_mean, data.pixel_std)


def eval_transform(
    size: tuple[int, int], pixel_mean: Sequence[float], pixel_std: Sequence[float]
) -> v2.Compose:
    """The eval pipeline from plain numbers, e.g. a model card's input size and normalisation
    (what the gallery uses to embed a site's crops exactly as evaluation does)."""
    steps: list[v2.Transform] = [v2.ToImage(), v2.Resize(size, antialias=True)]
    return v2.Compose([*steps, *_to_normalised_tensor(pixel_mean, pixel_std), v2.ToPureTensor()])
