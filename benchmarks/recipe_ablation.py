"""Which DeiT tricks pay off on a small, low-resolution dataset? An ablation on Fashion-MNIST.

The same small ViT (28 px, patch 7, width 96, 6 blocks, 3 heads) trains on a seeded, stratified 10k-image subset
of the Fashion-MNIST training set and is tested on the full 10k test set, with: no tricks (`vit-plain`), the
published DeiT settings (`deit-tiny`), each trick group added alone to `vit-plain`, the shipped `small-data`
recipe, and a ResNet of similar size. Each run appends one JSON line to benchmarks/results/recipe_ablation.jsonl,
so the table can be built in parts; runs already recorded are skipped unless --force.

    .venv/bin/python benchmarks/recipe_ablation.py --list
    .venv/bin/python benchmarks/recipe_ablation.py --budget short                 # every configuration
    .venv/bin/python benchmarks/recipe_ablation.py --budget long --config small-data
    .venv/bin/python benchmarks/recipe_ablation.py --table                        # print the markdown table

Data: the Debian package dataset-fashion-mnist (IDX files in /usr/share/datasets/fashion-mnist).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from vitkit.config import load_recipe
from vitkit.data.sources import stratified_split
from vitkit.train.loop import train

RESULTS = Path(__file__).parent / "results" / "recipe_ablation.jsonl"
IDX_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vitkit" / "fashion_mnist_10k.npz"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
EPOCHS = {"short": 20, "long": 60}  # about 4 and 12 minutes for the ViT on 2 CPU cores

SMALL_VIT = [
    "model.img_size=28",
    "model.patch_size=7",
    "model.embed_dim=96",
    "model.depth=6",
    "model.num_heads=3",
    "data.mean=[0.286, 0.286, 0.286]",
    "data.std=[0.353, 0.353, 0.353]",
    "train.batch_size=128",
    "train.log_every=50",
    "train.eval_every=10",
]
AUGMENTATION = [
    "augment.rrc_scale=[0.08, 1.0]",
    "augment.rrc_ratio=[0.75, 1.3333]",
    "augment.hflip=0.5",
    "augment.randaugment=rand-m9-mstd0.5-inc1",
    "augment.random_erasing=0.25",
    "augment.crop_pct=0.875",
    "augment.repeated_aug=3",
]
MIXING = ["augment.mixup=0.8", "augment.cutmix=1.0", "augment.mix_switch_prob=0.5"]
REGULARISATION = [
    "model.drop_path_rate=0.1",
    "train.label_smoothing=0.1",
    "optim.weight_decay=0.05",
    "ema.enabled=true",
]
RESNET = [
    "model.name=resnet10t",
    "model.kwargs={channels: [24, 48, 96, 192]}",
    "model.patch_size=null",
    "model.embed_dim=null",
    "model.depth=null",
    "model.num_heads=null",
]

# The first guess at small-data, measured before the trick groups (kept to show what the measurements changed).
SMALL_DATA_V0 = [
    "model.drop_path_rate=0.05",
    "augment.rrc_scale=[0.35, 1.0]",
    "augment.rrc_ratio=[0.75, 1.3333]",
    "augment.hflip=0.5",
    "augment.randaugment=rand-m5-mstd0.5-inc1",
    "augment.random_erasing=0.1",
    "augment.crop_pct=0.875",
    "augment.mixup=0.2",
    "augment.mix_prob=0.5",
    "optim.weight_decay=0.05",
    "train.label_smoothing=0.1",
    "ema.enabled=true",
    "ema.decay=0.999",
]

# The second guess, after the trick groups at the short budget: mild crops and flips plus regularisation.
SMALL_DATA_V1 = [
    "model.drop_path_rate=0.1",
    "augment.rrc_scale=[0.5, 1.0]",
    "augment.rrc_ratio=[0.75, 1.3333]",
    "augment.hflip=0.5",
    "optim.weight_decay=0.05",
    "train.label_smoothing=0.1",
    "ema.enabled=true",
    "ema.decay=0.9998",
]

CONFIGS: dict[str, tuple[str, list[str], str]] = {
    "vit-plain": ("vit-plain", [], "no tricks"),
    "deit": ("deit-tiny", [], "published DeiT settings"),
    "+augmentation": ("vit-plain", AUGMENTATION, "vit-plain + RRC, flip, RandAugment, erasing, repeated aug"),
    "+mixup-cutmix": ("vit-plain", MIXING, "vit-plain + Mixup 0.8 / CutMix 1.0"),
    "+regularisation": ("vit-plain", REGULARISATION, "vit-plain + drop path, smoothing, weight decay, EMA"),
    "small-data-v0": ("vit-plain", SMALL_DATA_V0, "first guess at small-data, before the measurements"),
    "small-data-v1": ("vit-plain", SMALL_DATA_V1, "second guess: RRC 0.5-1, flip, regularisation"),
    "small-data": ("small-data", [], "the shipped small-data recipe"),
    "resnet": ("small-data", RESNET, "ResNet-10t (channels 24-192) with the small-data recipe"),
    "resnet-v0": (
        "vit-plain",
        [*SMALL_DATA_V0, *RESNET],
        "ResNet-10t (channels 24-192) with the small-data-v0 settings",
    ),
}
LONG = ("vit-plain", "deit", "small-data", "resnet")


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find_idx(name: str) -> Path:
    for candidate in (IDX_DIR / f"{name}.gz", IDX_DIR / name):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(name)


def prepare_data() -> Path:
    """A 10k stratified training subset and the full test set, as an .npz vitkit reads with --data."""
    if CACHE.exists():
        return CACHE
    if not IDX_DIR.exists() and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"], check=False)
    if not IDX_DIR.exists():
        sys.exit("Fashion-MNIST is missing: run `sudo apt-get install dataset-fashion-mnist` and try again.")
    x_train, y_train = read_idx(find_idx("train-images-idx3-ubyte")), read_idx(find_idx("train-labels-idx1-ubyte"))
    x_test, y_test = read_idx(find_idx("t10k-images-idx3-ubyte")), read_idx(find_idx("t10k-labels-idx1-ubyte"))
    _, subset = stratified_split(y_train.astype(np.int64), 10_000 / len(y_train), seed=0)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        CACHE, x_train=x_train[subset], y_train=y_train[subset], x_val=x_test, y_val=y_test, classes=np.array(CLASSES)
    )
    return CACHE


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The JSON rows of a results file (none when it does not exist yet)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one result as a JSON line, so a long benchmark keeps what it finished if it is stopped."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def recorded() -> set[tuple[str, str]]:
    return {(r["config"], r["budget"]) for r in read_rows(RESULTS)}


def run(name: str, budget: str, data: Path) -> dict[str, object]:
    base, extra, what = CONFIGS[name]
    epochs = EPOCHS[budget]
    overrides = [*SMALL_VIT, *extra, f"schedule.epochs={epochs}", f"data.source={data}"]
    recipe = load_recipe(base, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        result = train(recipe, Path(tmp) / name, console=Console())
    final = result.summary["final"]
    return {
        "config": name,
        "budget": budget,
        "what": what,
        "epochs": epochs,
        "test_top1": final["val_top1"],
        "ema_test_top1": final.get("ema_val_top1"),
        "wall_s": result.summary["wall_seconds"],
        "img_per_s": result.summary["train_images_per_second"],
        "params": result.summary["parameters"],
        "date": str(date.today()),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "overrides": [o for o in overrides if not o.startswith("data.source")],
    }


def table() -> str:
    rows = read_rows(RESULTS)
    lines = [
        "| configuration | budget | epochs | test top-1 | EMA test top-1 | wall | img/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ema = f"{r['ema_test_top1']:.2%}" if r.get("ema_test_top1") is not None else "-"
        lines.append(
            f"| {r['config']} ({r['what']}) | {r['budget']} | {r['epochs']} | {r['test_top1']:.2%} | {ema} "
            f"| {r['wall_s'] / 60:.1f} min | {r['img_per_s']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(EPOCHS), default="short")
    parser.add_argument("--config", action="append", choices=sorted(CONFIGS), help="repeatable; default: all")
    parser.add_argument("--force", action="store_true", help="run even if already recorded")
    parser.add_argument("--list", action="store_true", help="list configurations and exit")
    parser.add_argument("--table", action="store_true", help="print the results table and exit")
    args = parser.parse_args()
    if args.list:
        for name, (base, extra, what) in CONFIGS.items():
            print(f"{name:16s} {what}  [{base} {' '.join(extra)}]")
        return
    if args.table:
        print(table())
        return
    names = args.config or [n for n in CONFIGS if args.budget == "short" or n in LONG]
    data = prepare_data()
    done = recorded()
    for name in names:
        if (name, args.budget) in done and not args.force:
            print(f"{name} ({args.budget}) already recorded; --force to run again")
            continue
        row = run(name, args.budget, data)
        append_row(RESULTS, row)
        print(json.dumps(row))
    print(table())


if __name__ == "__main__":
    main()
