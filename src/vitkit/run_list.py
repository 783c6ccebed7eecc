"""Runs on disk: list the run folders under a folder with their status, and compare two of them.

Everything here reads the files a run folder already has (recipe.yaml, summary.json, metrics.jsonl,
checkpoints/, eval/metrics.json and the `running.json` a live training process keeps), so it works on runs of any
age and never loads a model.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vitkit.errors import VitkitError
from vitkit.run_folder import RUNNING, is_run_folder, trained_by


@contextmanager
def running_marker(run_dir: Path) -> Iterator[None]:
    """Mark `run_dir` as being trained by this process for as long as the body runs."""
    busy = trained_by(run_dir)
    if busy is not None:  # two processes writing one run folder would corrupt it
        raise VitkitError(f"{run_dir} is being trained right now ({busy}). Stop that process first.")
    marker = run_dir / RUNNING
    marker.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}))
    try:
        yield
    finally:
        marker.unlink(missing_ok=True)


def run_status(run_dir: Path) -> str:
    """finished (a summary was written), running (a live process trains it), stopped (a checkpoint to resume from,
    no summary: preempted, diverged or killed) or empty (no checkpoint yet)."""
    if trained_by(run_dir) is not None:
        return "running"
    if (run_dir / "summary.json").exists():
        return "finished"
    return "stopped" if (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir()) else "empty"


@dataclass(frozen=True)
class RunInfo:
    path: Path
    recipe: str  # the model and the recipe's description
    data: str
    best: str  # "val_top1 92.5% (epoch 7)" or "-"
    status: str
    date: str  # when the run last wrote anything


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _recipe(run_dir: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _best(summary: dict[str, Any]) -> str:
    best = summary.get("best") or {}
    if best.get("epoch", -1) is None or best.get("epoch", -1) < 0 or "value" not in best:
        return "-"
    value = best["value"]
    shown = f"{value:.4f}" if best.get("metric") == "val_loss" else f"{value:.1%}"
    return f"{best['metric']} {shown} (epoch {best['epoch']})"


def run_info(run_dir: Path) -> RunInfo:
    recipe, summary = _recipe(run_dir), _read_json(run_dir / "summary.json")
    model = (recipe.get("model") or {}).get("name", "?")
    newest = max((p.stat().st_mtime for p in run_dir.iterdir()), default=run_dir.stat().st_mtime)
    return RunInfo(
        run_dir,
        model,
        str((recipe.get("data") or {}).get("source", "?")),
        _best(summary),
        run_status(run_dir),
        time.strftime("%Y-%m-%d %H:%M", time.localtime(newest)),
    )


def find_runs(root: Path, depth: int = 3) -> list[Path]:
    """Run folders at or under `root`, up to `depth` levels down, newest first; hidden folders are skipped."""
    if not root.is_dir():
        what = "a file, not a folder" if root.exists() else "no such folder"
        raise VitkitError(f"{root}: {what}. Pass the folder that holds your runs (default runs/).")
    found, frontier = [], [root]
    for _ in range(depth + 1):
        deeper = []
        for folder in frontier:
            if is_run_folder(folder):
                found.append(folder)
            else:
                deeper += [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]
        frontier = deeper
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested recipe as {"section.field": value}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def fields_that_differ(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(section.field, value in a, value in b) for each field of two recipe trees that differs, sorted."""
    fa, fb = flatten(a), flatten(b)
    return [(k, fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)]


def resume_changes(run_dir: Path, tree: dict[str, Any]) -> str | None:
    """`changed on resume: optim.lr 0.002 -> 0.1` when the recipe a run resumes with differs from its recipe.yaml,
    which is then rewritten: the line is what tells the run's log that its first epochs ran with other values."""
    changes = fields_that_differ(_recipe(run_dir), tree)
    if not changes:
        return None
    return "changed on resume: " + ", ".join(f"{k} {a} -> {b}" for k, a, b in changes)


def run_metrics(run_dir: Path) -> dict[str, Any]:
    """The figures two runs are compared on: training outcome, cost, and the evaluation's headline numbers."""
    summary = _read_json(run_dir / "summary.json")
    final = summary.get("final") or {}
    results = _read_json(run_dir / "eval" / "metrics.json").get("results", {})
    values = {
        "status": run_status(run_dir),
        "best": _best(summary),
        "epochs": summary.get("epochs"),
        "updates": summary.get("updates"),
        "final val_top1": final.get("val_top1"),
        "final ema_val_top1": final.get("ema_val_top1"),
        "final val_loss": final.get("val_loss"),
        "eval top-1": results.get("accuracy", {}).get("top1"),
        "eval ECE": results.get("calibration", {}).get("ece"),
        "wall seconds": summary.get("wall_seconds"),
        "train img/s": summary.get("train_images_per_second"),
    }
    return {k: v for k, v in values.items() if v is not None}


def compare_runs(a: Path, b: Path) -> tuple[list[tuple[str, Any, Any]], list[tuple[str, Any, Any]]]:
    """(recipe fields that differ, metrics) of two runs, each as (name, value in a, value in b)."""
    for run in (a, b):
        if not is_run_folder(run):
            raise VitkitError(f"{run} is not a vitkit run folder. Pass two folders written by vitkit train --out.")
    differ = fields_that_differ(_recipe(a), _recipe(b))
    ma, mb = run_metrics(a), run_metrics(b)
    metrics = [(k, ma.get(k), mb.get(k)) for k in dict.fromkeys([*ma, *mb])]
    return differ, metrics
