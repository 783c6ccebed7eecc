"""Evaluate a trained run on a split: predict with the recipe's eval transform, then run the evaluators."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vitkit.config.schema import Recipe
from vitkit.data.pipeline import ImageDataset, eval_transform, make_loader, maybe_cache
from vitkit.evaluate.metrics import run_evaluators
from vitkit.evaluate.predict import predict_outputs
from vitkit.models.run_model import load_run_model
from vitkit.train.precision import autocast_dtype, resolve_device, resolve_precision

__all__ = ["evaluate_model", "load_run_model"]


def evaluate_model(model: nn.Module, recipe: Recipe, images: Any) -> dict[str, float]:
    """Accuracy and calibration of `model` on an `ImageSet`, with the recipe's eval transform."""
    device = resolve_device(recipe.train.device)
    precision = resolve_precision(recipe.train.precision, device)
    images, _ = maybe_cache(images, recipe.data, recipe.model.img_size)
    dataset = ImageDataset(images, eval_transform(recipe.augment, recipe.model.img_size))
    loader = make_loader(dataset, recipe.train.batch_size)
    model = model.to(device)
    with torch.inference_mode():
        amp = autocast_dtype(precision)
        outputs, labels = predict_outputs(model, loader, device, *recipe.data.normalization(), amp)
    metrics = {"images": float(len(labels)), **run_evaluators(outputs.pop("logits"), labels)}
    for head, logits in outputs.items():  # a distilled DeiT: each head on its own as well as their average
        metrics |= {f"{head}.{key}": value for key, value in run_evaluators(logits, labels).items()}
    return metrics
