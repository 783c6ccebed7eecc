"""Evaluate a trained run: predict on its evaluation data once, run the chosen evaluators, write metrics.json and
report.html, and save the fitted temperature for later inference."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from vitkit import __version__
from vitkit.checkpoint_files import CHECKSUMS
from vitkit.config.schema import Recipe
from vitkit.data.labels import keep_labels
from vitkit.data.pipeline import eval_transform
from vitkit.data.sources import DataSplits, ImageSet, images_sha256, load_source, recipe_splits, same_source
from vitkit.errors import DataError
from vitkit.evaluate.context import EvalContext, EvalSettings, Evaluator, ModelRunner, run_evaluator
from vitkit.evaluate.findings import findings
from vitkit.evaluate.predict import predict_outputs
from vitkit.evaluate.registry import select_evaluators
from vitkit.files import write_atomically
from vitkit.models.run_model import load_run_or_checkpoint
from vitkit.precision import autocast_dtype, resolve_device, resolve_precision
from vitkit.run_folder import check_output_files, read_jsonl_records, read_run_json

TEMPERATURE_FILE = "calibration.json"  # in the run folder: the temperature fitted for one checkpoint
THRESHOLDS_FILE = "thresholds.json"  # in the run folder: operating thresholds fitted on the run's validation split


def make_runner(model: nn.Module, recipe: Recipe) -> ModelRunner:
    """A ModelRunner with the recipe's device, precision, normalisation, eval transform and batch size."""
    device = resolve_device(recipe.train.device)
    amp = autocast_dtype(resolve_precision(recipe.train.precision, device))
    mean, std = recipe.data.normalization()
    transform = eval_transform(recipe.augment, recipe.model.img_size)
    return ModelRunner(model.to(device).eval(), device, mean, std, transform, recipe.train.batch_size, amp)


def predict_context(
    runner: ModelRunner,
    images: ImageSet,
    classes: list[str],
    *,
    shift: tuple[str, ImageSet] | None = None,
    settings: EvalSettings | None = None,
) -> EvalContext:
    """One pass of the model over `images`: the context every evaluator starts from."""
    r = runner
    outputs, labels = predict_outputs(r.model, r.batches(images), r.device, r.mean, r.std, r.amp_dtype)
    return EvalContext(
        logits=outputs.pop("logits"),
        labels=labels,
        classes=classes,
        images=images,
        groups=images.groups,
        runner=runner,
        shift=shift,
        head_logits=outputs,
        settings=settings or EvalSettings(),
    )


def run_all(ctx: EvalContext, evaluators: list[Evaluator]) -> tuple[dict[str, Any], dict[str, float]]:
    """Results by evaluator, and the seconds each took."""
    results, seconds = {}, {}
    for evaluator in evaluators:
        start = time.perf_counter()
        results[evaluator.name] = run_evaluator(evaluator, ctx)
        seconds[evaluator.name] = round(time.perf_counter() - start, 3)
    return results, seconds


def _all_images(splits: DataSplits) -> ImageSet:
    """Train and val of a source together: a shifted dataset or a test set is evaluated whole."""
    a, b = splits.train, splits.val
    items = np.concatenate([a.items, b.items]) if isinstance(a.items, np.ndarray) else [*a.items, *b.items]
    groups = (a.groups or [""] * len(a)) + (b.groups or [""] * len(b)) if a.groups or b.groups else None
    patients = a.patients + b.patients if a.patients is not None and b.patients is not None else None
    return ImageSet(items, np.concatenate([a.labels, b.labels]), groups, patients)


def relabel(images: ImageSet, data_classes: list[str], classes: list[str], where: str) -> ImageSet:
    """`images` labelled by the data's own class list, relabelled to the model's class list, by name (multi-label:
    the model's labels, in its order)."""
    if images.multilabel:
        return images.with_labels(keep_labels(images.labels, data_classes, classes, where))
    unknown = sorted(set(data_classes) - set(classes))
    if unknown:
        raise DataError(f"{where} has classes the model does not know: {unknown}. The model's classes: {classes}.")
    index = np.asarray([classes.index(c) for c in data_classes], dtype=np.int64)
    return images.with_labels(index[images.labels])


def load_shift(source: str, classes: list[str], recipe: Recipe) -> tuple[str, ImageSet]:
    """A shifted dataset, whole, with its labels mapped onto the run's classes by name."""
    try:
        splits = load_source(source, root=recipe.data.root, val_fraction=0.0, seed=0, img_size=recipe.model.img_size)
    except DataError as exc:  # the data loaders speak of --data, the option users give it to; here it is another
        raise DataError(str(exc).replace("--data ", "--shift-data ", 1)) from None
    return splits.description, relabel(_all_images(splits), splits.classes, classes, f"--shift-data {source}")


def evaluate_run(
    path: Path,
    *,
    data: str | None = None,
    groups: str | None = None,
    shift_data: str | None = None,
    only: str | list[str] | tuple[str, ...] | None = None,
    out: Path | None = None,
    settings: EvalSettings | None = None,
    save_temperature_for_predict: bool | None = None,
) -> tuple[dict[str, Any], Path]:
    """Evaluate a run folder (or one of its checkpoints) on the val split of its data, or on all of `data` (other
    data is a test set); writes
    OUT/metrics.json and OUT/report.html (OUT defaults to RUN/eval) and returns the metrics document and OUT.

    A temperature that calibration fitted (and kept) is saved for `vitkit predict` when the evaluation used the
    run's own data, or when `save_temperature_for_predict` asks for it; other data never replaces it silently.
    """
    from vitkit.evaluate.report import write_report

    start = time.perf_counter()
    evaluators = select_evaluators(only)  # a typo in --only fails before any work
    model, recipe, info = load_run_or_checkpoint(path)
    run_dir = Path(info["checkpoint"]).parent.parent
    out = out or run_dir / "eval"
    check_output_files(out / "metrics.json", out / "report.html")  # before the work: a user's file is never replaced
    splits = recipe_splits(recipe, data, groups)
    classes = info.get("classes") or splits.classes
    own_data = data is None or same_source(data, recipe.data.source or "")
    evaluated = splits.val if own_data else _all_images(splits)  # other data is a test set: all of it counts
    images = relabel(evaluated, splits.classes, classes, f"the evaluation data {splits.description}")
    runner = make_runner(model, recipe)
    shift = load_shift(shift_data, classes, recipe) if shift_data else None
    ctx = predict_context(runner, images, classes, shift=shift, settings=settings)
    if not own_data:  # a test set: the thresholds fitted on validation are applied unchanged
        ctx.frozen_thresholds = saved_thresholds(run_dir, info)
    ctx.is_validation_split = own_data
    if only is None and ctx.task == "multiclass":  # per-finding ranking is for binary and multi-label tasks
        evaluators = [e for e in evaluators if e.name != "clinical"]
    results, seconds = run_all(ctx, evaluators)
    document = {
        "vitkit": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": str(run_dir),
        "checkpoint": {k: info.get(k) for k in ("checkpoint", "weights", "epoch", "step", "best_source", "why")},
        "data": splits.description,
        "task": ctx.task,
        "classes": classes,
        "images": len(ctx.labels),
        "data_sha256": images_sha256(images),
        "settings": asdict(ctx.settings),
        "results": results,
        "seconds": seconds,
    }
    document["training"] = training_record(run_dir)
    document["findings"] = findings(document)
    save = own_data if save_temperature_for_predict is None else save_temperature_for_predict
    if "temperature" in results.get("calibration", {}) and save:
        save_temperature(run_dir, results["calibration"]["temperature"], info, splits.description)
        document["temperature_saved"] = str(run_dir / TEMPERATURE_FILE)
    fitted = results.get("clinical", {}).get("fitted_thresholds")
    if fitted and save:
        save_thresholds(run_dir, fitted, info, f"{splits.description}, validation split")
        document["thresholds_saved"] = str(run_dir / THRESHOLDS_FILE)
    document["seconds_total"] = round(time.perf_counter() - start, 3)  # loading and prediction included
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / "metrics.json", json.dumps(document, indent=1))
    write_report(document, out / "report.html")

    return document, out


def training_record(run_dir: Path) -> dict[str, Any]:
    """What the findings and the report need of a run's training: its epoch records, the learning rate of the
    logged steps (metrics.jsonl) and the skipped images."""
    record: dict[str, Any] = {}
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        rows = read_jsonl_records(metrics)
        keys = HISTORY_KEYS
        record["history"] = [{k: r[k] for k in keys if k in r} for r in rows if r.get("kind") == "epoch"]
        steps = [(r["step"], r["lr"]) for r in rows if r.get("kind") == "step" and "lr" in r]
        every = max(1, len(steps) // LR_POINTS)
        record["lr"] = [list(point) for point in steps[::every]]
        record["dynamics"] = dynamics_summary([r for r in rows if r.get("kind") == "step"])
    summary = read_run_json(run_dir / "summary.json")
    if summary is not None:
        record["bad_images"] = summary.get("bad_images", {}).get("skipped", 0)
    return record


LR_POINTS = 300  # logged steps kept for the report's learning-rate plot
HISTORY_KEYS: tuple[str, ...] = ("epoch", "train_loss", "val_loss", "ema_val_loss", "val_top1", "ema_val_top1")
HISTORY_KEYS += ("val_auroc", "ema_val_auroc", "train_eval_top1", "train_eval_auroc", "train_eval_loss")
HISTORY_KEYS += ("attn_entropy", "attn_collapsed", "attn_uniform")


def dynamics_summary(steps: list[dict[str, Any]]) -> dict[str, float]:
    """Over the logged updates: the median ratio of attention to MLP gradient norms and the largest update."""
    ratios = sorted(r["attn_mlp_grad_ratio"] for r in steps if _finite(r.get("attn_mlp_grad_ratio")))
    updates = [r["max_update_ratio"] for r in steps if _finite(r.get("max_update_ratio"))]
    out: dict[str, float] = {}
    if ratios:
        out["attn_mlp_grad_ratio"] = ratios[len(ratios) // 2]
    if updates:
        out["max_update_ratio"] = max(updates)
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and value == value and abs(value) != float("inf")


def weights_sha256(info: dict[str, Any]) -> str | None:
    """The checksum the checkpoint recorded for its weights file: it changes whenever `best` is rewritten."""
    path = Path(info["checkpoint"]) / CHECKSUMS
    return json.loads(path.read_text()).get(info["weights"]) if path.exists() else None


def save_temperature(run_dir: Path, temperature: float, info: dict[str, Any], data: str) -> None:
    record = {
        "temperature": temperature,
        "checkpoint": info["checkpoint"],
        "weights": info["weights"],
        "sha256": weights_sha256(info),
        "data": data,
    }
    write_atomically(run_dir / TEMPERATURE_FILE, json.dumps(record, indent=2))


def _fitted_for(path: Path, info: dict[str, Any]) -> dict[str, Any] | None:
    """A record `vitkit evaluate` fitted for exactly these weights (same checkpoint, file and checksum); one
    fitted for a checkpoint rewritten since, e.g. by resumed training, does not count."""
    record = read_run_json(path)
    if record is None:
        return None
    fitted_for = (record.get("checkpoint"), record.get("weights"), record.get("sha256"))
    same = fitted_for == (info["checkpoint"], info["weights"], weights_sha256(info))
    return dict(record) if same else None


def saved_temperature(run_dir: Path, info: dict[str, Any]) -> float | None:
    """The temperature fitted for exactly these weights, if `vitkit evaluate` fitted one."""
    record = _fitted_for(run_dir / TEMPERATURE_FILE, info)
    return float(record["temperature"]) if record else None


def save_thresholds(run_dir: Path, fitted: dict[str, Any], info: dict[str, Any], data: str) -> None:
    record = {
        **fitted,
        "fitted_on": data,
        "checkpoint": info["checkpoint"],
        "weights": info["weights"],
        "sha256": weights_sha256(info),
    }
    write_atomically(run_dir / THRESHOLDS_FILE, json.dumps(record, indent=2))


def saved_thresholds(run_dir: Path, info: dict[str, Any]) -> dict[str, Any] | None:
    """The operating thresholds fitted on the run's validation split for exactly these weights."""
    return _fitted_for(run_dir / THRESHOLDS_FILE, info)


DECISION_SPECIFICITY = "0.9"  # prediction flags a finding at the threshold reaching 90% specificity on validation


def decision_thresholds(run_dir: Path, info: dict[str, Any]) -> list[float | None] | None:
    """Per-label thresholds `vitkit predict`, exports and the server decide with (None where none was fitted)."""
    record = saved_thresholds(run_dir, info)
    return list(record["thresholds"][DECISION_SPECIFICITY]) if record else None
