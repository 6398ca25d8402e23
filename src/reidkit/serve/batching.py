"""Dynamic micro-batching: concurrent requests share one forward pass.

A CNN on a CPU embeds 16 crops in far less than 16 times the time of one (the weights are
read once, the matrix products are wider), so a server that runs each request alone wastes
most of its capacity under load. :class:`MicroBatcher` queues each request's images; one worker
takes the first waiting request, gathers whatever else arrives within ``max_wait_s`` (up to
``max_batch`` images), runs the model once on a single inference thread and hands each request
its rows. While the model runs, new requests queue up and form the next batch, so under load
the wait costs nothing and when idle it costs at most ``max_wait_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

Embed = Callable[[np.ndarray], np.ndarray]


@dataclass
class _Request:
    images: np.ndarray
    done: asyncio.Future[np.ndarray] = field(repr=False)


class MicroBatcher:
    """Gathers ``[n, 3, H, W]`` requests into batches of at most ``max_batch`` images.

    ``max_batch=1`` (or ``max_wait_s=0`` with no concurrency) is one-request-at-a-time, the
    reference the load benchmark compares against. A single request larger than ``max_batch``
    runs as a batch of its own rather than being split.
    """

    def __init__(
        self,
        embed: Embed,
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._embed = embed
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max(0.0, max_wait_s)
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._carry: _Request | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reidkit-embed")
        self._worker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the worker on the running event loop (call from the app's lifespan)."""
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="reidkit-micro-batcher")

    async def stop(self) -> None:
        """Stop the worker; requests still queued fail with :class:`asyncio.CancelledError`."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        while not self._queue.empty():
            self._queue.get_nowait().done.cancel()
        self._executor.shutdown(wait=True)

    async def embed(self, images: np.ndarray) -> np.ndarray:
        """Embeddings ``[n, D]`` of ``images`` ``[n, 3, H, W]``, computed in a shared batch."""
        if self._worker is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        done: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Request(images, done))
        return await done

    async def _next(self, timeout: float | None) -> _Request | None:
        if self._carry is not None:
            request, self._carry = self._carry, None
            return request
        if timeout is None:
            return await self._queue.get()
        if not self._queue.empty():
            return self._queue.get_nowait()
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _gather(self) -> list[_Request]:
        loop = asyncio.get_running_loop()
        first = await self._next(None)
        batch, size = [first], len(first.images)
        deadline = loop.time() + self.max_wait_s
        while size < self.max_batch:
            request = await self._next(deadline - loop.time())
            if request is None:
                break
            if size + len(request.images) > self.max_batch:
                self._carry = request
                break
            batch.append(request)
            size += len(request.images)
        return [request for request in batch if not request.done.cancelled()]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if not batch:
                continue
            images = np.concatenate([request.images for request in batch])
            try:
                embeddings = await loop.run_in_executor(self._executor, self._embed, images)
            except Exception as exc:  # the callers get the error; the worker keeps serving
                for request in batch:
                    if not request.done.done():
                        request.done.set_exception(exc)
                continue
            if self._on_batch is not None:
                self._on_batch(len(images))
            start = 0
            for request in batch:
                stop = start + len(request.images)
                if not request.done.done():
                    request.done.set_result(embeddings[start:stop])
                start = stop
