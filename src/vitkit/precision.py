"""Device and precision defaults that fit the hardware."""

from __future__ import annotations

import os
import time
from functools import lru_cache
from pathlib import Path

import torch

from vitkit.errors import RecipeError


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RecipeError("train.device=cuda but no CUDA GPU is visible. Use train.device=auto or cpu.")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


@lru_cache(maxsize=1)
def cpu_flags() -> str:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 matmuls in hardware (AVX512-BF16 or AMX).

    Without them PyTorch emulates bf16: measured 0.7 GFLOP/s against 62 GFLOP/s in fp32 on a 2-core AVX2 CPU,
    so autocast to bf16 would make training ~90x slower there.
    """
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_has_vnni() -> bool:
    """True when the CPU has int8 dot-product instructions (AVX512-VNNI or AVX-VNNI), which INT8 inference needs
    to beat fp32."""
    return "vnni" in cpu_flags()


# bf16 must clearly win to be worth its rounding: a margin well above the noise of a short timing.
BF16_MIN_SPEEDUP = 1.2


@lru_cache(maxsize=1)
def cpu_bf16_speedup() -> float:
    """How many times faster a transformer-sized matrix product (forward and backward) runs under bf16 autocast than
    in fp32 on this CPU; measured once per process, in about a third of a second.

    CPU flags do not settle it: with AVX512-BF16 a 2-core AMD EPYC trained about 1.8x faster in bf16, while a 2-core
    Intel Xeon with the same flag (no AMX) ran the same products at 0.6x the speed of fp32.
    """
    generator = torch.Generator().manual_seed(0)  # the training's own random stream stays untouched
    inputs = torch.randn(4096, 256, generator=generator)
    weight = torch.randn(1024, 256, generator=generator, requires_grad=True)

    def best_time(dtype: torch.dtype | None) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                torch.nn.functional.linear(inputs, weight).sum().backward()
            times.append(time.perf_counter() - start)
        return min(times[1:])  # the first call warms the kernels up; the fastest of the rest is the least disturbed

    return best_time(None) / best_time(torch.bfloat16)


def resolve_precision(requested: str, device: torch.device) -> str:
    """`auto` is bf16 where the device computes it natively (on a CPU: and measurably faster there), else fp32; fp16
    needs a GPU (loss scaling)."""
    if requested == "fp16" and device.type != "cuda":
        raise RecipeError("train.precision=fp16 needs a CUDA GPU. Use bf16 or fp32 on CPU (or auto).")
    if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RecipeError("train.precision=bf16: this GPU does not support bf16. Use fp16 (or auto).")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if not cpu_has_native_bf16() or _processes() > 1:
        return "fp32"
    return "bf16" if cpu_bf16_speedup() >= BF16_MIN_SPEEDUP else "fp32"


def _processes() -> int:
    """The processes of a launched run (torchrun, accelerate launch). Each would time the CPU while the others start
    on the same cores, and processes that picked different precisions would train differently, so a CPU run on
    several processes stays in fp32."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def precision_note(requested: str, precision: str, device: torch.device) -> str | None:
    """Why `auto` trains a CPU with native bf16 in fp32, for the run's header; None otherwise."""
    if requested != "auto" or device.type != "cpu" or precision != "fp32" or not cpu_has_native_bf16():
        return None
    if _processes() > 1:
        return (
            "precision auto is fp32: on several processes vitkit does not time bf16 on the CPU (they share its cores). "
            "Set train.precision=bf16 to use it."
        )
    return (
        f"precision auto is fp32: this CPU has bf16 instructions, but a matrix product ran {cpu_bf16_speedup():.2f}x "
        f"as fast in bf16 as in fp32 (bf16 needs {BF16_MIN_SPEEDUP}x). Set train.precision=bf16 to use it anyway."
    )


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
