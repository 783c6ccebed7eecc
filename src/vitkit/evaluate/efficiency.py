"""Efficiency on the current device: parameters, FLOPs per image, latency at batch 1, throughput and peak memory."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from vitkit.evaluate.context import EvalContext, ModelRunner, Value


def count_flops(runner: ModelRunner, image: torch.Tensor) -> int:
    """FLOPs of one forward pass on one image (a multiply-add counts 2), counted by torch's FlopCounterMode,
    which also counts fused attention."""
    with FlopCounterMode(display=False) as counter:
        runner.logits(image[:1])
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(runner: ModelRunner, batch: torch.Tensor, repeats: int, warmup: int) -> list[float]:
    """Seconds per forward pass of `batch`, `repeats` times after `warmup` untimed passes."""
    times = []
    for i in range(warmup + repeats):
        _sync(runner.device)
        start = time.perf_counter()
        runner.logits(batch)
        _sync(runner.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


class EfficiencyEvaluator:
    name = "efficiency"

    def __call__(self, ctx: EvalContext) -> Iterator[tuple[str, Value]]:
        if ctx.runner is None or ctx.images is None:
            yield "skipped", "needs the model and the evaluation images"
            return
        s, runner, device = ctx.settings, ctx.runner, ctx.runner.device
        image, _ = next(iter(runner.batches(ctx.images.subset(np.arange(1)))))
        params = list(runner.model.parameters())
        yield (
            "device",
            torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        )
        yield "precision", str(runner.amp_dtype).replace("torch.", "") if runner.amp_dtype else "float32"
        yield "input_shape", list(image.shape[1:])
        yield "parameters", sum(p.numel() for p in params)
        yield "flops_per_image", count_flops(runner, image)
        latency = np.asarray(time_forward(runner, image, s.latency_repeats, s.warmup)) * 1000
        yield "latency_ms", {f"p{q}": float(np.percentile(latency, q)) for q in (50, 95, 99)}
        yield "latency_repeats", len(latency)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        batch = image.expand(s.throughput_batch, -1, -1, -1).contiguous()
        times = time_forward(runner, batch, max(3, s.latency_repeats // 10), max(1, s.warmup // 2))
        yield "throughput_batch", s.throughput_batch
        yield "throughput_images_per_s", s.throughput_batch / float(np.median(times))
        if device.type == "cuda":
            yield "peak_memory_mb", torch.cuda.max_memory_allocated(device) / 2**20
            yield "peak_memory_kind", "CUDA memory allocated at the throughput batch"
        else:
            yield "peak_memory_mb", _peak_rss_mb()
            yield "peak_memory_kind", "peak resident memory of the whole process (CPU)"
