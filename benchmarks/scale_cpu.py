"""One run on several processes against one process, on this machine's CPU cores.

    .venv/bin/python benchmarks/scale_cpu.py --part throughput [--steps 20] [--repeats 3]
    .venv/bin/python benchmarks/scale_cpu.py --part mixup [--updates 300]

throughput: `vitkit train` (deit-tiny recipe, img 32, patch 4, global batch 128, fp32, full DeiT augmentation, EMA)
as 1 process x all cores' threads against N processes x 1 thread (torchrun, gloo), the same global batch,
alternating (A B A B ...); img/s of the global batch from the run's timing.jsonl after 3 warm-up steps.

mixup: with Mixup/CutMix each process mixes its own share of the global batch with its own random draws, so an
N-process run pairs other images, with other lambdas, than a 1-process run. How far apart do they end up? The
same recipe with mixing on and off, on 1 and 2 processes: the largest weight difference and the validation top-1.

Each result is appended to benchmarks/results/scale_cpu.jsonl as it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "scale_cpu.jsonl"
sys.path.insert(0, str(ROOT / "src"))

from vitkit.checkpoint_files import load_weights  # noqa: E402
from vitkit.train.logging import read_metrics  # noqa: E402

CORES = os.cpu_count() or 1
WARMUP = 3


def vitkit_train(processes: int, out: Path, sets: list[str], recipe: str) -> None:
    """`vitkit train` on `processes` processes; each gets CORES // processes threads."""
    args = ["-m", "vitkit", "train", "--recipe", recipe, "--out", str(out)]
    args += [a for s in sets for a in ("--set", s)]
    launcher = (
        [] if processes == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, CORES // processes))}
    done = subprocess.run([sys.executable, *launcher, *args], env=env, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise SystemExit(f"vitkit train failed on {processes} processes:\n{done.stderr[-3000:]}")


def record(row: dict) -> None:
    row |= {"date": str(date.today()), "cpu": platform.processor() or platform.machine(), "cores": CORES}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def throughput(steps: int, repeats: int) -> None:
    sets = [
        "model.img_size=32",
        "model.patch_size=4",
        "train.global_batch_size=128",
        "train.precision=fp32",
        "train.log_every=1",
        f"train.max_updates={WARMUP + steps}",
        "schedule.epochs=100",
        "data.source=builtin:shapes",
        "data.synthetic_train_size=4096",
        "data.synthetic_val_size=64",
    ]
    measured: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(repeats):
        for processes in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                vitkit_train(processes, Path(tmp) / "run", sets, "deit-tiny")
                rows = read_metrics(Path(tmp) / "run" / "timing.jsonl")[WARMUP:]
            img_s = len(rows) / sum(1 / r["img_per_s"] for r in rows)
            measured[processes].append(img_s)
            record({"part": "throughput", "processes": processes, "threads": CORES // processes, "img_per_s": img_s})
    one, two = statistics.median(measured[1]), statistics.median(measured[2])
    record({"part": "throughput-summary", "one_process": one, "two_processes": two, "ratio": two / one})


def mixup(updates: int) -> None:
    base = [  # the quickstart model (32 px, patch 8) on 960 images, 10 epochs at the default 300 updates
        "train.global_batch_size=32",
        "train.precision=fp32",
        f"train.max_updates={updates}",
        "schedule.epochs=100",
        "schedule.warmup_epochs=1",
        "data.synthetic_train_size=960",
        "data.synthetic_val_size=400",
        "ema.enabled=false",
        "augment.random_erasing=0",
        "model.drop_path_rate=0",
    ]
    for mixing in ("off", "on"):
        sets = [
            *base,
            *(
                ["augment.mixup=0", "augment.cutmix=0"]
                if mixing == "off"
                else ["augment.mixup=0.8", "augment.cutmix=1.0", "augment.mix_prob=1.0"]
            ),
        ]
        with tempfile.TemporaryDirectory() as tmp:
            runs = {}
            for processes in (1, 2):
                vitkit_train(processes, Path(tmp) / str(processes), sets, "quickstart")
                runs[processes] = Path(tmp) / str(processes)
            a, b = (load_weights(runs[p] / "checkpoints" / "last" / "model.safetensors") for p in (1, 2))
            diff = max(float((a[k] - b[k]).abs().max()) for k in a)
            top1 = [read_metrics(runs[p] / "metrics.jsonl", "epoch")[-1]["val_top1"] for p in (1, 2)]
        record({"part": "mixup", "mixing": mixing, "updates": updates, "max_weight_diff": diff, "val_top1": top1})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["throughput", "mixup"], required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--updates", type=int, default=300)
    args = parser.parse_args()
    throughput(args.steps, args.repeats) if args.part == "throughput" else mixup(args.updates)
