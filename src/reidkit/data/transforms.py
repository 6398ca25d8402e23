"""Train and eval image pipelines of the Bag-of-Tricks recipe, sized by the spec.

The output size always comes from ``model.input_height`` x ``model.input_width`` so a 384x128
Swin spec gets 384x128 crops. Random erasing fills with 0 *after* normalisation, i.e. with the
dataset mean colour, which is what the recipe's mean-filled erasing amounts to.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from reidkit.config.spec import DatasetSpec, ModelSpec

ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = (0.3, 1 / 0.3)


def _size(model: ModelSpec) -> tuple[int, int]:
    return (model.input_height, model.input_width)


def _to_normalised_tensor(data: DatasetSpec) -> list[v2.Transform]:
    return [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(data.pixel_mean), std=list(data.pixel_std)),
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
    steps += _to_normalised_tensor(data)
    steps += [
        v2.RandomErasing(p=data.re_prob, scale=ERASE_AREA, ratio=ERASE_ASPECT, value=0),
        v2.ToPureTensor(),
    ]
    return v2.Compose(steps)


def build_eval_transform(model: ModelSpec, data: DatasetSpec) -> v2.Compose:
    """PIL image -> float32 tensor [3, H, W]: resize and normalise only (repeatable scores)."""
    steps: list[v2.Transform] = [v2.ToImage(), v2.Resize(_size(model), antialias=True)]
    return v2.Compose([*steps, *_to_normalised_tensor(data), v2.ToPureTensor()])
