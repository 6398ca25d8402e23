"""Train and eval image pipelines of the Bag-of-Tricks recipe.

Their size and normalisation are a :class:`~reidkit.data.preprocessing.Preprocessing`, resolved
by the one rule (explicit spec keys, then the model card, then TAO's defaults), so a 384x128
Swin spec gets 384x128 crops and a model is fed as its card says it was trained. Random erasing
fills with 0 *after* normalisation, i.e. with the dataset mean colour, which is what the
recipe's mean-filled erasing amounts to.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from reidkit.config.spec import DatasetSpec
from reidkit.data.preprocessing import Preprocessing

ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = (0.3, 1 / 0.3)


def _to_normalised_tensor(preprocessing: Preprocessing) -> list[v2.Transform]:
    return [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(preprocessing.pixel_mean), std=list(preprocessing.pixel_std)),
    ]


def build_train_transform(preprocessing: Preprocessing, data: DatasetSpec) -> v2.Compose:
    """PIL image -> augmented float32 tensor [3, H, W]: resize, flip, pad+crop, normalise, erase."""
    size = preprocessing.input_size
    steps: list[v2.Transform] = [
        v2.ToImage(),
        v2.Resize(size, antialias=True),
        v2.RandomHorizontalFlip(p=data.prob),
    ]
    if data.padding:
        steps += [v2.Pad(data.padding), v2.RandomCrop(size)]
    steps += _to_normalised_tensor(preprocessing)
    steps += [
        v2.RandomErasing(p=data.re_prob, scale=ERASE_AREA, ratio=ERASE_ASPECT, value=0),
        v2.ToPureTensor(),
    ]
    return v2.Compose(steps)


def build_eval_transform(preprocessing: Preprocessing) -> v2.Compose:
    """PIL image -> float32 tensor [3, H, W]: resize and normalise only (repeatable scores).

    The one evaluation pipeline: validation, evaluate, inference, export's check images, the
    gallery and the server all embed a crop through it.
    """
    steps: list[v2.Transform] = [v2.ToImage(), v2.Resize(preprocessing.input_size, antialias=True)]
    return v2.Compose([*steps, *_to_normalised_tensor(preprocessing), v2.ToPureTensor()])
