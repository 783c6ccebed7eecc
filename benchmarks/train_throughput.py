"""Training throughput: `vitkit train` against a bare loop with the same model and optimizer.

ViT-Tiny (img 32, patch 4, batch 128) on PNG files with the full DeiT augmentation. Prints a table of img/s and
model FLOPs utilisation (MFU) against this machine's measured fp32 and bf16 matmul peaks, and appends every row
to benchmarks/results/train_throughput.jsonl. A second table sweeps the loader's worker count on a smaller model,
where data work is a larger share of a step.

    .venv/bin/python benchmarks/train_throughput.py [--steps 20] [--repeats 3] [--skip-workers]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from rich.console import Console
from torch.utils.flop_counter import FlopCounterMode

from vitkit.config import load_recipe
from vitkit.config.schema import Recipe
from vitkit.data.synthetic import SHAPE_CLASSES, make_shapes
from vitkit.models.build import build_model, choose_attention, num_tokens, set_attention
from vitkit.precision import autocast_dtype, resolve_precision
from vitkit.train.logging import read_metrics
from vitkit.train.loop import train
from vitkit.train.optim import build_optimizer

RESULTS = Path(__file__).parent / "results" / "train_throughput.jsonl"
VIT_TINY = ["model.img_size=32", "model.patch_size=4", "train.batch_size=128", "ema.enabled=true"]


def matmul_peak(dtype: torch.dtype, size: int = 2048, trials: int = 5) -> float:
    """Best dense matmul FLOP/s for `dtype` on the CPU over a few trials (the best is the least disturbed)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def step_flops(recipe: Recipe, num_classes: int) -> float:
    """FLOPs of one training step (forward + backward) per image, counted by PyTorch."""
    model = build_model(recipe.model, num_classes)
    x = torch.randn(2, 3, recipe.model.img_size, recipe.model.img_size)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 2


def bare_loop(recipe: Recipe, precision: str, steps: int, warmup: int = 3) -> float:
    """img/s of forward, loss, backward and AdamW step on random tensors: no data, no logging, no EMA."""
    torch.manual_seed(0)
    model = build_model(recipe.model, len(SHAPE_CLASSES))
    set_attention(model, choose_attention(recipe.model.attn_impl, torch.device("cpu"), precision, num_tokens(model)))
    optimizer = build_optimizer(model, recipe.optim, 1e-4)
    bs, size = recipe.train.batch_size, recipe.model.img_size
    x, y = torch.randn(bs, 3, size, size), torch.randint(0, len(SHAPE_CLASSES), (bs,))
    dtype = autocast_dtype(precision)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * bs / (time.perf_counter() - start)


def trainer(recipe: Recipe, data_dir: Path, steps: int, warmup: int = 3) -> float:
    """img/s of `vitkit train` over the steps after `warmup`, from its own timing.jsonl."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = recipe.model_copy(deep=True)
        cfg.data.source = str(data_dir)
        cfg.train.max_updates = warmup + steps
        cfg.train.log_every = 1
        cfg.schedule.epochs, cfg.schedule.warmup_epochs = 100, 1
        run = Path(tmp) / "run"
        train(cfg, run, console=Console(quiet=True))
        rows = read_metrics(run / "timing.jsonl")[warmup:]
        return len(rows) * cfg.train.batch_size / sum(cfg.train.batch_size / r["img_per_s"] for r in rows)


def write_pngs(root: Path, n: int, size: int) -> Path:
    images, labels = make_shapes(n, size=size, seed=0)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / SHAPE_CLASSES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i}.png")
    return root


def record(row: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration (median reported)")
    parser.add_argument("--skip-workers", action="store_true", help="skip the worker-count sweep")
    args = parser.parse_args()
    console = Console()
    machine = (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    peak32 = matmul_peak(torch.float32)
    peak16 = matmul_peak(torch.bfloat16, size=256, trials=2)
    console.print(f"matmul peak: fp32 {peak32 / 1e9:.1f} GFLOP/s, bf16 {peak16 / 1e9:.1f} GFLOP/s ({machine})")
    default_precision = resolve_precision("auto", torch.device("cpu"))

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = write_pngs(Path(tmp) / "pngs", 128 * (args.steps + 4), 32)
        deit = load_recipe("deit-tiny", VIT_TINY)
        flops = step_flops(deit, len(SHAPE_CLASSES))
        configs = [
            ("vitkit train, defaults", "trainer", deit),
            ("vitkit train, fp32", "trainer", load_recipe("deit-tiny", [*VIT_TINY, "train.precision=fp32"])),
            (f"bare loop, {default_precision} (default)", "bare", deit),
            ("bare loop, fp32", "bare", load_recipe("deit-tiny", [*VIT_TINY, "train.precision=fp32"])),
        ]
        # Repeats are interleaved so that a slow spell of the machine touches every configuration alike.
        samples: dict[str, list[float]] = {name: [] for name, _, _ in configs}
        for repeat in range(args.repeats):
            for name, kind, cfg in configs:
                precision = resolve_precision(cfg.train.precision, torch.device("cpu"))
                bare = kind == "bare"
                ips = bare_loop(cfg, precision, args.steps) if bare else trainer(cfg, data_dir, args.steps)
                samples[name].append(ips)
                console.print(f"repeat {repeat}: {name}: {ips:.1f} img/s")
        rows = []
        for name, _, cfg in configs:
            precision = resolve_precision(cfg.train.precision, torch.device("cpu"))
            peak = peak16 if precision == "bf16" else peak32
            ips = statistics.median(samples[name])
            row = {
                "config": name,
                "precision": precision,
                "img_per_s": ips,
                "mfu": ips * flops / peak,
                "samples": samples[name],
            }
            rows.append(row)
            record({"date": str(date.today()), "machine": machine, "table": "vit-tiny", **row})

        console.print(f"\nViT-Tiny, img 32, patch 4, batch 128; {flops / 1e9:.2f} GFLOP per image per step\n")
        console.print("| configuration | precision | img/s (median) | runs | MFU |\n|---|---|---|---|---|")
        for r in rows:
            runs = ", ".join(f"{s:.1f}" for s in r["samples"])
            console.print(f"| {r['config']} | {r['precision']} | {r['img_per_s']:.1f} | {runs} | {r['mfu']:.1%} |")
        ratio = rows[1]["img_per_s"] / rows[3]["img_per_s"]
        console.print(f"\ntrainer / bare loop, fp32 like-for-like: {ratio:.1%}")

        if not args.skip_workers:
            console.print("\n| data.num_workers (quickstart model, DeiT augmentation) | img/s |\n|---|---|")
            deit_aug = load_recipe("deit-tiny", ["augment.repeated_aug=1"]).augment
            quick = load_recipe("quickstart").model_copy(update={"augment": deit_aug})
            for workers in (0, 1, 2):
                cfg = quick.model_copy(deep=True)
                cfg.data.num_workers = workers
                ips = statistics.median(trainer(cfg, data_dir, args.steps * 3) for _ in range(args.repeats))
                record(
                    {
                        "date": str(date.today()),
                        "machine": machine,
                        "table": "workers",
                        "workers": workers,
                        "img_per_s": ips,
                    }
                )
                console.print(f"| {workers} | {ips:.1f} |")


if __name__ == "__main__":
    main()
