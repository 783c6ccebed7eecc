"""Dynamic micro-batching: requests that arrive close together run as one forward pass.

A request waits at most `max_wait_ms` after the first one of its batch arrived, and a batch holds at most
`max_batch` images (a request larger than that runs alone, in chunks). The model runs on one worker thread per
model, so the event loop keeps accepting and decoding requests while a batch computes; on a CPU, one forward pass
at a time over a larger batch is what uses the cores well.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

Forward = Callable[[np.ndarray], np.ndarray]


class Batcher(Protocol):
    """What the server needs of a batcher: MicroBatcher here, Ray Serve's @serve.batch under --ray."""

    def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def infer(self, pixels: np.ndarray) -> np.ndarray: ...


MakeBatcher = Callable[[Forward, int, float, "Callable[[BatchRecord], None] | None"], Batcher]


@dataclass
class _Request:
    pixels: np.ndarray
    future: asyncio.Future[np.ndarray]
    queued: float


@dataclass
class BatchRecord:
    """What one forward pass held, for metrics."""

    images: int
    requests: int
    queue_seconds: list[float]
    compute_seconds: float


class MicroBatcher:
    def __init__(
        self,
        forward: Forward,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        observe: Callable[[BatchRecord], None] | None = None,
    ) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError("max_batch must be at least 1 and max_wait_ms at least 0")
        self.forward, self.max_batch, self.max_wait = forward, max_batch, max_wait_ms / 1000
        self.observe = observe
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="vitkit-model")
        self.queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._carry: _Request | None = None  # a request that would have overfilled the last batch
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def infer(self, pixels: np.ndarray) -> np.ndarray:
        """Logits for (n, 3, H, W) pixels, computed in whatever batch this request joins."""
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await self.queue.put(_Request(pixels, future, time.perf_counter()))
        return await future

    async def _next_batch(self) -> list[_Request]:
        first = self._carry or await self.queue.get()
        self._carry = None
        batch, images = [first], len(first.pixels)
        deadline = time.perf_counter() + self.max_wait
        while images < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                item = (
                    self.queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self.queue.get(), remaining)
                )
            except (asyncio.QueueEmpty, TimeoutError):
                break
            if images + len(item.pixels) > self.max_batch:
                self._carry = item  # starts the next batch
                break
            batch.append(item)
            images += len(item.pixels)
        return batch

    def _run(self, pixels: np.ndarray) -> np.ndarray:
        chunks = [pixels[i : i + self.max_batch] for i in range(0, len(pixels), self.max_batch)]
        return np.concatenate([self.forward(chunk) for chunk in chunks])

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            start = time.perf_counter()
            pixels = np.concatenate([r.pixels for r in batch])
            try:
                logits = await loop.run_in_executor(self.executor, self._run, pixels)
            except Exception as exc:  # the model failed: every request of the batch gets the error, the loop goes on
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(exc)
                continue
            end = 0
            for r in batch:
                if not r.future.done():  # a client that went away cancelled its future
                    r.future.set_result(logits[end : end + len(r.pixels)])
                end += len(r.pixels)
            if self.observe is not None:
                queued = [start - r.queued for r in batch]
                self.observe(BatchRecord(len(pixels), len(batch), queued, time.perf_counter() - start))
