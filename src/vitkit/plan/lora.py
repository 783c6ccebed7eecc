"""The LoRA calculator: what LoRA at a rank costs and saves on a timm model, counted on the model itself.

The model is built on the meta device (no memory, no download) and adapted exactly as training adapts it
(`models.lora.apply_lora`, PEFT with q, k and v split out of timm's fused qkv), so the counts are the run's. For
ViT-B/16 with r=16 on q and v and 101 classes this gives PEFT's image-classification guide's 667,493 trainable
of 86,543,818 parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from safetensors.torch import save

from vitkit.config.schema import FinetuneConfig, LoraTarget
from vitkit.errors import VitkitError
from vitkit.models.finetune import count_parameters
from vitkit.models.lora import TARGET_PATTERNS, apply_lora, model_state_dict

ADAM_STATES = 2  # AdamW keeps two fp32 moments per trainable parameter


@dataclass(frozen=True)
class LoraPlan:
    model: str
    rank: int
    alpha: int
    targets: tuple[str, ...]
    trainable: int  # adapters + head
    total: int  # PEFT's "all params": the model, the adapters and PEFT's trainable copy of the head
    adapter: int  # LoRA A and B matrices alone
    file_bytes: int  # the checkpoint's model.safetensors: adapters + head in fp32, header included
    base: int  # the model without LoRA; full fine-tuning trains all of it
    adapted: int  # the weight matrices the adapters sit on (LoRA pays while `adapter` is well below this)

    @property
    def share(self) -> float:
        return self.trainable / self.total

    @property
    def full_state_bytes(self) -> int:
        """Full fine-tuning: fp32 weights, gradients and two AdamW moments of every parameter."""
        return 4 * (2 + ADAM_STATES) * self.base

    @property
    def state_bytes(self) -> int:
        """LoRA: fp32 weights of everything held (model, adapters, head copy), gradients and moments of what trains."""
        return 4 * self.total + 4 * (1 + ADAM_STATES) * self.trainable

    @property
    def saved_bytes(self) -> int:
        """Weight, gradient and optimizer memory saved against full fine-tuning (activations not included)."""
        return self.full_state_bytes - self.state_bytes


def parse_targets(text: str) -> list[LoraTarget]:
    """'q,v' or 'qkv,proj,fc1,fc2' (qkv: all three of q, k and v) as LoRA targets."""
    names: list[str] = []
    for word in (w.strip() for w in text.split(",") if w.strip()):
        names += ["q", "k", "v"] if word == "qkv" else [word]
    unknown = [n for n in names if n not in TARGET_PATTERNS]
    if unknown or not names:
        raise VitkitError(
            f"--targets {text}: LoRA can target {', '.join(TARGET_PATTERNS)} (or qkv for all three of q, k, v)."
        )
    return list(dict.fromkeys(names))  # type: ignore[arg-type]


def plan_lora(name: str, rank: int, alpha: int, targets: list[LoraTarget], num_classes: int) -> LoraPlan:
    """Count LoRA at `rank` on the timm model `name` with a `num_classes` head."""
    import timm

    if not timm.is_model(name):
        raise VitkitError(f"--model {name}: not a timm model name (e.g. vit_base_patch16_224).")
    if rank < 1 or alpha < 1 or num_classes < 1:
        raise VitkitError("--rank, --alpha and --num-classes need at least 1.")
    with torch.device("meta"):
        net = timm.create_model(name, num_classes=num_classes)
    base = sum(p.numel() for p in net.parameters())
    cfg = FinetuneConfig(strategy="lora", lora_rank=rank, lora_alpha=alpha, lora_targets=targets)
    adapted = apply_lora(net, cfg)
    trainable, total = count_parameters(adapted)
    adapter = sum(p.numel() for n, p in adapted.named_parameters() if "lora_" in n)
    beneath = sum(p.numel() for n, p in adapted.named_parameters() if n.endswith("base_layer.weight"))
    stored = {k: torch.zeros(v.shape, dtype=torch.float32) for k, v in model_state_dict(adapted).items()}
    return LoraPlan(
        model=name,
        rank=rank,
        alpha=alpha,
        targets=tuple(targets),
        trainable=trainable,
        total=total,
        adapter=adapter,
        file_bytes=len(save(stored)),
        base=base,
        adapted=beneath,
    )


def rank_sweep(
    name: str, ranks: list[int], alpha_per_rank: float, targets: list[LoraTarget], num_classes: int
) -> list[LoraPlan]:
    """One plan per rank, alpha scaled with the rank (alpha / r fixed, as the PEFT guide's alpha = r)."""
    return [plan_lora(name, r, max(1, round(alpha_per_rank * r)), targets, num_classes) for r in ranks]
