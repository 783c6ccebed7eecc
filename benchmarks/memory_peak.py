"""The memory planner's predicted peak against the measured peak of one real training step on CPU.

    .venv/bin/python benchmarks/memory_peak.py

Five configurations (families, strategies, attention paths, checkpointing, EMA) in fp32: `vitkit plan memory`'s
predicted peak (weights, gradients, AdamW state, EMA, saved activations and the backward workspace) against the
highest total of live tensors in PyTorch's profiler memory timeline over one step (forward, backward, AdamW
update, EMA update), taken after a first step has allocated the optimizer state, as in any step of a run.
Prints a Markdown table and appends each row to benchmarks/results/memory_peak.jsonl.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch.profiler import ProfilerActivity, profile

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


def cpu_name() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def measured_peak(cfg: object, batch: int) -> int:
    """The peak of live tensor bytes over one training step, from the profiler's memory timeline."""
    torch.manual_seed(0)
    model = apply_strategy(build_model(cfg.model, CLASSES), cfg.finetune)  # type: ignore[attr-defined]
    set_attention(model, cfg.model.attn_impl)  # type: ignore[attr-defined]
    model.train()
    optimizer = build_optimizer(model, cfg.optim, 1e-4)  # type: ignore[attr-defined]
    ema = ModelEmaV3(model, decay=0.999) if cfg.ema.enabled else None  # type: ignore[attr-defined]
    x, y = torch.randn(batch, 3, 224, 224), torch.randint(0, CLASSES, (batch,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(model)

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
    print("| model | batch | settings | predicted MiB | measured MiB | predicted / measured |")
    print("|---|---|---|---|---|---|")
    for name, batch, extra in CONFIGS:
        overrides = [f"model.name={name}", "train.precision=fp32", "model.drop_path_rate=0", "ema.enabled=false"]
        cfg = load_recipe("deit-small", [*overrides, *extra])
        predicted = plan_memory(cfg, batch, CLASSES).peak
        measured = measured_peak(cfg, batch)
        row = {"model": name, "batch": batch, "settings": extra, "predicted": predicted, "measured": measured}
        row |= {"date": str(date.today()), "cpu": cpu_name(), "torch": torch.__version__}
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
