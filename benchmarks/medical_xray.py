"""The chest-xray recipe on builtin:xray: per-finding AUROC with 95% bootstrap intervals, against the same model
without imbalance handling and a CNN of about the same size.

Each configuration trains `chest-xray-demo` (64 px, patch 8, a 0.47M-parameter ViT; 3000 training and 1000
validation images of disjoint patients), then evaluates the best checkpoint with the accuracy and clinical
evaluators on the validation split (intervals resample patients). One JSON line per run is appended to
benchmarks/results/medical_xray.jsonl, so the table is built in parts; runs already recorded are skipped.

    .venv/bin/python benchmarks/medical_xray.py --list
    .venv/bin/python benchmarks/medical_xray.py                        # every configuration, demo budget
    .venv/bin/python benchmarks/medical_xray.py --budget 3x --config chest-xray
    .venv/bin/python benchmarks/medical_xray.py --table
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from cpu import cpu_name
from vitkit.config import load_recipe
from vitkit.evaluate.run import evaluate_run
from vitkit.train.loop import train

RESULTS = Path(__file__).parent / "results" / "medical_xray.jsonl"
EPOCHS = {"demo": 30, "3x": 90}
CNN = [
    "model.name=resnet10t",
    "model.kwargs={channels: [20, 40, 80, 160]}",
    "model.patch_size=null",
    "model.embed_dim=null",
    "model.depth=null",
    "model.num_heads=null",
]
CONFIGS: dict[str, tuple[list[str], str]] = {
    "chest-xray": ([], "the shipped recipe (pos_weight)"),
    "no-imbalance": (["train.imbalance=none"], "same, without imbalance handling"),
    "focal": (["train.imbalance=focal"], "same, focal loss (gamma 2)"),
    "cnn": (CNN, "ResNet-10t (channels 20-160), same recipe"),
}


def read_rows() -> list[dict[str, Any]]:
    return [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()] if RESULTS.exists() else []


def run(name: str, budget: str) -> dict[str, Any]:
    extra, what = CONFIGS[name]
    overrides = [*extra, f"schedule.epochs={EPOCHS[budget]}", "train.log_every=100", "train.precision=fp32"]
    recipe = load_recipe("chest-xray-demo", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(recipe, Path(tmp) / name, console=Console())
        doc, _ = evaluate_run(Path(tmp) / name, only=["accuracy", "clinical"])
    clinical = doc["results"]["clinical"]
    return {
        "config": name,
        "budget": budget,
        "what": what,
        "epochs": EPOCHS[budget],
        "per_label": [
            {k: r[k] for k in ("label", "positives", "auroc", "auroc_low", "auroc_high")} for r in clinical["per_label"]
        ],
        "macro_auroc": [clinical["macro_auroc"], clinical["macro_auroc_low"], clinical["macro_auroc_high"]],
        "sensitivity_at_90_spec": {
            p["label"]: p.get("sensitivity") for p in clinical["operating_points"] if p["target_specificity"] == 0.9
        },
        "wall_s": result.summary["wall_seconds"],
        "params": result.summary["parameters"],
        "date": str(date.today()),
        "machine": f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {platform.machine()}",
    }


def table() -> str:
    rows = read_rows()
    if not rows:
        return "no results yet"
    labels = [r["label"] for r in rows[0]["per_label"]]
    head = "| configuration | epochs | params | macro AUROC | " + " | ".join(labels) + " | wall |"
    lines = [head, "|" + "---|" * (5 + len(labels))]
    for r in rows:
        cells = [f"{p['auroc']:.3f} ({p['auroc_low']:.2f}–{p['auroc_high']:.2f})" for p in r["per_label"]]
        m = r["macro_auroc"]
        lines.append(
            f"| {r['config']} ({r['what']}) | {r['epochs']} | {r['params'] / 1e6:.2f}M | {m[0]:.3f} ({m[1]:.2f}–"
            f"{m[2]:.2f}) | " + " | ".join(cells) + f" | {r['wall_s'] / 60:.1f} min |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(EPOCHS), default="demo")
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS), help="repeatable; default: all")
    parser.add_argument("--force", action="store_true", help="run even if already recorded")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    if args.list:
        for name, (extra, what) in CONFIGS.items():
            print(f"{name:14s} {what}  {' '.join(extra)}")
        return
    if args.table:
        print(table())
        return
    done = {(r["config"], r["budget"]) for r in read_rows()}
    for name in args.config or list(CONFIGS):
        if (name, args.budget) in done and not args.force:
            print(f"{name} ({args.budget}) already recorded; --force to run again")
            continue
        row = run(name, args.budget)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row))
    print(table())


if __name__ == "__main__":
    main()
