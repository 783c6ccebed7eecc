"""Transfer learning on Fashion-MNIST: which fine-tuning strategy wins at 100 and 1000 labels per class?

A small ViT (the recipe ablation's: 28 px, patch 7, width 96, 6 blocks) is pretrained on classes 0-4 of the
10k-image training subset, then fine-tuned on classes 5-9 with 100 or 1000 labelled images per class, with each
strategy (full with layer decay, partial, head, head on cached features, LoRA) and from scratch with the same
budget. Test top-1 is on the 5000 test images of classes 5-9. Each run is a separate process (so its peak
memory is its own) and appends one JSON line to benchmarks/results/finetune_strategies.jsonl; recorded runs
are skipped, so the table can be built in parts.

    .venv/bin/python benchmarks/finetune_strategies.py                 # pretrain once, then every run
    .venv/bin/python benchmarks/finetune_strategies.py --per-class 100 --strategy lora
    .venv/bin/python benchmarks/finetune_strategies.py --table
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from recipe_ablation import CACHE, CLASSES, SMALL_VIT, append_row, prepare_data, read_rows
from vitkit.config import load_recipe
from vitkit.train.loop import train

RESULTS = Path(__file__).parent / "results" / "finetune_strategies.jsonl"
WORK = CACHE.parent / "finetune_benchmark"
PRETRAIN_RUN = WORK / "pretrain"
PRETRAIN_EPOCHS = 30
EPOCHS = {100: 40, 1000: 10}  # 280 and 780 updates at batch 64
STRATEGIES: dict[str, tuple[str, list[str]]] = {
    "scratch": ("small-data", []),
    "full": ("finetune-full", []),
    "partial": ("finetune-partial", ["finetune.freeze_blocks=3"]),  # half of the 6 blocks
    "head": ("finetune-head", ["finetune.cache_features=false"]),
    "head-cached": ("finetune-head", []),
    "lora": ("finetune-lora", []),
}
# the recipe ablation's model, at the fine-tuning batch size, evaluated at the end only
MODEL = [o for o in SMALL_VIT if not o.startswith(("train.batch_size", "train.eval_every"))] + ["train.batch_size=64"]


def task_file(classes: range, per_class: int | None, name: str) -> Path:
    """An .npz with the chosen classes of the 10k training subset (per_class of each) and of the test set."""
    path = WORK / f"{name}.npz"
    if path.exists():
        return path
    data = np.load(prepare_data())
    rng = np.random.default_rng(0)
    train_idx = []
    for c in classes:
        idx = np.flatnonzero(data["y_train"] == c)
        train_idx += list(rng.permutation(idx)[:per_class] if per_class else idx)
    test_idx = np.flatnonzero(np.isin(data["y_val"], list(classes)))
    offset = classes.start
    WORK.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        x_train=data["x_train"][train_idx],
        y_train=data["y_train"][train_idx] - offset,
        x_val=data["x_val"][test_idx],
        y_val=data["y_val"][test_idx] - offset,
        classes=np.array(CLASSES[classes.start : classes.stop]),
    )
    return path


def pretrain() -> Path:
    if (PRETRAIN_RUN / "summary.json").exists():
        return PRETRAIN_RUN
    data = task_file(range(0, 5), None, "classes0-4")
    overrides = [*SMALL_VIT, f"data.source={data}", f"schedule.epochs={PRETRAIN_EPOCHS}"]
    result = train(load_recipe("small-data", overrides), PRETRAIN_RUN, overwrite=True, console=Console())
    print(f"pretrained on classes 0-4: test top-1 {result.summary['best_val_top1']:.2%}")
    return PRETRAIN_RUN


def run_one(strategy: str, per_class: int) -> dict[str, object]:
    base, extra = STRATEGIES[strategy]
    data = task_file(range(5, 10), per_class, f"classes5-9_{per_class}")
    epochs = EPOCHS[per_class]
    overrides = [*MODEL, *extra, f"data.source={data}", f"schedule.epochs={epochs}", f"train.eval_every={epochs}"]
    if strategy != "scratch":
        overrides.append(f"finetune.pretrained={PRETRAIN_RUN}")
    out = WORK / f"{strategy}_{per_class}"
    result = train(load_recipe(base, overrides), out, overwrite=True, console=Console())
    s = result.summary
    trainable, total = s["trainable_parameters"], s["parameters"]
    return {
        "strategy": strategy,
        "per_class": per_class,
        "epochs": epochs,
        "test_top1": s["best_val_top1"],
        "wall_s": s["wall_seconds"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # weights + gradients and AdamW moments of the trainable ones, fp32
        "train_state_mb": 4 * (total + 3 * trainable) / 2**20,
        "trainable": trainable,
        "total": total,
        "date": str(date.today()),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }


def recorded() -> set[tuple[str, int]]:
    return {(r["strategy"], r["per_class"]) for r in read_rows(RESULTS)}


def table() -> str:
    rows = read_rows(RESULTS)
    lines = [
        "| labels per class | strategy | test top-1 | wall | peak RSS | train state | trainable parameters |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["per_class"], list(STRATEGIES).index(r["strategy"]))):
        lines.append(
            f"| {r['per_class']} | {r['strategy']} | {r['test_top1']:.2%} | {r['wall_s']:.0f} s "
            f"| {r['peak_rss_mb']:.0f} MB | {r['train_state_mb']:.2f} MB "
            f"| {r['trainable']:,} ({r['trainable'] / r['total']:.1%}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategy", action="append", choices=list(STRATEGIES), help="repeatable; default all")
    parser.add_argument("--per-class", action="append", type=int, choices=sorted(EPOCHS), help="default both")
    parser.add_argument("--force", action="store_true", help="run even if already recorded")
    parser.add_argument("--table", action="store_true", help="print the results table and exit")
    parser.add_argument("--one", nargs=2, metavar=("STRATEGY", "PER_CLASS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.table:
        print(table())
        return
    if args.one:  # child process: one run, its row on the last line of stdout
        print(json.dumps(run_one(args.one[0], int(args.one[1]))))
        return
    pretrain()
    done = recorded()
    for per_class in args.per_class or sorted(EPOCHS):
        for strategy in args.strategy or list(STRATEGIES):
            if (strategy, per_class) in done and not args.force:
                print(f"{strategy} at {per_class}/class already recorded; --force to run again")
                continue
            child = subprocess.run(
                [sys.executable, __file__, "--one", strategy, str(per_class)], capture_output=True, text=True
            )
            if child.returncode != 0:
                print(f"{strategy} at {per_class}/class failed:\n{child.stderr[-3000:]}")
                continue
            row = child.stdout.strip().splitlines()[-1]
            append_row(RESULTS, json.loads(row))
            print(row)
    print(table())


if __name__ == "__main__":
    main()
