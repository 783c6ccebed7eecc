"""`vitkit export --format hf|timm`: a run's model as a transformers folder or a timm folder, with a model card.

hf: config.json + model.safetensors (ViTForImageClassification, or DeiTForImageClassificationWithTeacher for a
distilled DeiT) and preprocessor_config.json; loads with `AutoModelForImageClassification` / `AutoImageProcessor`.
timm: timm's `save_for_hf` layout; loads with `timm.create_model("local-dir:DIR", pretrained=True)`.

Before the files are kept, the folder is loaded back the way a user would load it and must give the run's logits
on validation images (fp32, max |difference| <= 1e-5); the preprocessing it describes is compared with vitkit's
evaluation transform on the same images, and both figures go into the model card and the export marker.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkit.data.sources import ImageSet, recipe_splits, to_pil
from vitkit.deploy.card import CARD, LOAD_SNIPPETS, run_card
from vitkit.deploy.hf import processor_config, require_transformers, to_transformers, transformers_spec
from vitkit.deploy.parity import SAME_FRAMEWORK_MAX_ABS_DIFF, Parity, compare, require_parity
from vitkit.deploy.pixels import eager_logits, first_images, pixel_batches, stacked
from vitkit.errors import VitkitError
from vitkit.models.run_model import load_run_or_checkpoint, save_timm_folder
from vitkit.run_folder import EXPORT_MARKER, check_export_folder

PIXEL_MATCH = 1e-5  # normalised pixel values; one grey level is about 0.017
LIBRARY = {"hf": "transformers", "timm": "timm"}


@dataclass
class FolderJob:
    """A model to write into `folder`, with the validation images, pixels and logits it is checked on."""

    model: torch.nn.Module
    recipe: Any
    classes: list[str]
    folder: Path
    images: ImageSet
    pixels: np.ndarray
    reference: np.ndarray


def export_folder(path: Path, out: Path, fmt: str, parity_images: int = 64) -> dict[str, Any]:
    """Write the model of a run (or checkpoint) into `out` as a transformers (`hf`) or timm folder; returns what
    was checked. Files are staged inside `out` and moved into place only when every check passed."""
    if fmt == "hf":
        require_transformers("vitkit export --format hf")
    check_export_folder(out)
    model, recipe, info = load_run_or_checkpoint(path)
    splits = recipe_splits(recipe)
    classes = info.get("classes") or splits.classes
    own = [f"model.{k}={v}" for k, v in (("stem", "conv"), ("mlp", "local")) if getattr(recipe.model, k) == v]
    if own:
        raise VitkitError(
            f"a {LIBRARY[fmt]} folder is rebuilt from that library's own config, which has no place for vitkit's "
            f"convolutional stem or local MLP ({', '.join(own)}). Export it with --format onnx or --format pt2, or "
            "load the run folder with vitkit."
        )
    if fmt == "hf":
        transformers_spec(model, classes)  # refuses an architecture transformers cannot hold before anything is written
    images = first_images(splits.val, parity_images)
    pixels, _ = stacked(pixel_batches(recipe, images))
    reference = eager_logits(model, pixels)
    out.mkdir(parents=True, exist_ok=True)
    (out / EXPORT_MARKER).write_text(json.dumps({"run": str(path), "checkpoint": info["checkpoint"]}))
    stage = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        job = FolderJob(model, recipe, classes, stage, images, pixels, reference)
        checks = _write_transformers(job) if fmt == "hf" else _write_timm(job)
        lines = [c["line"] for c in checks.values()]
        (stage / CARD).write_text(run_card(recipe, info, splits, LIBRARY[fmt], LOAD_SNIPPETS[fmt], lines))
        for staged in stage.iterdir():
            os.replace(staged, out / staged.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    doc = {"run": str(path), "checkpoint": info["checkpoint"], "format": fmt, "checks": checks}
    (out / EXPORT_MARKER).write_text(json.dumps(doc, indent=1))
    return doc


def _logit_check(parity: Parity, what: str) -> dict[str, Any]:
    require_parity(parity, what, "export with --format timm, which any timm model supports.")
    line = (
        f"{what} against the run, fp32, on {parity.images} validation images: max |logit difference| "
        f"{parity.max_abs_diff:.2e} (limit {parity.limit:g}), top-1 agreement {parity.top1_agreement:.2%}."
    )
    return {**parity.to_dict(), "line": line}


def _write_transformers(job: FolderJob) -> dict[str, Any]:
    model, recipe, classes, folder = job.model, job.recipe, job.classes, job.folder
    images, pixels, reference = job.images, job.pixels, job.reference
    transformers = require_transformers("vitkit export --format hf")
    hf_model = to_transformers(model, classes)
    if recipe.train.task == "multilabel":  # transformers then applies BCE with logits, and users a sigmoid
        hf_model.config.problem_type = "multi_label_classification"
    hf_model.save_pretrained(str(folder))
    mean, std = recipe.data.normalization()
    spec = transformers_spec(model, classes)
    config = processor_config(
        spec.model_type, recipe.model.img_size, recipe.augment.crop_pct, recipe.augment.interpolation, mean, std
    )
    (folder / "preprocessor_config.json").write_text(json.dumps(config, indent=1))
    loaded = transformers.AutoModelForImageClassification.from_pretrained(str(folder)).eval()
    with torch.inference_mode():
        logits = loaded(pixel_values=torch.from_numpy(pixels)).logits.float().numpy()
    checks = {"logits": _logit_check(compare(reference, logits, SAME_FRAMEWORK_MAX_ABS_DIFF), "transformers")}
    checks["pixels"] = processor_parity(folder, images, pixels)
    return checks


def processor_parity(folder: Path, images: ImageSet, pixels: np.ndarray) -> dict[str, Any]:
    """How far AutoImageProcessor's pixel_values are from vitkit's evaluation pixels, per processor backend."""
    from transformers import AutoImageProcessor

    pil = [to_pil(item) for item in images.items]
    out: dict[str, Any] = {}
    for backend in ("pil", "torchvision"):
        processor = AutoImageProcessor.from_pretrained(str(folder), backend=backend)
        theirs = processor(images=pil, return_tensors="np")["pixel_values"]
        per_image = np.abs(theirs - pixels).reshape(len(pil), -1).max(axis=1)
        out[backend] = {
            "images": len(pil),
            "identical": int((per_image <= PIXEL_MATCH).sum()),
            "max_abs_diff": float(per_image.max()) if len(pil) else 0.0,
        }
    p, t = out["pil"], out["torchvision"]
    out["line"] = (
        f"AutoImageProcessor(backend='pil') pixel_values equal vitkit's evaluation pixels on {p['identical']} of "
        f"{p['images']} validation images (max |difference| {p['max_abs_diff']:.2e})"
        + (
            "; the others are cropped one pixel apart, because transformers rounds a centre crop's offset down and "
            "torchvision to the nearest pixel"
            if p["identical"] < p["images"]
            else ""
        )
        + f". The default torchvision backend resizes tensors: max |difference| {t['max_abs_diff']:.2e} "
        "(one grey level is about 1.7e-02)."
    )
    return out


def _write_timm(job: FolderJob) -> dict[str, Any]:
    model, recipe, classes, folder = job.model, job.recipe, job.classes, job.folder
    images, pixels, reference = job.images, job.pixels, job.reference
    import timm

    save_timm_folder(model, recipe, classes, folder)
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    logits = eager_logits(loaded, pixels)
    checks = {"logits": _logit_check(compare(reference, logits, SAME_FRAMEWORK_MAX_ABS_DIFF), "timm")}
    config = timm.data.resolve_data_config({}, model=loaded)
    transform = timm.data.create_transform(**config, is_training=False)
    theirs = np.stack([transform(to_pil(item)).numpy() for item in images.items])
    diff = float(np.abs(theirs - pixels).max()) if len(theirs) else 0.0
    checks["pixels"] = {
        "images": len(theirs),
        "max_abs_diff": diff,
        "line": f"timm's transform from the folder's config (resolve_data_config + create_transform) against vitkit's "
        f"evaluation pixels on {len(theirs)} validation images: max |difference| {diff:.2e}.",
    }
    return checks
