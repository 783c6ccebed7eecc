"""MicroBatcher on its own: batches never exceed max_batch, every request gets its own rows back, a request
larger than a batch runs in chunks, and a failing forward pass fails only the requests of its batch."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from vitkit.serve import require_serve
from vitkit.serve.batching import BatchRecord, MicroBatcher


def run(coroutine):
    return asyncio.run(coroutine)


def rows(start: int, n: int) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32).reshape(n, 1)


def test_batches_hold_at_most_max_batch_and_answers_go_back_to_their_requests():
    seen: list[int] = []

    async def main() -> list[np.ndarray]:
        records: list[BatchRecord] = []
        batcher = MicroBatcher(lambda x: x * 2, max_batch=4, max_wait_ms=50, observe=records.append)
        batcher.start()
        sizes = [1, 2, 3, 1, 2, 6]  # the last one alone is larger than a batch
        starts = np.cumsum([0, *sizes[:-1]])
        replies = await asyncio.gather(*(batcher.infer(rows(int(s), n)) for s, n in zip(starts, sizes, strict=True)))
        await batcher.stop()
        seen.extend(r.images for r in records)
        return replies

    replies = run(main())
    sizes = [1, 2, 3, 1, 2, 6]
    starts = np.cumsum([0, *sizes[:-1]])
    for reply, start, n in zip(replies, starts, sizes, strict=True):
        np.testing.assert_array_equal(reply, rows(int(start), n) * 2)
    assert sum(seen) == sum(sizes) and len(seen) < len(sizes)  # fewer forward passes than requests
    assert all(images <= 4 for images in seen[:-1]) and seen[-1] == 6  # the oversized one ran alone (in chunks)


def test_a_failing_forward_fails_its_batch_only():
    calls = {"n": 0}

    def forward(x: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("model exploded")
        return x + 1

    async def main() -> tuple[BaseException | np.ndarray, np.ndarray]:
        batcher = MicroBatcher(forward, max_batch=8, max_wait_ms=0)
        batcher.start()
        first = await asyncio.gather(batcher.infer(rows(0, 1)), return_exceptions=True)
        second = await batcher.infer(rows(5, 2))
        await batcher.stop()
        return first[0], second

    failed, served = run(main())
    assert isinstance(failed, RuntimeError) and "exploded" in str(failed)
    np.testing.assert_array_equal(served, rows(5, 2) + 1)


def test_a_missing_serve_extra_is_named(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "prometheus_client", None)
    with pytest.raises(Exception, match=r"prometheus-client.*pip install 'vitkit\[serve\]'"):
        require_serve()
