"""Linear probe on cached features: the frozen backbone runs once per image, then only the head trains.

With `finetune.strategy=head` the backbone never changes, so with `cache_features` its pooled features are
computed once (eval transform, no augmentation) and every epoch afterwards costs only the head's matmul. The
loss, targets, optimizer and schedule are the ones the image loop uses; checkpoints hold the whole model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from vitkit.data.pipeline import smooth_targets
from vitkit.evaluate.metrics import training_metrics
from vitkit.evaluate.predict import predict_outputs


def _two_heads(model: nn.Module) -> bool:
    """A distilled DeiT: a class head on the class token and a distillation head on the distillation token."""
    return isinstance(model.get_classifier(), tuple)  # type: ignore[operator]


class PooledFeatures(nn.Module):
    """The backbone up to the classifier input (timm's `forward_head(pre_logits=True)`); for a distilled DeiT, the
    class and distillation tokens side by side (N, 2, D), since each of its two heads reads its own token."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(x)  # type: ignore[operator]
        if _two_heads(self.model):
            return features[:, :2]
        return self.model.forward_head(features, pre_logits=True)  # type: ignore[operator]


def extract_features(
    model: nn.Module, loader: Any, device: torch.device, norm: tuple[Any, Any], amp: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features (float32) and labels of every image in `loader`, with the backbone in eval mode; both are
    returned on `device`, where the head trains on them every epoch."""
    with torch.inference_mode():
        outputs, labels = predict_outputs(PooledFeatures(model), loader, device, *norm, amp)
        feats = outputs["logits"]  # the pooled features: what PooledFeatures returns
    return feats.to(device).clone(), labels.to(device).clone()  # clone: leave inference mode


def classifier_forward(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Features -> logits through the model's own head dropout and classifier."""
    head_drop = getattr(model, "head_drop", nn.Identity())
    classifier = model.get_classifier()  # type: ignore[operator]
    if _two_heads(model):  # the mean of the two heads, as a distilled DeiT's own forward_head computes it
        head, head_dist = classifier
        return lambda f: (head(head_drop(f[:, 0])) + head_dist(head_drop(f[:, 1]))) / 2
    return lambda f: classifier(head_drop(f))


def train_head_epoch(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int,
    smoothing: float,
    num_classes: int,
    optimizer: torch.optim.Optimizer,
    on_update: Callable[[], None],
    generator: torch.Generator,
    max_updates: float = float("inf"),
    accumulation_steps: int = 1,
) -> float:
    """One epoch over shuffled cached features (full batches only, like the image loader; at most `max_updates`
    updates of `accumulation_steps` batches each, the gradient averaged over them as the image loop does); the
    mean loss."""
    model.train()
    forward, criterion = classifier_forward(model), SoftTargetCrossEntropy()
    order = torch.randperm(len(labels), generator=generator)
    updates = int(min(len(labels) // batch_size // accumulation_steps, max_updates))
    total = 0.0
    for step in range(updates * accumulation_steps):
        idx = order[step * batch_size : (step + 1) * batch_size]
        loss = criterion(forward(features[idx]), smooth_targets(labels[idx], num_classes, smoothing))
        (loss / accumulation_steps).backward()
        total += float(loss.detach())
        if (step + 1) % accumulation_steps == 0:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            on_update()
    return total / max(updates * accumulation_steps, 1)


def evaluate_head(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        metrics = training_metrics(classifier_forward(model)(features).float().cpu(), labels.cpu())
    return {"val_top1": metrics["accuracy.top1"], "val_loss": metrics["accuracy.nll"]}
