"""Batch augmentation on the device: same pixels and same distributions as the PIL pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from PIL import Image
from torchvision.transforms import v2

from reidkit.config.spec import DatasetSpec, ModelSpec
from reidkit.data.device_batches import (
    BatchAugmentation,
    DeviceTrainSet,
    IndexDataset,
    cache_nbytes,
    choose_device_cache,
    decode_images,
)
from reidkit.data.market import ImageRecord
from reidkit.data.preprocessing import training_preprocessing
from reidkit.data.transforms import ERASE_AREA, ERASE_ASPECT, build_eval_transform
from reidkit.errors import DatasetError

MODEL = ModelSpec(input_height=64, input_width=32)
# A mean no pixel value hits exactly, so a normalised 0 can only come from erasing.
NO_ZERO = {"pixel_mean": [0.5, 0.5, 0.5], "pixel_std": [0.25, 0.25, 0.25]}


def _augmentation(**data: object) -> BatchAugmentation:
    spec = DatasetSpec(**data)
    return BatchAugmentation.from_spec(training_preprocessing(MODEL, spec), spec)


def _cache(count: int = 8, seed: int = 0) -> torch.Tensor:
    """Random uint8 images 1..255, so a zero pixel can only come from the padding."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (count, 3, 64, 32), dtype=torch.uint8, generator=generator)


def _run(augmentation: BatchAugmentation, cache: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return augmentation(cache, torch.arange(len(cache)), torch.Generator().manual_seed(seed))


def _plain(cache: torch.Tensor, data: DatasetSpec) -> torch.Tensor:
    """The cache scaled and normalised, with no augmentation (the reference of these tests)."""
    mean = torch.tensor(data.pixel_mean)[:, None, None]
    std = torch.tensor(data.pixel_std)[:, None, None]
    return (cache.float() / 255 - mean) / std


@pytest.fixture
def photos(tmp_path: Path) -> list[ImageRecord]:
    """Real files of assorted sizes, so decoding has to resize (up and down) like the CPU path."""
    rng = np.random.default_rng(1)
    records = []
    for i, (width, height) in enumerate([(50, 120), (64, 128), (20, 40), (33, 97)]):
        path = tmp_path / f"{i + 1:04d}_c1s1_00000{i}_00.jpg"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
        records.append(ImageRecord(path, i + 1, 1))
    return records


def test_batch_is_float_channels_last_of_the_spec_size() -> None:
    out = _run(_augmentation(), _cache())
    assert out.shape == (8, 3, 64, 32) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_unaugmented_batch_equals_the_eval_transform(photos: list[ImageRecord]) -> None:
    data = DatasetSpec(prob=0.0, re_prob=0.0, padding=0)
    cache = decode_images(photos, (64, 32))
    assert cache.dtype == torch.uint8 and cache.shape == (4, 3, 64, 32)
    out = _run(BatchAugmentation.from_spec(training_preprocessing(MODEL, data), data), cache)
    reference = torch.stack(
        [
            build_eval_transform(training_preprocessing(MODEL, data))(
                Image.open(r.path).convert("RGB")
            )
            for r in photos
        ]
    )
    pixel_error = (out - reference).abs() * torch.tensor(data.pixel_std)[:, None, None]
    assert pixel_error.max() <= 1e-5  # the same resize, so far inside 1/255


def test_decoding_names_an_unreadable_file(photos: list[ImageRecord]) -> None:
    photos[2].path.write_bytes(b"")
    with pytest.raises(DatasetError, match=photos[2].path.name):
        decode_images(photos, (64, 32))


def test_flip_with_probability_one_mirrors_every_image() -> None:
    cache = _cache()
    flipped = _run(_augmentation(prob=1.0, re_prob=0.0, padding=0), cache)
    unflipped = _run(_augmentation(prob=0.0, re_prob=0.0, padding=0), cache)
    assert torch.equal(flipped, unflipped.flip(-1))
    assert torch.allclose(unflipped, _plain(cache, DatasetSpec()), atol=1e-6)


def _offset_of(image: torch.Tensor, padded: torch.Tensor, padding: int) -> tuple[int, int] | None:
    """The (top, left) at which ``image`` was cropped from ``padded``, or None if nowhere."""
    height, width = image.shape[-2:]
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            if torch.equal(padded[:, top : top + height, left : left + width], image):
                return top, left
    return None


def test_pad_crop_and_flip_are_crops_of_the_zero_padded_image() -> None:
    padding, cache = 3, _cache(count=64)
    out = _run(_augmentation(prob=0.5, re_prob=0.0, padding=padding, **NO_ZERO), cache)
    pixels = (out * 0.25 + 0.5) * 255  # back to the uint8 scale, padding included (0)
    offsets, flips = [], 0
    for image, source in zip(pixels.round().to(torch.uint8), cache, strict=True):
        padded = nnf.pad(source, (padding,) * 4)
        offset = _offset_of(image, padded, padding)
        if offset is None:
            offset = _offset_of(image, padded.flip(-1), padding)
            flips += 1
        assert offset is not None
        offsets.append(offset)
    assert 16 <= flips <= 48  # 64 draws at p = 0.5
    tops, lefts = zip(*offsets, strict=True)
    assert set(tops) == set(lefts) == set(range(2 * padding + 1))  # every offset of 0..2p occurs


def _erased_fractions(out: torch.Tensor) -> torch.Tensor:
    return (out == 0).all(1).float().mean((1, 2))


def test_erasing_boxes_are_rectangles_of_the_configured_area() -> None:
    out = _run(_augmentation(prob=0.0, re_prob=1.0, padding=0, **NO_ZERO), _cache(count=64))
    zeros = (out == 0).all(1)
    for mask in zeros:
        rows, cols = mask.any(1).nonzero()[:, 0], mask.any(0).nonzero()[:, 0]
        assert mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()  # one box
        assert mask.sum() == len(rows) * len(cols)
    fractions = _erased_fractions(out)
    # Rounding the box sides to whole pixels moves the area a little past the nominal 2-40 %.
    assert fractions.min() >= 0.015 and fractions.max() <= 0.45


def test_erasing_matches_torchvision_random_erasing_in_distribution() -> None:
    count = 400
    data = DatasetSpec(prob=0.0, re_prob=0.5, padding=0, **NO_ZERO)
    ours = _erased_fractions(
        _run(BatchAugmentation.from_spec(training_preprocessing(MODEL, data), data), _cache(count))
    )
    erase = v2.RandomErasing(p=0.5, scale=ERASE_AREA, ratio=ERASE_ASPECT, value=0)
    torch.manual_seed(0)
    base = _plain(_cache(1), data)[0]
    theirs = torch.stack([(erase(base) == 0).all(0).float().mean() for _ in range(count)])
    for fractions in (ours, theirs):
        assert 0.4 <= (fractions > 0).float().mean() <= 0.6
    assert abs(ours[ours > 0].mean() - theirs[theirs > 0].mean()) < 0.03  # both about 0.19


def _train_set(seed: int = 7, rank: int = 0) -> DeviceTrainSet:
    return DeviceTrainSet(_cache(count=32), _augmentation(), seed, rank)


def test_batches_are_reproducible_per_seed_epoch_and_rank() -> None:
    indices = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6])
    first = _train_set().batch(indices, epoch=0)
    assert torch.equal(first, _train_set().batch(indices, epoch=0))
    assert not torch.equal(first, _train_set().batch(indices, epoch=1))
    assert not torch.equal(first, _train_set(rank=1).batch(indices, epoch=0))
    assert not torch.equal(first, _train_set(seed=8).batch(indices, epoch=0))


def test_each_epoch_restarts_its_own_stream() -> None:
    """An epoch's batches do not depend on the epochs before it (resume augments alike)."""
    indices = torch.arange(8)
    uninterrupted = _train_set()
    uninterrupted.batch(indices, epoch=0)
    assert torch.equal(uninterrupted.batch(indices, epoch=1), _train_set().batch(indices, epoch=1))


def test_index_dataset_carries_no_images() -> None:
    dataset = IndexDataset([0, 0, 1], [1, 2, 1])
    assert len(dataset) == 3 and dataset[2] == (2, 1, 1)


def test_setting_on_and_off_win_and_auto_needs_a_gpu() -> None:
    cpu, nbytes = torch.device("cpu"), cache_nbytes(12936, (256, 128))
    assert nbytes == 12936 * 3 * 256 * 128
    assert choose_device_cache("on", cpu, nbytes)[0]
    assert not choose_device_cache("off", torch.device("cuda", 0), nbytes)[0]
    chosen, reason = choose_device_cache("auto", cpu, nbytes)
    assert not chosen and "no GPU" in reason


@pytest.mark.parametrize(("free_gib", "chosen"), [(80, True), (4, False)])
def test_auto_caches_only_what_fits_in_free_gpu_memory(
    monkeypatch: pytest.MonkeyPatch, free_gib: int, chosen: bool
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free_gib * 2**30, 80 * 2**30))
    nbytes = cache_nbytes(12936, (256, 128))  # Market-1501's train split, 1.2 GiB
    picked, reason = choose_device_cache("auto", torch.device("cuda", 0), nbytes)
    assert picked is chosen and "GiB" in reason
