"""`vitkit export`: a run's model as a file a production stack runs, with everything a server needs beside it.

OUT/model.onnx (or model.pt2), optionally OUT/model.int8.onnx, and OUT/model.json: class names, input size,
normalisation, resize rule, the fitted temperature, a model version, the weights' SHA-256, the recipe, and the
parity figures that were checked before the files were kept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from vitkit import __version__
from vitkit.checkpoint_files import sha256
from vitkit.deploy import require_deploy
from vitkit.deploy.formats import load_runtime, run_batched, write_onnx, write_pt2
from vitkit.deploy.parity import compare, require_parity, top1
from vitkit.deploy.pixels import eager_logits, first_images, pixel_batches, run_splits, stacked
from vitkit.errors import VitkitError
from vitkit.evaluate.run import saved_temperature
from vitkit.models.run_model import load_run_or_checkpoint
from vitkit.run_folder import EXPORT_MARKER, check_export_folder

MODEL_JSON = "model.json"


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
    return path.parent.parent if (path / "meta.json").exists() and not (path / "recipe.yaml").exists() else path


def export_run(path: Path, out: Path, options: ExportOptions | None = None) -> dict[str, Any]:
    """Export the model of a run folder or checkpoint into `out`; returns the model.json document."""
    o = options or ExportOptions()
    if o.format == "onnx" or o.int8:
        require_deploy()
    if o.int8 and o.format != "onnx":
        raise VitkitError("--int8 quantizes the ONNX model through ONNX Runtime: use it with --format onnx.")
    check_export_folder(out)
    model, recipe, info = load_run_or_checkpoint(path)
    train_images, val_images = run_splits(recipe)
    out.mkdir(parents=True, exist_ok=True)
    (out / EXPORT_MARKER).write_text(json.dumps({"run": str(path), "checkpoint": info["checkpoint"]}))
    file = out / f"model.{o.format}"
    written = [file]
    try:
        opset = _write(model, file, o.format, recipe.model.img_size)
        pixels, _ = stacked(pixel_batches(recipe, first_images(val_images, o.parity_images)))
        parity = compare(eager_logits(model, pixels), run_batched(load_runtime(file), pixels))
        require_parity(parity, f"the {o.format} export")
        doc = _metadata(path, info, recipe, o, file, opset)
        doc["parity"] = parity.to_dict()
        if o.int8:
            int8_file = out / "model.int8.onnx"
            written.append(int8_file)
            doc["int8"] = _int8(file, int8_file, o, recipe, train_images, val_images)
    except BaseException:
        for f in written:  # an export that failed its checks is not left where it could be served
            f.unlink(missing_ok=True)
        raise
    (out / MODEL_JSON).write_text(json.dumps(doc, indent=1))
    return doc


def _write(model: Any, file: Path, fmt: str, img_size: int) -> int | None:
    if fmt == "onnx":
        return write_onnx(model, file, img_size)
    write_pt2(model, file, img_size)
    return None


def _int8(fp32: Path, target: Path, o: ExportOptions, recipe: Any, train: Any, val: Any) -> dict[str, Any]:
    from vitkit.deploy.quantize import quantize_int8

    assert o.int8 is not None
    calibration, _ = stacked(pixel_batches(recipe, first_images(train, o.calibration)))
    report = quantize_int8(fp32, target, o.int8, calibration, stacked(pixel_batches(recipe, val)), o.max_int8_drop)
    return {"file": target.name, "sha256": sha256(target), "calibration_images": len(calibration), **report.to_dict()}


def _metadata(path: Path, info: dict[str, Any], recipe: Any, o: ExportOptions, file: Path, opset: int | None) -> dict:
    run_dir = run_folder_of(path)
    mean, std = recipe.data.normalization()
    checkpoint = Path(info["checkpoint"]) / info["weights"]
    return {
        "vitkit": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "version": o.version,
        "format": o.format,
        "file": file.name,
        "file_sha256": sha256(file),
        "onnx_opset": opset,
        "input": {"name": "pixels", "layout": "NCHW", "dtype": "float32", "batch": "dynamic"},
        "output": {"name": "logits", "activation": "softmax(logits / temperature)"},
        "classes": info.get("classes") or [str(i) for i in range(int(info["num_classes"]))],
        "img_size": recipe.model.img_size,
        "mean": list(mean),
        "std": list(std),
        "interpolation": recipe.augment.interpolation,
        "crop_pct": recipe.augment.crop_pct,
        "temperature": saved_temperature(run_dir, info),
        "model": recipe.model.name,
        "weights": {"checkpoint": info["checkpoint"], "file": info["weights"], "sha256": sha256(checkpoint)},
        "recipe": recipe.model_dump(mode="json"),
    }


def read_model_json(folder: Path) -> dict[str, Any]:
    path = folder / MODEL_JSON
    if not path.exists():
        raise VitkitError(f"{folder} has no {MODEL_JSON}: it is not a vitkit export. Export a run with vitkit export.")
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def validation_top1(folder: Path, file: str | None = None) -> float:
    """Top-1 of an export on its run's validation images (what `vitkit bench` reports)."""
    from vitkit.config.schema import Recipe

    doc = read_model_json(folder)
    recipe = Recipe.model_validate(doc["recipe"])
    _, val = run_splits(recipe)
    pixels, labels = stacked(pixel_batches(recipe, val))
    return top1(run_batched(load_runtime(folder / (file or doc["file"])), pixels), labels)
