"""The device-resident train path: decode the train split once, augment whole batches on device.

The per-image PIL pipeline (decode, resize, flip, pad, crop, erase) costs about a millisecond
of CPU per image, which caps a fast GPU at a few hundred images per second. Here the train
split is decoded and resized once into one ``uint8`` tensor ``[N, 3, H, W]`` that lives on the
training device; the loader yields only indices, and :class:`BatchAugmentation` applies the
train transform of :mod:`reidkit.data.transforms` to a whole batch with a handful of tensor ops.

Same parameters and distributions as the PIL pipeline: resize first (here once, at decode time,
with the very same ``v2.Resize`` on the ``uint8`` image, so the pixels are identical), then
per-sample flip with ``prob``, zero padding by ``padding`` and a uniformly placed crop back to
``H x W``, ``float`` scaling and normalisation, and random erasing with ``re_prob`` (area
2-40 %, aspect 0.3-3.33, up to 10 tries, filled with 0 after normalisation). The random
streams differ: draws come from a generator seeded from ``(seed, epoch, rank)`` instead of the
global RNG of each loader worker, so a batch is reproducible from those three numbers alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from reidkit.config.spec import DatasetSpec
from reidkit.data.dataset import ImageDataset
from reidkit.data.market import ImageRecord
from reidkit.data.preprocessing import Preprocessing
from reidkit.data.transforms import ERASE_AREA, ERASE_ASPECT

# 'auto' caches only when the uint8 set takes at most this share of the free GPU memory: the
# model, optimizer state and activations of training need the rest.
SAFE_MEMORY_FRACTION = 0.25
# torchvision's RandomErasing tries this many boxes before it gives up on an image.
ERASE_TRIES = 10

DeviceCacheSetting = Literal["auto", "on", "off"]


def cache_nbytes(count: int, size: tuple[int, int]) -> int:
    """Bytes of the decoded ``uint8`` train set (known before decoding, for the 'auto' check)."""
    return count * 3 * size[0] * size[1]


def choose_device_cache(
    setting: DeviceCacheSetting, device: torch.device, nbytes: int
) -> tuple[bool, str]:
    """Whether to use the device path, and why (the reason is logged for the user)."""
    if setting == "off":
        return False, "dataset.device_cache is 'off'"
    if setting == "on":
        return True, f"dataset.device_cache is 'on' (device {device})"
    if device.type != "cuda" or not torch.cuda.is_available():
        return False, f"dataset.device_cache is 'auto' and the training device is {device}, no GPU"
    free, _ = torch.cuda.mem_get_info(device)
    needed, budget = nbytes / 2**30, SAFE_MEMORY_FRACTION * free / 2**30
    if nbytes > SAFE_MEMORY_FRACTION * free:
        return False, (
            f"dataset.device_cache is 'auto' and the train set needs {needed:.2f} GiB, more "
            f"than {SAFE_MEMORY_FRACTION:.0%} of the free memory of {device} ({budget:.2f} GiB)"
        )
    return True, (
        f"dataset.device_cache is 'auto' and the train set ({needed:.2f} GiB) fits in "
        f"{SAFE_MEMORY_FRACTION:.0%} of the free memory of {device} ({budget:.2f} GiB)"
    )


def decode_images(
    records: Sequence[ImageRecord], size: tuple[int, int], max_workers: int = 2
) -> Tensor:
    """All records as one ``uint8`` tensor ``[N, 3, H, W]``, decoded and resized in threads.

    Decoding goes through :class:`ImageDataset` so an unreadable file is named as usual, and it
    uses the train pipeline's own ``v2.Resize`` so the pixels equal the CPU path's. The buffer
    is pinned when a GPU exists, which makes the one copy to the GPU fast.
    """
    resize = v2.Compose([v2.ToImage(), v2.Resize(size, antialias=True), v2.ToPureTensor()])
    dataset = ImageDataset(records, resize)
    images = torch.empty(
        (len(records), 3, *size), dtype=torch.uint8, pin_memory=torch.cuda.is_available()
    )

    def fill(index: int) -> None:
        images[index] = dataset[index][0]

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        list(pool.map(fill, range(len(records))))
    return images


class IndexDataset(Dataset[tuple[int, int, int]]):
    """``(index, label, camid)`` per train record: all the device path's loader has to carry."""

    def __init__(self, labels: Sequence[int], camids: Sequence[int]) -> None:
        if len(labels) != len(camids):
            raise ValueError(f"{len(labels)} labels given for {len(camids)} camera ids")
        self.labels = list(labels)
        self.camids = list(camids)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[int, int, int]:
        return index, self.labels[index], self.camids[index]


def augmentation_seed(seed: int, epoch: int, rank: int) -> int:
    """A well-mixed 63-bit seed per ``(seed, epoch, rank)``: epochs and ranks draw differently."""
    state = np.random.SeedSequence([seed, epoch, rank]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def _uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator) -> Tensor:
    return torch.empty(shape, device=generator.device).uniform_(low, high, generator=generator)


def _below(bound: Tensor, generator: torch.Generator) -> Tensor:
    """A uniform integer in ``0 .. bound - 1`` per element of ``bound`` (int64, ``bound >= 1``)."""
    draw = torch.rand(bound.shape, device=bound.device, generator=generator) * bound
    return torch.minimum(draw.long(), bound - 1)


@dataclass(frozen=True)
class BatchAugmentation:
    """The train transform of :mod:`reidkit.data.transforms`, applied to a batch on its device."""

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    prob: float
    padding: int
    re_prob: float

    @classmethod
    def from_spec(cls, preprocessing: Preprocessing, data: DatasetSpec) -> BatchAugmentation:
        """Size and normalisation as resolved for training, augmentation from ``dataset``."""
        return cls(
            size=preprocessing.input_size,
            mean=preprocessing.pixel_mean,
            std=preprocessing.pixel_std,
            prob=data.prob,
            padding=data.padding,
            re_prob=data.re_prob,
        )

    def __call__(self, cache: Tensor, indices: Tensor, generator: torch.Generator) -> Tensor:
        """Augmented float32 images ``[B, 3, H, W]`` (channels_last) of ``cache[indices]``."""
        images = self._flip_pad_crop(cache, indices, generator)
        images = F.to_dtype(images, torch.float32, scale=True)
        images = F.normalize(images, list(self.mean), list(self.std), inplace=True)
        if self.re_prob > 0:
            images = images.masked_fill_(self._erase_mask(len(indices), generator), 0.0)
        return images.contiguous(memory_format=torch.channels_last)

    def _flip_pad_crop(self, cache: Tensor, indices: Tensor, generator: torch.Generator) -> Tensor:
        """Flip, zero-pad and crop in one gather from the uint8 cache (no padded copy).

        Row and column indices are placed in padded coordinates, then shifted back into the
        image; those that fall into the padding read pixel 0 and are zeroed, as ``v2.Pad`` does.
        A flipped image padded and cropped at ``left`` reads column ``W + 2p - 1 - left - j``
        of the padded original.
        """
        batch, (height, width), pad = len(indices), self.size, self.padding
        device = cache.device
        flipped = torch.rand(batch, device=device, generator=generator) < self.prob
        top = torch.randint(0, 2 * pad + 1, (batch,), device=device, generator=generator)
        left = torch.randint(0, 2 * pad + 1, (batch,), device=device, generator=generator)
        rows = top[:, None] + torch.arange(height, device=device) - pad
        cols = left[:, None] + torch.arange(width, device=device)
        cols = torch.where(flipped[:, None], width + 2 * pad - 1 - cols, cols) - pad
        inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[
            :, None, :
        ]
        gathered = cache[
            indices[:, None, None],
            :,
            rows.clamp(0, height - 1)[:, :, None],
            cols.clamp(0, width - 1)[:, None, :],
        ]  # [B, H, W, 3]: advanced indices around a slice go first
        return gathered.masked_fill_(~inside[..., None], 0).permute(0, 3, 1, 2)

    def _erase_mask(self, batch: int, generator: torch.Generator) -> Tensor:
        """``[B, 1, H, W]`` True inside each erased box, as ``v2.RandomErasing`` picks them.

        Every image gets ``ERASE_TRIES`` candidate boxes at once; the first that fits is used,
        and an image where none fits (or that loses the ``re_prob`` draw) is left untouched.
        """
        height, width = self.size
        device = generator.device
        erased = torch.rand(batch, device=device, generator=generator) < self.re_prob
        area = height * width * _uniform((batch, ERASE_TRIES), *ERASE_AREA, generator)
        log_low, log_high = math.log(ERASE_ASPECT[0]), math.log(ERASE_ASPECT[1])
        aspect = _uniform((batch, ERASE_TRIES), log_low, log_high, generator).exp()
        box_h = (area * aspect).sqrt().round().long()
        box_w = (area / aspect).sqrt().round().long()
        fits = (box_h < height) & (box_w < width)
        first = fits.long().argmax(dim=1, keepdim=True)
        box_h, box_w = box_h.gather(1, first)[:, 0], box_w.gather(1, first)[:, 0]
        erased &= fits.any(dim=1)
        top = _below((height - box_h + 1).clamp(min=1), generator)
        left = _below((width - box_w + 1).clamp(min=1), generator)
        rows = torch.arange(height, device=device)[None]
        cols = torch.arange(width, device=device)[None]
        in_rows = (rows >= top[:, None]) & (rows < (top + box_h)[:, None])
        in_cols = (cols >= left[:, None]) & (cols < (left + box_w)[:, None])
        mask = in_rows[:, :, None] & in_cols[:, None, :] & erased[:, None, None]
        return mask[:, None]


class DeviceTrainSet:
    """The decoded train set on its device plus the per-epoch generator of its augmentation."""

    def __init__(
        self, images: Tensor, augmentation: BatchAugmentation, seed: int, rank: int
    ) -> None:
        self.images = images
        self.augmentation = augmentation
        self.seed = seed
        self.rank = rank
        self._generator = torch.Generator(device=images.device)
        self._epoch: int | None = None

    def batch(self, indices: Tensor, epoch: int) -> Tensor:
        """Augmented images for ``indices``; the first batch of an epoch reseeds the generator.

        Reseeding from ``(seed, epoch, rank)`` makes each epoch's draws independent of how
        many batches ran before (a resumed run augments its epochs as an uninterrupted one).
        """
        if epoch != self._epoch:
            self._generator.manual_seed(augmentation_seed(self.seed, epoch, self.rank))
            self._epoch = epoch
        return self.augmentation(self.images, indices.to(self.images.device), self._generator)
