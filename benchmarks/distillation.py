"""Does a CNN teacher help a small ViT on Fashion-MNIST? Student alone, + soft, + hard distillation.

Data and budget are the recipe ablation's (benchmarks/recipe_ablation.py): the 10k-image training subset, the
full 10k test set, the `small-data` recipe and 20 epochs. The teacher is that ablation's ResNet-10t (channels
24-192), trained here once with the same recipe and budget. The students are the ablation's small ViT (28 px,
patch 7, width 96, 6 blocks) with a distillation token (timm's distilled DeiT class), trained for the same epochs
alone and with soft and hard distillation (alpha 0.5, tau 1, DeiT's defaults); a plain ViT with logit distillation
on its single head is the last row. Each run appends one JSON line to benchmarks/results/distillation.jsonl
(recorded runs are skipped), so the table can be built in parts.

    .venv/bin/python benchmarks/distillation.py                     # teacher once, then every student
    .venv/bin/python benchmarks/distillation.py --student hard
    .venv/bin/python benchmarks/distillation.py --table
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from recipe_ablation import CACHE, EPOCHS, RESNET, SMALL_VIT, append_row, prepare_data, read_rows
from vitkit.config import load_recipe
from vitkit.models.teacher import load_teacher
from vitkit.train.loop import train

RESULTS = Path(__file__).parent / "results" / "distillation.jsonl"
WORK = CACHE.parent / "distill_benchmark"
TEACHER_RUN = WORK / "teacher"
BUDGET = "short"
DISTILLED = ["model.name=deit_tiny_distilled_patch16_224"]
STUDENTS: dict[str, tuple[list[str], str]] = {
    "alone": ([*DISTILLED], "distilled DeiT, no teacher (heads averaged in training)"),
    "soft": ([*DISTILLED, "distill.type=soft", "distill.alpha=0.5", "distill.tau=1.0"], "distilled DeiT, soft"),
    "hard": ([*DISTILLED, "distill.type=hard", "distill.alpha=0.5"], "distilled DeiT, hard"),
    "plain-hard": (["distill.type=hard", "distill.alpha=0.5"], "plain ViT, hard (logit distillation)"),
}


def machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def common(data: Path) -> list[str]:
    return [*SMALL_VIT, f"schedule.epochs={EPOCHS[BUDGET]}", f"data.source={data}"]


def ensure_teacher(data: Path) -> dict[str, object]:
    """Train the ResNet teacher once (kept in the cache folder for the students)."""
    summary_path = TEACHER_RUN / "summary.json"
    if not summary_path.exists():
        recipe = load_recipe("small-data", [*common(data), *RESNET])
        train(recipe, TEACHER_RUN, overwrite=True, console=Console())
    summary = json.loads(summary_path.read_text())
    return {"test_top1": summary["final"]["val_top1"], "wall_s": summary["wall_seconds"]}


def teacher_cost(batch: int = 128, repeats: int = 20) -> dict[str, float]:
    """Median seconds of one teacher forward (no grad) on a training batch, as the trainer runs it."""
    teacher = load_teacher(str(TEACHER_RUN), img_size=28)
    x = torch.randn(batch, 3, 28, 28)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in ((0.286,) * 3, (0.353,) * 3))
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        teacher.logits(x, mean, std)
        if i >= 3:  # warm-up excluded
            times.append(time.perf_counter() - start)
    return {"teacher_s_per_step": statistics.median(times)}


def run_student(name: str, data: Path, teacher_row: dict[str, object]) -> dict[str, object]:
    extra, what = STUDENTS[name]
    overrides = [*common(data), *extra]
    if any(o.startswith("distill.type") for o in extra):
        overrides.append(f"distill.teacher={TEACHER_RUN}")
    result = train(load_recipe("small-data", overrides), WORK / name, overwrite=True, console=Console())
    s, final = result.summary, result.summary["final"]
    steps = s["updates"]
    return {
        "student": name,
        "what": what,
        "epochs": EPOCHS[BUDGET],
        "test_top1": final["val_top1"],
        "cls_head_top1": final.get("val_top1_cls_head"),
        "dist_head_top1": final.get("val_top1_dist_head"),
        "ema_test_top1": final.get("ema_val_top1"),
        "wall_s": s["wall_seconds"],
        "s_per_step": s["wall_seconds"] / steps,
        "teacher_top1": teacher_row["test_top1"],
        "date": str(date.today()),
        "machine": machine(),
        "overrides": [o for o in overrides if not o.startswith(("data.source", "distill.teacher"))],
    }


def recorded() -> set[str]:
    return {r["student"] for r in read_rows(RESULTS)}


def table() -> str:
    rows = read_rows(RESULTS)
    pct = lambda v: f"{v:.2%}" if v is not None else "-"  # noqa: E731
    lines = [
        "| student | test top-1 (heads averaged) | class head | distillation head | EMA | wall | s/step |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['what']} | {pct(r['test_top1'])} | {pct(r['cls_head_top1'])} | {pct(r['dist_head_top1'])} "
            f"| {pct(r['ema_test_top1'])} | {r['wall_s'] / 60:.1f} min | {r['s_per_step']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", action="append", choices=sorted(STUDENTS), help="repeatable; default: all")
    parser.add_argument("--force", action="store_true", help="run even if already recorded")
    parser.add_argument("--table", action="store_true", help="print the results table and exit")
    args = parser.parse_args()
    if args.table:
        print(table())
        return
    data = prepare_data()
    WORK.mkdir(parents=True, exist_ok=True)
    teacher_row = ensure_teacher(data)
    cost = {"teacher": teacher_row, **teacher_cost(), "date": str(date.today()), "machine": machine()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.with_name("distillation_teacher.json").write_text(json.dumps(cost, indent=2) + "\n")
    print(json.dumps(cost))
    done = recorded()
    for name in args.student or list(STUDENTS):
        if name in done and not args.force:
            print(f"{name} already recorded; --force to run again")
            continue
        row = run_student(name, data, teacher_row)
        append_row(RESULTS, row)
        print(json.dumps(row))
    print(table())


if __name__ == "__main__":
    main()
