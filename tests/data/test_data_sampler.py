"""The P x K identity sampler: batch structure, epoch order, determinism and DDP sharding."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from reidkit.data.sampler import IdentitySampler
from reidkit.errors import DatasetError


def _labels(counts: list[int]) -> list[int]:
    """Labels of a dataset whose identity i has counts[i] images, interleaved like a folder."""
    rng = np.random.default_rng(0)
    labels = [i for i, n in enumerate(counts) for _ in range(n)]
    return [int(v) for v in rng.permutation(labels)]


# Market-like skew: a few identities with many images, several with fewer than K.
COUNTS = [2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 20, 30, 40, 1, 3, 10, 11, 4, 4, 4]
LABELS = _labels(COUNTS)


def _batches(sampler: IdentitySampler, batch_size: int) -> list[list[int]]:
    order = list(sampler)
    assert len(order) == len(sampler)
    assert len(order) % batch_size == 0
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@pytest.mark.parametrize(("batch_size", "k"), [(16, 4), (12, 2), (8, 8)])
def test_every_batch_is_p_identities_times_k_images(batch_size: int, k: int) -> None:
    sampler = IdentitySampler(LABELS, batch_size, k, seed=5)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = _batches(sampler, batch_size)
        assert batches
        for batch in batches:
            per_id = Counter(LABELS[i] for i in batch)
            assert len(per_id) == batch_size // k
            assert set(per_id.values()) == {k}


def test_identities_with_enough_images_never_repeat_an_image_in_a_group() -> None:
    sampler = IdentitySampler(LABELS, 16, 4, seed=1)
    for batch in _batches(sampler, 16):
        for label in {LABELS[i] for i in batch}:
            group = [i for i in batch if LABELS[i] == label]
            if COUNTS[label] >= 4:
                assert len(set(group)) == 4
            else:  # fewer than K images: repeated, from its own images only
                assert len(set(group)) <= COUNTS[label]


def test_epoch_has_random_sampler_length_and_covers_most_images() -> None:
    """N // batch_size batches per epoch (what a random sampler gives), exact and constant."""
    sampler = IdentitySampler(LABELS, 16, 4, seed=2)
    lengths = set()
    for epoch in range(5):
        sampler.set_epoch(epoch)
        lengths.add(len(list(sampler)))
    assert lengths == {len(sampler)} == {len(LABELS) // 16 * 16}
    assert len(set(sampler)) > 0.75 * len(LABELS)


def test_cuhk03_sized_epoch_takes_every_step_and_sees_most_images() -> None:
    """743 identities of ~9.7 images: 226 batches of 32 (TAO's sampler: 184), >= 80 % seen."""
    rng = np.random.default_rng(0)
    counts = rng.integers(5, 15, size=743)
    labels = _labels([int(c) for c in counts])
    sampler = IdentitySampler(labels, 32, 4, seed=0)
    assert len(sampler) == len(labels) // 32 * 32
    seen = len(set(sampler)) / len(labels)
    assert seen > 0.8, seen


def test_random_warmup_batches_come_first_then_p_x_k() -> None:
    """``random_epochs=1.5``: epoch 0 all random batches, epoch 1 half, epoch 2 none."""
    sampler = IdentitySampler(LABELS, 16, 4, seed=3, random_epochs=1.5)
    per_epoch = len(sampler) // 16

    def is_p_x_k(batch: list[int]) -> bool:
        return set(Counter(LABELS[i] for i in batch).values()) == {4}

    shapes = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        shapes.append([is_p_x_k(b) for b in _batches(sampler, 16)])
    assert shapes[0] == [False] * per_epoch
    half = round(1.5 * per_epoch) - per_epoch
    assert shapes[1] == [False] * half + [True] * (per_epoch - half)
    assert shapes[2] == [True] * per_epoch
    sampler.set_epoch(0)
    assert len(set(sampler)) == len(sampler)  # one random pass: no image twice


def test_order_is_deterministic_and_changes_with_epoch_and_seed() -> None:
    a = IdentitySampler(LABELS, 16, 4, seed=7)
    b = IdentitySampler(LABELS, 16, 4, seed=7)
    other_seed = IdentitySampler(LABELS, 16, 4, seed=8)
    a.set_epoch(3)
    b.set_epoch(3)
    other_seed.set_epoch(3)
    epoch3 = list(a)
    assert epoch3 == list(b) == list(a)
    assert epoch3 != list(other_seed)
    a.set_epoch(4)
    assert list(a) != epoch3
    a.set_epoch(3)
    assert list(a) == epoch3


@pytest.mark.parametrize("replicas", [2, 3])
def test_ddp_ranks_get_disjoint_shares_of_equal_length(replicas: int) -> None:
    labels = _labels([5, 9, 3, 8, 12, 4, 6, 7, 10, 2, 4, 8, 16, 5, 6, 9, 4, 3, 11, 7, 8, 4, 5, 6])
    for epoch in range(3):
        samplers = [IdentitySampler(labels, 8, 4, 11, replicas, rank) for rank in range(replicas)]
        for sampler in samplers:
            sampler.set_epoch(epoch)
        streams = [_batches(s, 8) for s in samplers]
        assert len({len(s) for s in samplers}) == 1
        assert len({len(s) for s in streams}) == 1
        indices = [{i for batch in s for i in batch} for s in streams]
        identities = [{labels[i] for i in share} for share in indices]
        for r in range(replicas):
            for q in range(r + 1, replicas):
                assert not indices[r] & indices[q]
                assert not identities[r] & identities[q]


def test_ddp_shares_rotate_over_epochs() -> None:
    labels = _labels([4] * 12)
    sampler = IdentitySampler(labels, 8, 4, seed=0, num_replicas=2, rank=0)
    seen = set()
    for epoch in range(6):
        sampler.set_epoch(epoch)
        seen |= {labels[i] for i in sampler}
    assert seen == set(range(12))


def test_too_few_identities_for_a_batch() -> None:
    with pytest.raises(DatasetError, match=r"a batch needs 8 identities .* only 5 of the 5"):
        IdentitySampler(_labels([4] * 5), 32, 4, seed=0)
    with pytest.raises(DatasetError, match=r"each of 2 process\(es\) gets only 6"):
        IdentitySampler(_labels([4] * 13), 32, 4, seed=0, num_replicas=2)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="multiple of num_instances"):
        IdentitySampler(LABELS, 10, 4, seed=0)
    with pytest.raises(ValueError, match=r"rank 2 is outside 0\.\.1"):
        IdentitySampler(LABELS, 8, 4, seed=0, num_replicas=2, rank=2)
