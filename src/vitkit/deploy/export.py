"""`vitkit export`: a run's model as a file a production stack runs, with everything a server needs beside it.

OUT/model.onnx (or model.pt2), optionally OUT/model.int8.onnx, and OUT/model.json: class names, input size,
normalisation, resize rule, the fitted temperature, a model version, the weights' SHA-256, the recipe, and the
parity figures that were checked before the files were kept.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from vitkit import __version__
from vitkit.checkpoint_files import sha256
from vitkit.data.sources import ImageSet, recipe_splits
from vitkit.deploy import require_deploy
from vitkit.deploy.card import CARD, LOAD_SNIPPETS, run_card
from vitkit.deploy.formats import load_runtime, run_batched, write_onnx, write_pt2
from vitkit.deploy.parity import compare, require_parity
from vitkit.deploy.pixels import eager_logits, first_images, pixel_batches, stacked
from vitkit.errors import VitkitError
from vitkit.evaluate.run import saved_temperature, weights_sha256
from vitkit.models.run_model import load_run_or_checkpoint
from vitkit.run_folder import EXPORT_MARKER, check_export_folder, check_run_folder, read_run_json

MODEL_JSON = "model.json"
MONITOR_REFERENCE_IMAGES = 512  # validation images whose statistics a server compares its traffic with
MONITOR_MAX_ABS_DIFF = 1e-3  # embeddings and entropies of the exported monitor against eager PyTorch


@dataclass
class ExportOptions:
    format: Literal["onnx", "pt2"] = "onnx"
    int8: Literal["dynamic", "static"] | None = None
    calibration: int = 256  # training images that calibrate static INT8 (and rank layers for the fallback)
    max_int8_drop: float = 0.005  # top-1, as a fraction: 0.5 points
    version: str = "1.0.0"
    parity_images: int = 64


def run_folder_of(path: Path) -> Path:
    """The run folder of a run folder or of one of its checkpoints (RUN/checkpoints/NAME)."""
    if (path / "meta.json").exists() and not (path / "recipe.yaml").exists():
        return path.parent.parent
    check_run_folder(path)
    return path


def export_run(path: Path, out: Path, options: ExportOptions | None = None) -> dict[str, Any]:
    """Export the model of a run folder or checkpoint into `out`; returns the model.json document.

    The files are written into a staging folder inside `out` and moved into place only once every check passed,
    so a failed export leaves an earlier export in `out` as it was.
    """
    o = options or ExportOptions()
    if o.format == "onnx" or o.int8:
        require_deploy()
    if o.int8 and o.format != "onnx":
        raise VitkitError("--int8 quantizes the ONNX model through ONNX Runtime: use it with --format onnx.")
    check_export_folder(out)
    model, recipe, info = load_run_or_checkpoint(path)
    splits = recipe_splits(recipe)
    train_images, val_images = splits.train, splits.val
    out.mkdir(parents=True, exist_ok=True)
    (out / EXPORT_MARKER).write_text(json.dumps({"run": str(path), "checkpoint": info["checkpoint"]}))
    stage = Path(tempfile.mkdtemp(prefix=".export-", dir=out))  # vitkit's own: removed whatever happens
    try:
        file = stage / f"model.{o.format}"
        opset = _write(model, file, o.format, recipe.model.img_size)
        pixels, _ = stacked(pixel_batches(recipe, first_images(val_images, o.parity_images)))
        parity = compare(eager_logits(model, pixels), run_batched(load_runtime(file), pixels))
        require_parity(parity, f"the {o.format} export")
        doc = _metadata(path, info, recipe, o, file, opset)
        doc["parity"] = parity.to_dict()
        if o.int8:
            calibration = first_images(train_images, o.calibration)
            doc["int8"] = add_int8(file, stage / "model.int8.onnx", o.int8, recipe, calibration, val_images, o)
        doc["monitor"] = add_monitor(model, stage, o.format, recipe, val_images, doc["temperature"])
        (stage / CARD).write_text(run_card(recipe, info, splits, o.format, LOAD_SNIPPETS[o.format], _checks(doc)))
        for staged in stage.iterdir():
            os.replace(staged, out / staged.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    (out / MODEL_JSON).write_text(json.dumps(doc, indent=1))
    return doc


def add_monitor(model: Any, stage: Path, fmt: str, recipe: Any, val: ImageSet, temperature: float | None) -> dict:
    """reference.safetensors (validation statistics) and the monitor model, checked against eager PyTorch; the
    model.json `monitor` record. A model whose monitor does not export is still exported, monitored on confidence
    only, and the record says why."""
    from safetensors.numpy import save_file

    from vitkit.deploy.monitoring import REFERENCE, reference_statistics, write_monitor

    pixels, _ = stacked(pixel_batches(recipe, first_images(val, MONITOR_REFERENCE_IMAGES)))
    stats = reference_statistics(model, pixels, temperature)
    save_file(stats, str(stage / REFERENCE))
    record: dict[str, Any] = {"reference": REFERENCE, "images": len(pixels), "file": None}
    file = stage / f"monitor.{fmt}"
    try:
        write_monitor(model, file, recipe.model.img_size)
        embedding, entropy = load_runtime(file).outputs(pixels[:64])  # type: ignore[attr-defined]
    except Exception as exc:  # torch.export/ONNX raise many types; the model itself is exported regardless
        file.unlink(missing_ok=True)
        return {**record, "skipped": f"the monitor model did not export ({type(exc).__name__}): confidence only"}
    diff = max(
        float(np.abs(embedding - stats["embedding"][:64]).max(initial=0)),
        float(np.abs(entropy - stats["attention_entropy"][:64]).max(initial=0)),
    )
    if diff > MONITOR_MAX_ABS_DIFF:
        file.unlink()
        return {**record, "skipped": f"the monitor model differs from eager PyTorch by {diff:.2g}: confidence only"}
    return {**record, "file": file.name, "sha256": sha256(file), "max_abs_diff": diff}


def _checks(doc: dict[str, Any]) -> list[str]:
    p = doc["parity"]
    lines = [
        f"{doc['format']} against the run, fp32, on {p['images']} validation images: max |logit difference| "
        f"{p['max_abs_diff']:.2e} (limit {p['limit_max_abs_diff']:g}), top-1 agreement {p['top1_agreement']:.2%}."
    ]
    if q := doc.get("int8"):
        lines.append(
            f"{q['file']} ({q['mode']} INT8): validation top-1 {q['int8_top1']:.2%} against fp32 {q['fp32_top1']:.2%} "
            f"on {q['images']} images, top-1 agreement {q['top1_agreement']:.2%}."
        )
    return lines


def _write(model: Any, file: Path, fmt: str, img_size: int) -> int | None:
    if fmt == "onnx":
        return write_onnx(model, file, img_size)
    write_pt2(model, file, img_size)
    return None


def add_int8(
    fp32: Path, target: Path, mode: str, recipe: Any, calibration: ImageSet, val: ImageSet, o: ExportOptions
) -> dict[str, Any]:
    """Quantize the fp32 ONNX file `fp32` into `target` (quantize.quantize_int8); the model.json `int8` record."""
    from vitkit.deploy.quantize import quantize_int8

    pixels, _ = stacked(pixel_batches(recipe, calibration))
    report = quantize_int8(fp32, target, mode, pixels, stacked(pixel_batches(recipe, val)), o.max_int8_drop)
    return {"file": target.name, "sha256": sha256(target), "calibration_images": len(pixels), **report.to_dict()}


def _metadata(path: Path, info: dict[str, Any], recipe: Any, o: ExportOptions, file: Path, opset: int | None) -> dict:
    run_dir = run_folder_of(path)
    mean, std = recipe.data.normalization()
    return {
        "vitkit": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "version": o.version,
        "format": o.format,
        "file": file.name,
        "file_sha256": sha256(file),
        "onnx_opset": opset,
        "input": {"name": "pixels", "layout": "NCHW", "dtype": "float32", "batch": "dynamic"},
        "output": {"name": "logits", "activation": activation(recipe)},
        "task": recipe.train.task,
        "thresholds": export_thresholds(run_dir, info, recipe),
        "classes": info.get("classes") or [str(i) for i in range(int(info["num_classes"]))],
        "img_size": recipe.model.img_size,
        "mean": list(mean),
        "std": list(std),
        "interpolation": recipe.augment.interpolation,
        "crop_pct": recipe.augment.crop_pct,
        "temperature": saved_temperature(run_dir, info),
        "model": recipe.model.name,
        "weights": {"checkpoint": info["checkpoint"], "file": info["weights"], "sha256": weights_sha256(info)},
        "recipe": recipe.model_dump(mode="json"),
    }


def activation(recipe: Any) -> str:
    return "sigmoid(logits) per label" if recipe.train.task == "multilabel" else "softmax(logits / temperature)"


def export_thresholds(run_dir: Path, info: dict[str, Any], recipe: Any) -> dict[str, Any] | None:
    """A multi-label model's decision thresholds (90% specificity on its validation split), when fitted."""
    from vitkit.evaluate.run import DECISION_SPECIFICITY, decision_thresholds

    values = decision_thresholds(run_dir, info) if recipe.train.task == "multilabel" else None
    return {"specificity": float(DECISION_SPECIFICITY), "values": values} if values else None


EXPORT_AGAIN = "Export the run again into a new folder: vitkit export RUN --out NEW_FOLDER."
MODEL_JSON_KEYS = ("file", "format", "classes", "recipe")  # what loading an export reads; the rest is optional


def read_model_json(folder: Path) -> dict[str, Any]:
    path = folder / MODEL_JSON
    if not path.exists():
        raise VitkitError(f"{folder} has no {MODEL_JSON}: it is not a vitkit export. Export a run with vitkit export.")
    doc = read_run_json(path, EXPORT_AGAIN) or {}
    missing = [key for key in MODEL_JSON_KEYS if key not in doc]
    if missing:
        raise VitkitError(f"{path} is damaged (no {', '.join(missing)}). {EXPORT_AGAIN}")
    return doc


def check_exported_file(folder: Path, doc: dict[str, Any]) -> None:
    """Raise when the model file is not the one the export wrote (its SHA-256 differs from model.json's): asked
    where a runtime cannot load it, to tell a damaged or replaced file from an unsupported one."""
    file = folder / doc["file"]
    if not file.is_file():
        raise VitkitError(f"{file} is missing: {MODEL_JSON} names it. {EXPORT_AGAIN}")
    if doc.get("file_sha256") and sha256(file) != doc["file_sha256"]:
        raise VitkitError(
            f"{file} is not the file this export wrote (its SHA-256 differs from {MODEL_JSON}'s): it was damaged or "
            f"replaced. {EXPORT_AGAIN}"
        )
