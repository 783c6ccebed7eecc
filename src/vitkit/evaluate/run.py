"""Evaluate a trained run: rebuild its model from the run folder, predict on the validation split, run evaluators."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vitkit.config.loader import recipe_from_yaml_file
from vitkit.config.schema import Recipe
from vitkit.data.pipeline import ImageDataset, eval_transform, make_loader, maybe_cache
from vitkit.errors import VitkitError
from vitkit.evaluate.metrics import run_evaluators
from vitkit.evaluate.predict import predict
from vitkit.models.build import build_model
from vitkit.train.checkpoint import load_weights
from vitkit.train.precision import autocast_dtype, resolve_device, resolve_precision


def load_run_model(run_dir: Path, which: str = "best") -> tuple[nn.Module, Recipe, dict[str, Any]]:
    """The model of a run folder, with the better of its raw and EMA weights from the `which` checkpoint."""
    recipe_path, summary_path = run_dir / "recipe.yaml", run_dir / "summary.json"
    if not recipe_path.exists():
        raise VitkitError(f"{run_dir} is not a vitkit run folder (no recipe.yaml). Pass the folder given to --out.")
    recipe = recipe_from_yaml_file(recipe_path)
    folder = run_dir / "checkpoints" / which
    if not folder.exists():
        raise VitkitError(f"{run_dir} has no '{which}' checkpoint yet: has its first epoch finished?")
    meta = json.loads((folder / "meta.json").read_text())
    model = build_model(recipe.model, int(meta["num_classes"]))
    weights = "ema.safetensors" if meta.get("best_source") == "ema" and (folder / "ema.safetensors").exists() else None
    model.load_state_dict(load_weights(folder / (weights or "model.safetensors")))
    info = {"checkpoint": str(folder), "weights": weights or "model.safetensors", **meta}
    if summary_path.exists():
        info["classes"] = json.loads(summary_path.read_text()).get("classes")
    return model.eval(), recipe, info


def evaluate_model(model: nn.Module, recipe: Recipe, images: Any) -> dict[str, float]:
    """Accuracy and calibration of `model` on an `ImageSet`, with the recipe's eval transform."""
    device = resolve_device(recipe.train.device)
    precision = resolve_precision(recipe.train.precision, device)
    images, _ = maybe_cache(images, recipe.data, recipe.model.img_size)
    dataset = ImageDataset(images, eval_transform(recipe.augment, recipe.model.img_size))
    loader = make_loader(dataset, recipe.train.batch_size)
    model = model.to(device)
    with torch.inference_mode():
        logits, labels = predict(model, loader, device, recipe.data.mean, recipe.data.std, autocast_dtype(precision))
    return {"images": float(len(labels)), **run_evaluators(logits, labels)}
