"""Runtimes for deployment: `vitkit bench`'s table for ViT-Tiny (32 px, patch 4) and DeiT-Small (224 px), and the
INT8 accuracy drop on the Fashion-MNIST model of the recipe ablation.

Latency does not depend on what the weights learnt, so the two speed models train for a few updates only (their
top-1 column is near chance); the Fashion-MNIST model trains for real and its INT8 exports are measured on the
full 10k test set. Each part appends its rows to benchmarks/results/deploy_runtimes.jsonl as it finishes.

    .venv/bin/python benchmarks/deploy_runtimes.py --part vit-tiny
    .venv/bin/python benchmarks/deploy_runtimes.py --part deit-small
    .venv/bin/python benchmarks/deploy_runtimes.py --part fashion-mnist [--epochs 20]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from datetime import date
from pathlib import Path

import torch
from rich.console import Console

from vitkit.config import load_recipe
from vitkit.deploy.bench import benchmark
from vitkit.deploy.export import ExportOptions, export_run
from vitkit.train.loop import train

RESULTS = Path(__file__).parent / "results" / "deploy_runtimes.jsonl"
QUIET = Console(quiet=True)
SPEED_MODELS = {
    "vit-tiny": ("deit-tiny", ["model.img_size=32", "model.patch_size=4", "data.synthetic_val_size=512"]),
    "deit-small": ("deit-small", ["model.img_size=224", "data.synthetic_train_size=64", "data.synthetic_val_size=64"]),
}
FEW_UPDATES = ["data.source=builtin:shapes", "train.batch_size=16", "train.max_updates=4", "train.precision=fp32"]


def append(row: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    with RESULTS.open("a") as fh:
        fh.write(json.dumps({"date": str(date.today()), "machine": machine, **row}) + "\n")


def speed(part: str, repeats: int) -> None:
    recipe_name, overrides = SPEED_MODELS[part]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        train(load_recipe(recipe_name, [*overrides, *FEW_UPDATES]), run, console=QUIET, evaluate=False)
        table = benchmark(run, [1, 8, 32, 64], repeats=repeats, val_images=512)
    for row in table["rows"]:
        append({"part": part, "model": table["model"], "img_size": table["img_size"], "vnni": table["vnni"], **row})
        latency, ips = row["latency_ms"], row["images_per_s"]
        print(f"{part} {row['runtime']}: p50 {latency['p50']:.2f} ms, img/s {ips}, {row['note']}", flush=True)


def fashion_mnist(epochs: int) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from recipe_ablation import SMALL_VIT, prepare_data

    data = prepare_data()
    overrides = [*SMALL_VIT, f"schedule.epochs={epochs}", "train.eval_every=100", "train.precision=fp32"]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        train(load_recipe("small-data", overrides, source=str(data)), run, console=QUIET, evaluate=False)
        for mode in ("dynamic", "static"):
            doc = export_run(run, Path(tmp) / mode, ExportOptions(int8=mode, max_int8_drop=0.005))  # type: ignore[arg-type]
            q = doc["int8"]
            append({"part": "fashion-mnist", "epochs": epochs, **q})
            print(
                f"INT8 {mode}: fp32 {q['fp32_top1']:.2%}, int8 {q['int8_top1']:.2%}, drop {q['drop']:.2%}, "
                f"agreement {q['top1_agreement']:.2%}, kept fp32 {len(q['kept_fp32'])}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=[*SPEED_MODELS, "fashion-mnist"], required=True)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    if args.part == "fashion-mnist":
        fashion_mnist(args.epochs)
    else:
        speed(args.part, args.repeats)


if __name__ == "__main__":
    main()
