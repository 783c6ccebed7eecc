"""The memory planner's predicted peak against the measured peak of one real training step, on CPU or a GPU.

    .venv/bin/python benchmarks/memory_peak.py
    python benchmarks/memory_peak.py --device cuda     # on a GPU machine

Five configurations (families, strategies, attention paths, checkpointing, EMA) in fp32: `vitkit plan memory`'s
predicted peak (weights, gradients, AdamW state, EMA, saved activations and the backward workspace) against the
highest total of live tensors in PyTorch's profiler memory timeline over one step (forward, backward, AdamW
update, EMA update), taken after a first step has allocated the optimizer state, as in any step of a run.
With --device cuda: deit-small and vit-base at batch 32 and 128, fp32 and bf16 autocast, with and without
gradient checkpointing, fused (flash) attention, measured as `torch.cuda.max_memory_allocated` over the second
step (the caching allocator's view: tensors plus the cuBLAS workspace it hands out).
Prints a Markdown table and appends each row to benchmarks/results/memory_peak.jsonl.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import warnings
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch.profiler import ProfilerActivity, profile

from cpu import cpu_name
from vitkit.config import load_recipe
from vitkit.models.build import build_model, set_attention
from vitkit.models.finetune import apply_strategy
from vitkit.plan.memory import plan_memory
from vitkit.train.optim import build_optimizer

RESULTS = Path(__file__).parent / "results" / "memory_peak.jsonl"
CLASSES = 10
CONFIGS = [  # (model, batch, overrides)
    ("deit_tiny_patch16_224", 8, ["model.attn_impl=math"]),
    ("deit_tiny_patch16_224", 8, ["model.attn_impl=fused", "ema.enabled=true"]),
    ("deit_small_patch16_224", 4, ["model.attn_impl=fused", "model.grad_checkpointing=true"]),
    ("vit_small_patch16_224", 8, ["model.attn_impl=math", "finetune.strategy=lora"]),
    ("swin_tiny_patch4_window7_224", 4, ["finetune.strategy=partial", "finetune.freeze_blocks=1"]),
]
GPU_CONFIGS = [
    (name, batch, [f"train.precision={precision}", "model.attn_impl=fused", f"model.grad_checkpointing={ckpt}"])
    for name in ("deit_small_patch16_224", "vit_base_patch16_224")
    for batch in (32, 128)
    for precision in ("fp32", "bf16")
    for ckpt in ("false", "true")
]


def training_step(cfg: object, batch: int, device: str) -> Callable[[], None]:
    """One full step (forward, backward, AdamW, EMA) of the recipe's model on random images, as a closure."""
    torch.manual_seed(0)
    model = apply_strategy(build_model(cfg.model, CLASSES), cfg.finetune).to(device)  # type: ignore[attr-defined]
    set_attention(model, cfg.model.attn_impl)  # type: ignore[attr-defined]
    model.train()
    optimizer = build_optimizer(model, cfg.optim, 1e-4)  # type: ignore[attr-defined]
    ema = ModelEmaV3(model, decay=0.999) if cfg.ema.enabled else None  # type: ignore[attr-defined]
    x = torch.randn(batch, 3, 224, 224, device=device)
    y = torch.randint(0, CLASSES, (batch,), device=device)
    bf16 = cfg.train.precision == "bf16"  # type: ignore[attr-defined]

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(model)

    return step


def measured_peak_cuda(cfg: object, batch: int) -> int:
    """The caching allocator's peak over a training step, after a first step allocated the AdamW state."""
    gc.collect()  # the previous configuration's model and optimizer state are gone before this one starts
    step = training_step(cfg, batch, "cuda")
    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated())


def measured_peak(cfg: object, batch: int) -> int:
    """The peak of live tensor bytes over one training step, from the profiler's memory timeline."""
    step = training_step(cfg, batch, "cpu")
    step()  # allocates the AdamW state, as every step after the first has it
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        path = Path(tmp) / "timeline.json"
        prof.export_memory_timeline(str(path), device="cpu")
        _, sizes = json.loads(path.read_text())
    return int(np.asarray(sizes).sum(axis=1).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    print("| model | batch | settings | predicted MiB | measured MiB | predicted / measured |")
    print("|---|---|---|---|---|---|")
    for name, batch, extra in GPU_CONFIGS if cuda else CONFIGS:
        overrides = [f"model.name={name}", "train.precision=fp32", "model.drop_path_rate=0", "ema.enabled=false"]
        cfg = load_recipe("deit-small", [*overrides, *extra])
        predicted = plan_memory(cfg, batch, CLASSES).peak
        measured = measured_peak_cuda(cfg, batch) if cuda else measured_peak(cfg, batch)
        row = {"model": name, "batch": batch, "settings": extra, "predicted": predicted, "measured": measured}
        row |= {"date": str(date.today()), "cpu": cpu_name(), "torch": torch.__version__}
        if cuda:
            row["gpu"] = torch.cuda.get_device_name()
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(
            f"| {name} | {batch} | {', '.join(extra)} | {predicted / 2**20:.1f} | {measured / 2**20:.1f} | "
            f"{predicted / measured:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
