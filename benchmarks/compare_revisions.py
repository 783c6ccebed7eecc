"""Training throughput of this checkout against another git revision, measured alternately on one machine.

Each measurement is a fresh process that imports vitkit from one source tree and trains ViT-Tiny (img 32, patch 4,
batch 128, full DeiT augmentation, EMA; fp32) on the same PNG files for `--steps` timed steps after 3 warm-up
steps; img/s comes from the run's own timing.jsonl. Revisions alternate (A B A B ...) so that a slow spell of the
machine touches both alike. Every measurement is appended to benchmarks/results/compare_revisions.jsonl as it ends.

    .venv/bin/python benchmarks/compare_revisions.py REV [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "compare_revisions.jsonl"

# runs inside the measured tree's process: only names both old and new vitkit know (train.max_steps is the old
# name of train.max_updates, still accepted)
MEASURE = """
import sys, tempfile
from pathlib import Path
from rich.console import Console
from vitkit.config import load_recipe
from vitkit.train.loop import train
from vitkit.train.logging import read_metrics

data, steps, warmup = sys.argv[1], int(sys.argv[2]), 3
overrides = ["model.img_size=32", "model.patch_size=4", "train.batch_size=128", "ema.enabled=true",
             "train.precision=fp32", "train.log_every=1", f"train.max_steps={warmup + steps}",
             "schedule.epochs=100", "schedule.warmup_epochs=1"]
cfg = load_recipe("deit-tiny", overrides, source=data)
with tempfile.TemporaryDirectory() as tmp:
    train(cfg, Path(tmp) / "run", console=Console(quiet=True))
    rows = read_metrics(Path(tmp) / "run" / "timing.jsonl")[warmup:]
    print(len(rows) * 128 / sum(128 / r["img_per_s"] for r in rows))
"""


def write_pngs(root: Path, n: int) -> Path:
    sys.path.insert(0, str(ROOT / "src"))
    from PIL import Image

    from vitkit.data.synthetic import SHAPE_CLASSES, make_shapes

    images, labels = make_shapes(n, size=32, seed=0)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        folder = root / SHAPE_CLASSES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i}.png")
    return root


def measure(tree: Path, data: Path, steps: int) -> float:
    env = {"PYTHONPATH": str(tree / "src"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(data), str(steps)], env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rev", help="the git revision to compare this checkout with")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "other"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(other), args.rev], check=True)
        try:
            data = write_pngs(Path(tmp) / "pngs", 128 * (args.steps + 4))
            trees = {"this checkout": ROOT, args.rev: other}
            samples: dict[str, list[float]] = {name: [] for name in trees}
            for repeat in range(args.repeats):
                for name, tree in trees.items():
                    ips = measure(tree, data, args.steps)
                    samples[name].append(ips)
                    print(f"repeat {repeat}: {name}: {ips:.1f} img/s", flush=True)
                    row = {"date": str(date.today()), "machine": platform.processor() or platform.machine()}
                    RESULTS.parent.mkdir(parents=True, exist_ok=True)
                    with RESULTS.open("a") as fh:
                        fh.write(json.dumps({**row, "tree": name, "repeat": repeat, "img_per_s": ips}) + "\n")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)], check=False)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    for name, value in medians.items():
        print(f"{name}: median {value:.1f} img/s ({', '.join(f'{v:.1f}' for v in samples[name])})")
    this, that = medians["this checkout"], medians[args.rev]
    print(f"this checkout / {args.rev}: {this / that:.1%}")


if __name__ == "__main__":
    main()
