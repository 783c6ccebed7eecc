"""Watching one served version: a rolling window of its traffic against the reference statistics of its export.

Every answered image adds its top-1 probability and the request's latency. The images themselves go, through a
bounded queue that drops rather than delays, to the export's monitor model, which runs on its own thread and adds
embeddings and attention entropies. `report()` tests the window against the reference (drift.py) and adds
latency p99 and the trend of resident memory over requests.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil

from vitkit.serve.drift import entropy_shift, ks_two_sample, mmd_permutation

MonitorForward = Callable[[np.ndarray], list[np.ndarray]]  # pixels -> [embedding, attention entropy]


@dataclass(frozen=True)
class MonitorSettings:
    window: int = 200  # most recent images compared with the reference
    min_images: int = 50  # fewer in the window: no test is run, the report says so
    alpha: float = 0.01  # a p-value under it raises the alarm
    entropy_z: float = 5.0  # an attention layer whose window mean is this many standard errors off
    entropy_min_change: float = 0.05  # ... and at least this many nats: near-constant entropies are not an alarm
    queue: int = 256  # images waiting for the monitor model; more are dropped, never waited for
    sample: float = 0.1  # share of answered images the monitor model sees (it costs about one more forward pass)
    report_every: int = 100  # answered images between reports written to the log and the gauges
    rss_every: int = 50  # answered images between memory samples


class VersionMonitor:
    def __init__(
        self, reference: dict[str, np.ndarray] | None, forward: MonitorForward | None, settings: MonitorSettings
    ) -> None:
        self.reference, self.forward, self.s = reference, forward, settings
        w = settings.window
        self.confidences: deque[float] = deque(maxlen=w)
        self.embeddings: deque[np.ndarray] = deque(maxlen=w)
        self.entropies: deque[np.ndarray] = deque(maxlen=w)
        self.latencies: deque[float] = deque(maxlen=max(w, 1000))
        self.memory: deque[tuple[int, float]] = deque(maxlen=200)  # (images answered, RSS MiB)
        self.answered = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._queue: asyncio.Queue[np.ndarray] = asyncio.Queue(maxsize=settings.queue)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="vitkit-monitor")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.forward is not None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def add(self, confidences: np.ndarray, pixels: np.ndarray, seconds: float) -> bool:
        """Record one answered request; True when a report is due."""
        with self._lock:
            self.confidences.extend(float(c) for c in confidences)
            self.latencies.append(seconds)
            before, self.answered = self.answered, self.answered + len(confidences)
            if before // self.s.rss_every != self.answered // self.s.rss_every:
                self.memory.append((self.answered, psutil.Process().memory_info().rss / 2**20))
        # every 1/sample-th image, by count, so the sample is spread evenly over the traffic
        chosen = [
            i for i in range(len(pixels)) if int((before + i + 1) * self.s.sample) > int((before + i) * self.s.sample)
        ]
        if self.forward is not None and chosen:
            try:
                self._queue.put_nowait(pixels[chosen])
            except asyncio.QueueFull:
                self.dropped += len(chosen)
        return before // self.s.report_every != self.answered // self.s.report_every

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.forward is not None
        while True:
            pixels = await self._queue.get()
            try:
                embedding, entropy = await loop.run_in_executor(self._executor, self.forward, pixels)
            except Exception:  # a monitor that fails must never touch serving; its window just stops growing
                self.dropped += len(pixels)
                continue
            with self._lock:
                self.embeddings.extend(embedding)
                self.entropies.extend(entropy)

    def report(self) -> dict[str, Any]:
        with self._lock:
            confidences = np.asarray(self.confidences)
            embeddings = np.asarray(self.embeddings)
            entropies = np.asarray(self.entropies)
            latencies = np.asarray(self.latencies)
            memory = list(self.memory)
        out: dict[str, Any] = {"answered": self.answered, "window": len(confidences), "dropped": self.dropped}
        out["latency_p99_ms"] = float(np.percentile(latencies, 99) * 1000) if len(latencies) else None
        out["rss_mib"] = memory[-1][1] if memory else None
        out["rss_trend_mib_per_1k"] = _slope(memory) * 1000 if len(memory) >= 3 else None
        if self.reference is None:
            out["drift"] = "no reference statistics: export the run with this version of vitkit to monitor drift"
            return out
        out |= self._tests(confidences, embeddings, entropies)
        out["alarm"] = any(out.get(k, {}).get("alarm", False) for k in ("confidence", "embedding", "attention"))
        return out

    def _tests(self, confidences: np.ndarray, embeddings: np.ndarray, entropies: np.ndarray) -> dict[str, Any]:
        ref, s = self.reference or {}, self.s
        out: dict[str, Any] = {}
        if len(confidences) >= s.min_images:
            d, p = ks_two_sample(ref["confidence"], confidences)
            out["confidence"] = {"test": "Kolmogorov-Smirnov", "statistic": d, "p_value": p, "alarm": p < s.alpha}
        if len(embeddings) >= s.min_images and len(ref.get("embedding", [])):
            mmd2, p = mmd_permutation(ref["embedding"], embeddings)
            out["embedding"] = {"test": "MMD permutation", "statistic": mmd2, "p_value": p, "alarm": p < s.alpha}
        if len(entropies) >= s.min_images and ref.get("attention_entropy", np.zeros((0, 0))).shape[1]:
            z = entropy_shift(ref["attention_entropy"], entropies)
            change = entropies.mean(axis=0) - ref["attention_entropy"].mean(axis=0)
            shifted = (np.abs(z) > s.entropy_z) & (np.abs(change) > s.entropy_min_change)
            out["attention"] = {
                "reference_entropy": ref["attention_entropy"].mean(axis=0).round(4).tolist(),
                "window_entropy": entropies.mean(axis=0).round(4).tolist(),
                "z": z.round(2).tolist(),
                "max_abs_z": float(np.abs(z).max()),
                "layers_shifted": np.flatnonzero(shifted).tolist(),
                "alarm": bool(shifted.any()),
            }
        if len(confidences) < s.min_images:
            out["drift"] = f"{len(confidences)} images in the window; tests start at {s.min_images}"
        return out


def _slope(points: list[tuple[int, float]]) -> float:
    x = np.asarray([p[0] for p in points], dtype=float)
    y = np.asarray([p[1] for p in points], dtype=float)
    return float(np.polyfit(x, y, 1)[0]) if np.ptp(x) > 0 else 0.0
