"""MicroBatcher: concurrent requests share model runs, and each gets exactly its own rows."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from reidkit.serve.batching import MicroBatcher


class RecordingModel:
    """Embeds each image as its own first pixel value, and records every batch it runs."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.batches: list[int] = []
        self.seconds = seconds

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.batches.append(len(images))
        time.sleep(self.seconds)
        return images[:, :1, 0, 0].copy()


def _requests(sizes: list[int]) -> list[np.ndarray]:
    rows, start = [], 0
    for size in sizes:
        values = np.arange(start, start + size, dtype=np.float32)
        rows.append(np.broadcast_to(values[:, None, None, None], (size, 3, 2, 2)).copy())
        start += size
    return rows


async def _run(batcher: MicroBatcher, requests: list[np.ndarray]) -> list[np.ndarray]:
    await batcher.start()
    try:
        return await asyncio.gather(*(batcher.embed(r) for r in requests))
    finally:
        await batcher.stop()


def test_concurrent_requests_are_batched_and_routed_back() -> None:
    model = RecordingModel(seconds=0.02)
    requests = _requests([1, 3, 2, 1, 4, 1, 1, 2])
    results = asyncio.run(_run(MicroBatcher(model, max_batch=8, max_wait_s=0.05), requests))
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result[:, 0], request[:, 0, 0, 0])
    assert sum(model.batches) == 15
    assert max(model.batches) <= 8 and len(model.batches) <= 3


def test_max_batch_one_runs_each_request_alone() -> None:
    model = RecordingModel()
    requests = _requests([1] * 6)
    results = asyncio.run(_run(MicroBatcher(model, max_batch=1, max_wait_s=0.05), requests))
    assert model.batches == [1] * 6
    assert [float(r[0, 0]) for r in results] == [0, 1, 2, 3, 4, 5]


def test_oversized_request_runs_alone_and_others_still_batch() -> None:
    model = RecordingModel()
    requests = _requests([2, 10, 2])
    results = asyncio.run(_run(MicroBatcher(model, max_batch=4, max_wait_s=0.05), requests))
    assert sorted(model.batches) == [2, 2, 10] or sorted(model.batches) == [4, 10]
    assert [len(r) for r in results] == [2, 10, 2]


def test_model_error_reaches_the_callers_and_the_worker_survives() -> None:
    calls = []

    def flaky(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return images[:, :1, 0, 0]

    async def scenario() -> np.ndarray:
        batcher = MicroBatcher(flaky, max_batch=4, max_wait_s=0.0)
        await batcher.start()
        try:
            with pytest.raises(RuntimeError, match="boom"):
                await batcher.embed(_requests([1])[0])
            return await batcher.embed(_requests([2])[0])
        finally:
            await batcher.stop()

    assert asyncio.run(scenario()).shape == (2, 1)
