"""Linear probe on cached features: the frozen backbone's pooled features, and the head that reads them.

With `finetune.strategy=head` the backbone never changes, so with `cache_features` its pooled features are
computed once (eval transform, no augmentation) and every epoch afterwards costs only the head's matmul
(`train.tasks.CachedHead`); checkpoints hold the whole model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

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
