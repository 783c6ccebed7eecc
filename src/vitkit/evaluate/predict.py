"""Run a model over a loader and collect logits and labels (the input of every evaluator)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vitkit.data.pipeline import normalize_batch


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, on CPU) and labels for every batch of uint8 images in `loader`."""
    was_training = model.training
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in loader:
        x = normalize_batch(images.to(device, non_blocking=True), mean, std)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            logits = model(x)
        all_logits.append(logits.float().cpu())
        all_labels.append(labels.cpu())
    model.train(was_training)
    return torch.cat(all_logits), torch.cat(all_labels)
