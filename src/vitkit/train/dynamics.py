"""Training dynamics of a ViT, watched beside the loop: where the gradients go and how far each update moves.

At logging steps (train.log_every) the monitor reads, per block, the gradient norm of the attention and of the
MLP parameters just before the update, and the relative size of the update (||w_after - w_before|| / ||w_before||)
just after it. At each validation, `attention_health` measures every layer's attention entropy and head
diversity on a few validation images, so a collapse (entropy near zero, heads alike) or attention that stays
uniform is seen while the run trains, not after it. Pure functions here; the loop logs their values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

PARTS = ("attn", "mlp")
UPDATE_RATIO_HIGH = 1e-2  # an update moving a block's weights by more than 1% is large (Karpathy's ~1e-3 rule)


def _blocks(model: nn.Module) -> list[nn.Module]:
    base: Any = getattr(model, "base_model", model)  # under PEFT the timm model sits below
    base = getattr(base, "model", base)
    return list(getattr(base, "blocks", []))


def _part_params(block: nn.Module, part: str) -> list[torch.Tensor]:
    module = getattr(block, part, None)
    return [p for p in module.parameters() if p.requires_grad] if isinstance(module, nn.Module) else []


def block_grad_norms(model: nn.Module) -> dict[str, list[float]]:
    """Per block, the L2 norm of the gradients of its attention and of its MLP (NaN where nothing trains)."""
    out: dict[str, list[float]] = {part: [] for part in PARTS}
    for block in _blocks(model):
        for part in PARTS:
            grads = [p.grad.detach().float() for p in _part_params(block, part) if p.grad is not None]
            out[part].append(
                float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))) if grads else math.nan
            )
    return out


def snapshot(model: nn.Module) -> dict[str, list[list[torch.Tensor]]]:
    """Copies of the trainable attention and MLP weights of every block (taken just before an update)."""
    return {
        part: [[p.detach().clone() for p in _part_params(block, part)] for block in _blocks(model)] for part in PARTS
    }


def update_ratios(model: nn.Module, before: dict[str, list[list[torch.Tensor]]]) -> dict[str, list[float]]:
    """Per block, ||w_after - w_before|| / ||w_before|| of its attention and its MLP weights."""
    out: dict[str, list[float]] = {part: [] for part in PARTS}
    for i, block in enumerate(_blocks(model)):
        for part in PARTS:
            after, old = _part_params(block, part), before[part][i]
            if not old:
                out[part].append(math.nan)
                continue
            moved = sum(float((a.detach().float() - b.float()).pow(2).sum()) for a, b in zip(after, old, strict=True))
            size = sum(float(b.float().pow(2).sum()) for b in old)
            out[part].append(math.sqrt(moved / size) if size > 0 else math.nan)
    return out


def mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


@dataclass
class DynamicsMonitor:
    """Asked by the step at each update whether this one is watched (`due`, set by the loop at logging steps);
    keeps the last readings for the logger."""

    due: bool = False
    grads: dict[str, list[float]] = field(default_factory=dict)
    ratios: dict[str, list[float]] = field(default_factory=dict)
    _before: dict[str, list[list[torch.Tensor]]] = field(default_factory=dict, repr=False)

    def before_update(self, model: nn.Module) -> None:
        self.grads = block_grad_norms(model)
        self._before = snapshot(model)

    def after_update(self, model: nn.Module) -> None:
        self.ratios = update_ratios(model, self._before)
        self._before = {}

    def record(self) -> dict[str, Any]:
        """The readings for metrics.jsonl: per-block lists and the summaries the progress line and report use."""
        if not self.grads:
            return {}
        out: dict[str, Any] = {f"grad_norm_{p}": self.grads[p] for p in PARTS}
        out |= {f"update_ratio_{p}": self.ratios.get(p, []) for p in PARTS}
        attn, mlp = mean(self.grads["attn"]), mean(self.grads["mlp"])
        out["attn_mlp_grad_ratio"] = attn / mlp if mlp and math.isfinite(mlp) and mlp > 0 else math.nan
        out["max_update_ratio"] = max(
            (v for p in PARTS for v in self.ratios.get(p, []) if math.isfinite(v)), default=math.nan
        )
        return out


def attention_health(model: nn.Module, runner: Any, images: Any, count: int = 16) -> dict[str, Any]:
    """Each layer's mean attention entropy (as a share of log N, uniform attention = 1) and head diversity on the
    first `count` images, and the layers that collapsed (low entropy, heads alike) or attend uniformly."""
    import numpy as np

    from vitkit.evaluate.attention import (
        COLLAPSE_DIVERSITY,
        COLLAPSE_ENTROPY_SHARE,
        UNIFORM_SHARE,
        attention_entropy,
        attention_modules,
        capture_attention,
        head_diversity,
    )

    if not attention_modules(model) or not len(images):
        return {}
    pixels, _ = next(iter(runner.batches(images.subset(np.arange(min(count, len(images)))))))
    was_training = model.training
    with capture_attention(model) as maps:
        runner.logits(pixels)
    model.train(was_training)
    uniform = math.log(maps[0].shape[-1])
    entropy = [round(float(attention_entropy(a).mean()) / uniform, 5) for a in maps]
    diversity = [round(head_diversity(a), 5) for a in maps]
    return {
        "attn_entropy": entropy,
        "attn_diversity": diversity,
        "attn_collapsed": [
            i
            for i, (h, d) in enumerate(zip(entropy, diversity, strict=True))
            if h < COLLAPSE_ENTROPY_SHARE and d < COLLAPSE_DIVERSITY
        ],
        "attn_uniform": [i for i, h in enumerate(entropy) if h > UNIFORM_SHARE],
    }
