"""Run a model over a loader and collect logits and labels (what training evaluates each epoch), and classify
image files with a run's model."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from vitkit.data.pipeline import normalize_batch

# A distilled DeiT returns the average of its class-token and distillation-token heads at inference (as in DeiT);
# each head's own logits are recorded too, under these names.
HEAD_OUTPUTS = {"cls_head": "head", "dist_head": "head_dist"}


@contextmanager
def record_heads(model: nn.Module) -> Iterator[dict[str, list[torch.Tensor]]]:
    """While active, collect the logits of each head of a distilled DeiT (nothing for other models) with forward
    hooks, so the model's own forward (and its output) is unchanged."""
    distilled = next((m for m in model.modules() if hasattr(m, "head_dist") and hasattr(m, "head")), None)
    records: dict[str, list[torch.Tensor]] = {}
    handles = []
    if distilled is not None:
        for key, attribute in HEAD_OUTPUTS.items():
            store = records.setdefault(key, [])

            def hook(_m: nn.Module, _i: Any, out: torch.Tensor, store: list[torch.Tensor] = store) -> None:
                store.append(out.detach().float().cpu())

            handles.append(getattr(distilled, attribute).register_forward_hook(hook))
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def forward_batch(
    model: nn.Module,
    images: torch.Tensor,
    device: torch.device,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Float32 logits on CPU of a uint8 batch: normalised on `device`, under autocast when a dtype is given."""
    x = normalize_batch(images.to(device, non_blocking=True), mean, std)
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        return model(x).float().cpu()


@torch.no_grad()
def predict_outputs(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    autocast_dtype: torch.dtype | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Logits (float32, on CPU) by output: `logits` (what the model returns) and, for a distilled DeiT, `cls_head`
    and `dist_head`; and the labels, for every batch of uint8 images in `loader`."""
    was_training = model.training
    model.eval()
    all_logits, all_labels = [], []
    with record_heads(model) as heads:
        for images, labels in loader:
            all_logits.append(forward_batch(model, images, device, mean, std, autocast_dtype))
            all_labels.append(labels.cpu())
    model.train(was_training)
    outputs = {"logits": torch.cat(all_logits)} | {k: torch.cat(v) for k, v in heads.items() if v}
    return outputs, torch.cat(all_labels)
