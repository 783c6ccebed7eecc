"""Freeze advisor: which fine-tuning strategy suits a labelled-set size and a domain similarity, and why.

The decision table (docs/finetune.md) follows the usual transfer-learning reasoning: the less labelled data and
the closer the new domain is to the pretraining data, the fewer parameters should move (a linear probe reuses
features that already fit; LoRA moves a low-rank slice); the more data and the more distant the domain, the
more of the network must adapt (full fine-tuning, with layer-wise LR decay keeping the generic early layers
close to their pretrained values, less so the more distant the domain).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from vitkit.config.schema import FinetuneConfig
from vitkit.errors import VitkitError

Similarity = Literal["high", "medium", "low"]
SMALL_DATA = 1_000  # labelled images below which a few hundred thousand trainable parameters already overfit
LARGE_DATA = 20_000  # labelled images from which full fine-tuning no longer overfits a ViT-S/B in practice


@dataclass
class FreezeAdvice:
    strategy: str
    settings: dict[str, object]
    reasons: list[str]
    size_class: str
    trainable: int | None = None
    total: int | None = None
    notes: list[str] = field(default_factory=list)

    def overrides(self) -> list[str]:
        return [f"finetune.{k}={_yaml(v)}" for k, v in self.settings.items()]


def _yaml(value: object) -> str:
    return "[" + ",".join(map(str, value)) + "]" if isinstance(value, list) else str(value)


# (size class, similarity) -> (strategy, settings, reason)
DECISION_TABLE: dict[tuple[str, str], tuple[str, dict[str, object], str]] = {
    ("small", "high"): (
        "head",
        {},
        "few labels and a close domain: pretrained features already separate the "
        "classes; a linear probe cannot overfit them",
    ),
    ("small", "medium"): (
        "lora",
        {"lora_rank": 8, "lora_targets": ["q", "v"]},
        "few labels, features need some adapting: LoRA on q and v moves ~1% of the weights",
    ),
    ("small", "low"): (
        "lora",
        {"lora_rank": 16, "lora_targets": ["q", "v", "fc1", "fc2"]},
        "few labels but a distant domain: adapt attention and MLP with low rank instead of freeing all weights",
    ),
    ("medium", "high"): (
        "lora",
        {"lora_rank": 8, "lora_targets": ["q", "v"]},
        "a close domain needs little change; LoRA matches full fine-tuning there at a fraction of the memory",
    ),
    ("medium", "medium"): (
        "partial",
        {},
        "enough labels to retrain the upper blocks; the generic lower blocks stay frozen",
    ),
    ("medium", "low"): (
        "full",
        {"layer_decay": 0.65},
        "a distant domain needs every layer to adapt; strong layer "
        "decay protects the early layers from the few thousand labels",
    ),
    ("large", "high"): (
        "full",
        {"layer_decay": 0.65},
        "plenty of labels: full fine-tuning is best; the close "
        "domain lets the early layers stay near their pretrained values",
    ),
    ("large", "medium"): (
        "full",
        {"layer_decay": 0.75},
        "plenty of labels: full fine-tuning with the usual layer decay (BEiT/MAE use 0.65-0.75)",
    ),
    ("large", "low"): (
        "full",
        {"layer_decay": 0.85},
        "plenty of labels and a distant domain: full fine-tuning "
        "with weak layer decay so the early layers can move too",
    ),
}


def size_class(train_size: int) -> str:
    if train_size < SMALL_DATA:
        return "small"
    return "medium" if train_size < LARGE_DATA else "large"


def advise_freeze(train_size: int, similarity: str, model: str | None = None, num_classes: int = 10) -> FreezeAdvice:
    """The recommended strategy with its settings and reasons; with `model`, also its trainable parameters."""
    if train_size < 1:
        raise VitkitError(f"--train-size {train_size}: give the number of labelled training images (at least 1).")
    if similarity not in ("high", "medium", "low"):
        raise VitkitError(f"--similarity {similarity}: use high, medium or low.")
    if num_classes < 2:
        raise VitkitError(f"--num-classes {num_classes}: a classifier has at least 2 classes.")
    size = size_class(train_size)
    strategy, settings, reason = DECISION_TABLE[(size, similarity)]
    reasons = [
        f"{train_size:,} labelled images is {size} data (small < {SMALL_DATA:,} <= medium < {LARGE_DATA:,} <= large)",
        reason,
    ]
    advice = FreezeAdvice(strategy, dict(settings), reasons, size)
    if model is not None:
        _count_for_model(advice, model, num_classes)
    return advice


def _count_for_model(advice: FreezeAdvice, name: str, num_classes: int) -> None:
    """Trainable parameters of the advice on `name`, built on the meta device (no memory, no download)."""
    import timm

    from vitkit.models.finetune import apply_strategy, count_parameters, layer_ids

    if not timm.is_model(name):
        raise VitkitError(f"--model {name}: not a timm model name (e.g. vit_small_patch16_224).")
    with torch.device("meta"):
        net = timm.create_model(name, num_classes=num_classes)
    if advice.strategy == "partial":
        blocks = max(layer_ids(net).values()) - 1
        advice.settings["freeze_blocks"] = blocks // 2 + 1
        advice.notes.append(f"{name} has {blocks} blocks: freeze the lower {blocks // 2 + 1}")
    cfg = FinetuneConfig(strategy=advice.strategy, pretrained=name, **advice.settings)
    advice.trainable, advice.total = count_parameters(apply_strategy(net, cfg))
