"""The grid behind `vitkit advise recipe`: which trick strength wins for a data size and a compute budget?

Cells: Fashion-MNIST subsets of 1k, 5k, 10k and 60k training images (stratified, seed 0; tested on the full 10k
test set) and scikit-learn's digits (8 px; a stratified 70/30 split), each at three budgets; and, as data the rule
was not read from, vitkit's built-in shapes (--dataset shapes-1k, shapes-5k). The short budget is
about 20k images seen (at least one epoch), then 3x and 10x that. On each cell:

- `plain` and `deit`: the shipped vit-plain and deit-tiny recipes with the advisor's model for the data;
- `none`, `light`, `moderate`, `medium`, `strong`: the advisor's recipe with the trick strength forced and timm's
  plain ViT (patchify stem, MLP, class token, 2 heads; the sweep the strength rule was first read from: the advised
  ViT's own sweep, which the rule follows now, is `recipe_variants.py --sweep`);
- `advisor`: the advisor's recipe as it stands: its strength for the cell and its small-data ViT (convolutional
  stem, local MLPs, pooled tokens, QK normalisation, 4 heads);
- `resnet`: a ResNet-10t of about the ViT's size with the advisor's recipe for the cell (the reference row);
- `tune`: `vitkit tune` at about the same total compute (trials plus the final run) against the advisor: six
  trials at the short budget, the winner's changes to the advisor's recipe carried over to a final run at 5x;
- `tune_plain`: the same search around `plain` (vit-plain), against `plain`: what a search finds where the
  recipe it starts from is not the best of its neighbourhood.

The score is the final epoch's test top-1 (of the EMA weights where the recipe keeps an EMA). Each run appends
one JSON line to benchmarks/results/recipe_grid.jsonl as it finishes; recorded runs are skipped, so the grid is
run in parts (and in several worker processes with --workers). It needs Fashion-MNIST (Debian's
dataset-fashion-mnist) and, for digits, scikit-learn (`pip install scikit-learn`).

    .venv/bin/python benchmarks/recipe_grid.py --list
    .venv/bin/python benchmarks/recipe_grid.py --budget short --workers 2 --threads 1
    .venv/bin/python benchmarks/recipe_grid.py --table
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
from cpu import cpu_name
from recipe_ablation import CLASSES, append_row, find_idx, read_idx, read_rows
from vitkit.config import load_recipe
from vitkit.data.sources import load_arrays, stratified_split
from vitkit.plan.advise import advise_recipe, grid_epochs, profile_data, strength_for

RESULTS = Path(__file__).parent / "results" / "recipe_grid.jsonl"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vitkit" / "grid"
SIZES = {"fmnist-1k": 1_000, "fmnist-5k": 5_000, "fmnist-10k": 10_000, "fmnist-60k": 60_000}
DATASETS = ("digits", *SIZES)
# Data the strength rule was not read from: vitkit's built-in shapes (32 px, colour, 10 classes; 1k or 5k training
# images, a separate 2k for the test), to see how the advisor and a search around it do on new data.
HELD_OUT = {"shapes-1k": 1_000, "shapes-5k": 5_000}
BUDGETS = {"short": 1, "3x": 3, "10x": 10}
STRENGTHS = ("none", "light", "moderate", "medium", "strong")
CONFIGS = ("plain", "deit", *STRENGTHS, "advisor", "resnet", "tune", "tune_plain")
SEARCHED = {"tune": "advisor", "tune_plain": "plain"}  # the configuration each search starts from
TUNE_TRIALS = 6  # at the short budget on 80% of the training split (at most 4.8x; less where pruned) ...
TUNE_FINAL = 5  # ... then the winner at 5x: at most 9.8x in all, against the advisor's 10x
RESNET = ["model.name=resnet10t", "model.kwargs={channels: [16, 32, 64, 128]}", "model.patch_size=null"]
RESNET += ["model.embed_dim=null", "model.depth=null", "model.num_heads=null"]
# The strength sweep, vit-plain and DeiT keep the architecture they were measured with: timm's patchify stem, MLP
# and class token, 2 heads of 32 channels.
PLAIN_VIT = ["model.stem=patch", "model.mlp=mlp", "model.kwargs={}", "model.num_heads=2"]
RESNET += ["model.stem=patch", "model.mlp=mlp"]  # a ResNet has no patch embedding or ViT MLP to replace


def prepare(name: str) -> Path:
    """The dataset as an .npz vitkit reads with --data (x_train/y_train, x_val/y_val = the test set)."""
    path = CACHE / f"{name}.npz"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    if name in HELD_OUT:
        from vitkit.data.synthetic import SHAPE_CLASSES, make_shapes

        x_train, y_train = make_shapes(HELD_OUT[name], seed=1)
        x_test, y_test = make_shapes(2_000, seed=2)
        np.savez(path, x_train=x_train, y_train=y_train, x_val=x_test, y_val=y_test, classes=np.array(SHAPE_CLASSES))
        return path
    if name == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise RuntimeError(
                "the digits cells need scikit-learn (its copy of the data): pip install scikit-learn"
            ) from None

        digits = load_digits()
        x = np.round(digits.images * (255 / 16)).astype(np.uint8)
        y = digits.target.astype(np.int64)
        train, test = stratified_split(y, 0.3, seed=0)
        arrays = {"x_train": x[train], "y_train": y[train], "x_val": x[test], "y_val": y[test]}
        np.savez(path, **arrays, classes=np.array([str(i) for i in range(10)]))
        return path
    x_train, y_train = read_idx(find_idx("train-images-idx3-ubyte")), read_idx(find_idx("train-labels-idx1-ubyte"))
    x_test, y_test = read_idx(find_idx("t10k-images-idx3-ubyte")), read_idx(find_idx("t10k-labels-idx1-ubyte"))
    keep = np.arange(len(y_train))
    if SIZES[name] < len(y_train):
        _, keep = stratified_split(y_train.astype(np.int64), SIZES[name] / len(y_train), seed=0)
    np.savez(path, x_train=x_train[keep], y_train=y_train[keep], x_val=x_test, y_val=y_test, classes=np.array(CLASSES))
    return path


def epochs_for(images: int, budget: str | int) -> int:
    """Epochs of a budget (a name, or a multiple of the short budget)."""
    return grid_epochs(images, BUDGETS[budget] if isinstance(budget, str) else budget)


def overrides_for(config: str, data: Path, budget: str | int) -> tuple[str, list[str], dict[str, Any]]:
    """(base recipe, overrides, facts) of one configuration on one cell."""
    profile = profile_data(load_arrays(data, 0.1, 0))
    epochs = epochs_for(profile.images, budget)
    advised = advise_recipe(profile, epochs)
    facts = {"images": profile.images, "epochs": epochs, "advised_strength": advised.strength}
    common = [f"data.source={data}", "data.num_workers=0", f"train.eval_every={epochs}", "train.log_every=1000"]
    common.append("train.precision=fp32")  # bf16 autocast on CPU made the ResNet's losses non-finite on 8-px digits
    model = [o for o in advised.overrides() if o.split("=")[0].startswith(("model.", "data."))] + PLAIN_VIT
    if config in ("plain", "deit"):
        base = "vit-plain" if config == "plain" else "deit-tiny"
        warmup = f"schedule.warmup_epochs={min(5.0, 0.1 * epochs):g}"  # DeiT's 5 epochs do not fit short budgets
        return base, [*model, f"schedule.epochs={epochs}", warmup, *common], facts
    strength = config if config in STRENGTHS else None  # "advisor" and "resnet": the advisor's own pick
    recipe = advise_recipe(profile, epochs, strength=strength)
    extra = RESNET if config == "resnet" else PLAIN_VIT if config in STRENGTHS else []
    return recipe.base, [*recipe.overrides(), *extra, *common], {**facts, "strength": recipe.strength}


def tuned_overrides(data: Path, tmp: Path, searched: str) -> list[str]:
    """`vitkit tune` around the `searched` configuration's short-budget recipe: TUNE_TRIALS trials validated on a
    held-out 20% of the training split (the test set is never seen). What the search changed is carried over to
    that configuration's recipe for the final budget as a change of each setting (a factor on a log scale), not the
    short budget's values: the advisor's strengths grow with the budget (the rule), and a short search picks
    short-budget strengths."""
    from vitkit.plan.tune import base_values, tune

    base, overrides, _ = overrides_for(searched, data, "short")
    short = load_recipe(base, overrides)
    result = tune(short, tmp / "study", trials=TUNE_TRIALS, console=Console(quiet=True))
    final = load_recipe(*overrides_for(searched, data, TUNE_FINAL)[:2])
    return transferred(result.best_values, base_values(short), final)


def transferred(best: dict[str, float], start: dict[str, float], final: Any) -> list[str]:
    """The winner's change from the search's start applied to `final`'s own values, each clamped to its range;
    none where the winner is the start itself."""
    from vitkit.plan.tune import SPACE, base_values
    from vitkit.plan.tune import overrides_for as trial_overrides

    if all(abs(best[k] - start[k]) < 1e-9 for k in best):
        return []
    own = base_values(final)

    def moved(k: Any) -> float:  # a knob searched on a log scale (the lr factor, weight decay) moves by a factor
        value = (
            own[k.field] * best[k.field] / start[k.field] if k.log else own[k.field] + best[k.field] - start[k.field]
        )
        return float(min(max(value, k.low), k.high))

    return trial_overrides({k.field: moved(k) for k in SPACE}, final)


def score(recipe: Any, final: dict[str, Any]) -> float:
    """The final test top-1: of the EMA weights where the recipe keeps an EMA."""
    ema = final.get("ema_val_top1")
    return float(ema if recipe.ema.enabled and ema is not None else final["val_top1"])


def run(dataset: str, budget: str, config: str) -> dict[str, Any]:
    from vitkit.train.faults import TrainingDiverged
    from vitkit.train.loop import train

    data = prepare(dataset)
    with tempfile.TemporaryDirectory() as tmp:
        searched = SEARCHED.get(config)
        chosen = tuned_overrides(data, Path(tmp), searched) if searched else []
        final_budget = TUNE_FINAL if searched else budget
        base, overrides, facts = overrides_for(searched or config, data, final_budget)
        overrides += chosen
        recipe = load_recipe(base, overrides)
        try:
            result = train(recipe, Path(tmp) / "run", console=Console(quiet=True))
        except TrainingDiverged as exc:  # a recipe that diverges scores chance, and the grid goes on
            return {"dataset": dataset, "budget": budget, "config": config, **facts, "score": None, "failed": str(exc)}
    final = result.summary["final"]
    return {
        "dataset": dataset,
        "budget": budget,
        "config": config,
        **facts,
        "test_top1": final["val_top1"],
        "ema_test_top1": final.get("ema_val_top1"),
        "score": score(recipe, final),
        "wall_s": result.summary["wall_seconds"],
        "img_per_s": result.summary["train_images_per_second"],
        "params": result.summary["parameters"],
        "date": str(date.today()),
        "machine": machine(),
        "base": base,
        "overrides": [o for o in overrides if not o.startswith("data.source")],
    }


def machine() -> str:
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu_name()}, {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}{gpu}"


def recorded() -> set[tuple[str, str, str]]:
    return {(r["dataset"], r["budget"], r["config"]) for r in read_rows(RESULTS)}


def jobs(budgets: list[str], datasets: list[str], configs: list[str]) -> list[tuple[str, str, str]]:
    """Every (dataset, budget, config); tune only where the budget leaves room for a search (10x)."""
    return [(d, b, c) for b in budgets for d in datasets for c in configs if c not in SEARCHED or b == "10x"]


def _pick(rows: dict[str, Any]) -> str:
    """The strength the advisor's current rule picks for the cell."""
    row = next(r for c, r in rows.items() if c not in SEARCHED)
    return strength_for(row["epochs"], row["images"])


def _cell(rows: dict[str, Any], config: str) -> str:
    row = rows.get(config)
    if row is None:
        return "-"
    return "diverged" if row["score"] is None else f"{row['score']:.1%}"


def advised_architecture(overrides: list[str]) -> str:
    """Which of the advisor's ViTs a run's overrides build: the stem-only one, the one with local MLPs, or that one
    without a position embedding (whose advisor also flips from the light strength)."""
    if "model.mlp=local" not in overrides:
        return "conv stem"
    kwargs = next((o for o in reversed(overrides) if o.startswith("model.kwargs=")), "")
    return "no position embedding" if "pos_embed: none" in kwargs else "local MLP"


def _architecture(row: dict[str, Any]) -> str:
    return advised_architecture(row.get("overrides", []))


def _cells(results: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """(dataset, budget, {config: row}) in the grid's order; a rerun job's last row wins. `tune_base` is the last
    advisor row with the tuned run's architecture: tune is compared with the advisor it started from."""
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        cell = cells.setdefault((r["dataset"], r["budget"]), {})
        cell[r["config"]] = r
        if r["config"] == "advisor":
            cell[f"advisor/{_architecture(r)}"] = r
    for cell in cells.values():
        if "tune" in cell and f"advisor/{_architecture(cell['tune'])}" in cell:
            cell["tune_base"] = cell[f"advisor/{_architecture(cell['tune'])}"]
    return [(d, b, cells[(d, b)]) for d in (*DATASETS, *HELD_OUT) for b in BUDGETS if (d, b) in cells]


def table(results: list[dict[str, Any]]) -> str:
    """One line per cell: every configuration's test top-1; the rule's pick in the sweep is marked with *."""
    head = "| data | budget | epochs | plain | deit | " + " | ".join(STRENGTHS) + " | advisor | resnet | tune "
    lines = [head + "| tune_plain |", "|" + "---|" * (9 + len(STRENGTHS))]
    for dataset, budget, rows in _cells(results):
        any_row = next(r for c, r in rows.items() if c not in SEARCHED)
        pick = _pick(rows)
        sweep = [_cell(rows, c) + ("*" if c == pick else "") for c in STRENGTHS]
        shown = [_cell(rows, "plain"), _cell(rows, "deit"), *sweep]
        shown += [_cell(rows, "advisor"), _cell(rows, "resnet"), _cell(rows, "tune"), _cell(rows, "tune_plain")]
        lines.append(f"| {dataset} | {budget} | {any_row['epochs']} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def _points(rows: dict[str, Any], a: str | None, b: str | None) -> float | None:
    """Test top-1 of configuration a minus b in points (a diverged run scores 0)."""
    if a not in rows or b not in rows:
        return None
    return 100 * ((rows[a]["score"] or 0.0) - (rows[b]["score"] or 0.0))


def _signed(points: float | None) -> str:
    return "-" if points is None else f"{points:+.1f}"


def targets(results: list[dict[str, Any]]) -> str:
    """Per cell, the margins the advisor is held to: over vit-plain (never below -0.5; +2 on the 10x budget) and
    DeiT; the strength rule's regret in the plain-ViT sweep; what the small-data ViT adds to that sweep's best;
    the advisor against the ResNet (within 1 point at 10x); tune against the advisor."""
    head = "| data | budget | advisor - plain | advisor - deit | rule's pick - best strength | architecture gain "
    lines = [head + "| advisor - resnet | tune - advisor | tune_plain - plain |", "|---" * 9 + "|"]
    for dataset, budget, rows in _cells(results):
        pick = _pick(rows)
        swept = [c for c in STRENGTHS if c in rows]
        best = max(swept, key=lambda c: rows[c]["score"] or 0.0) if swept else None
        margins = [_points(rows, "advisor", "plain"), _points(rows, "advisor", "deit")]
        margins += [_points(rows, pick, best), _points(rows, "advisor", best)]
        margins += [_points(rows, "advisor", "resnet"), _points(rows, "tune", "tune_base")]
        margins.append(_points(rows, "tune_plain", "plain"))
        shown = [_signed(m) for m in margins]
        lines.append(f"| {dataset} | {budget} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def architectures(results: list[dict[str, Any]]) -> str:
    """Per cell, the last advisor row of each ViT the advisor has built, and the ResNet reference's last row."""
    kinds = ("conv stem", "local MLP", "no position embedding")
    head = "| data | budget | conv stem only | + local MLPs, pooled tokens | now | change | ResNet-10t | now - ResNet |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for dataset, budget, rows in _cells(results):
        shown = [_cell(rows, f"advisor/{kind}") for kind in kinds]
        change = _points(rows, f"advisor/{kinds[2]}", f"advisor/{kinds[1]}")
        gap = _points(rows, f"advisor/{kinds[2]}", "resnet")
        shown += [_signed(change), _cell(rows, "resnet"), _signed(gap)]
        lines.append(f"| {dataset} | {budget} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def _run_job(job: tuple[str, str, str], threads: int) -> dict[str, Any] | None:
    """One job in a worker process; None when it failed (not recorded, so it runs again next time)."""
    if threads:
        torch.set_num_threads(threads)
    print("running", *job, flush=True)
    try:
        return run(*job)
    except Exception as exc:  # one broken job must not stop the others
        print("failed", *job, repr(exc), flush=True)
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", action="append", choices=list(BUDGETS), help="repeatable; default: short")
    parser.add_argument(
        "--dataset", action="append", choices=(*DATASETS, *HELD_OUT), help="repeatable; default: all but shapes"
    )
    parser.add_argument("--config", action="append", choices=CONFIGS, help="repeatable, in this order; default: all")
    parser.add_argument("--workers", type=int, default=1, help="processes taking the next job as each finishes")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch's default)")
    parser.add_argument("--rerun", action="store_true", help="run recorded jobs again (the table keeps the last)")
    parser.add_argument("--list", action="store_true", help="list the jobs and exit")
    parser.add_argument("--table", action="store_true", help="print the results tables and exit")
    args = parser.parse_args()
    if args.table:
        rows = read_rows(RESULTS)
        print(table(rows) + "\n\n" + targets(rows) + "\n\n" + architectures(rows))
        return
    configs = args.config or list(CONFIGS)
    todo = jobs(args.budget or ["short"], args.dataset or list(DATASETS), configs)
    todo = sorted(todo, key=lambda job: configs.index(job[2]))  # the most wanted configurations first
    todo = [job for job in todo if args.rerun or job not in recorded()]
    if args.list:
        print("\n".join(" ".join(j) for j in todo))
        return
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=spawn) as pool:
        futures = [pool.submit(_run_job, job, args.threads) for job in todo]
        for future in as_completed(futures):  # appended as each finishes, so a stopped grid keeps it
            row = future.result()
            if row is not None:
                append_row(RESULTS, row)
                print(json.dumps({k: row[k] for k in ("dataset", "budget", "config", "score")}), flush=True)


if __name__ == "__main__":
    main()
