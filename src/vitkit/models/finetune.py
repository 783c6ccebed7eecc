"""Fine-tuning strategies: which parameters train, and which modules stay in eval mode while the rest trains.

Layer ids follow timm's group matcher, the same ids `timm.optim` uses for layer-wise LR decay: the embeddings
(patch embedding, class/distillation tokens, position embedding) are layer 0, block i is layer i+1 (the final
norm shares the last block's id), and the head is layer L+1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vitkit.config.schema import FinetuneConfig
from vitkit.errors import RecipeError
from vitkit.models.lora import apply_lora, classifier_names


def layer_ids(model: nn.Module) -> dict[str, int]:
    """Layer id of every parameter, as timm assigns them for layer-wise decay (unmatched names go last)."""
    from timm.models import group_parameters

    if not hasattr(model, "group_matcher"):
        raise RecipeError(f"{type(model).__name__} has no timm group_matcher, so it has no layer ids for decay.")
    mapping = group_parameters(model, model.group_matcher(coarse=False), reverse=True)  # type: ignore[operator]
    last = max(mapping.values())
    return {name: mapping.get(name, last) for name, _ in model.named_parameters()}


def apply_strategy(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """Freeze what the strategy keeps fixed (or wrap the model with LoRA); returns the model to train."""
    if cfg.strategy == "lora":
        try:
            return apply_lora(model, cfg)
        except ValueError as exc:
            raise RecipeError(str(exc)) from exc
    if cfg.strategy == "head":
        heads = classifier_names(model)
        trainable = {id(p) for name in heads for p in model.get_submodule(name).parameters()}
        for param in model.parameters():
            param.requires_grad_(id(param) in trainable)
    elif cfg.strategy == "partial":
        ids = layer_ids(model)
        blocks = max(ids.values()) - 1
        if cfg.freeze_blocks >= blocks:
            raise RecipeError(
                f"finetune.freeze_blocks={cfg.freeze_blocks} but the model has {blocks} blocks: freeze at most "
                f"{blocks - 1} (or use finetune.strategy=head to train only the classifier)."
            )
        for name, param in model.named_parameters():
            param.requires_grad_(ids[name] > cfg.freeze_blocks)
    return model


def set_train_mode(model: nn.Module, strategy: str) -> None:
    """`model.train()`, except that for head and partial every fully frozen module stays in eval mode: a frozen
    backbone sees no dropout or drop path and its norm statistics do not drift."""
    model.train()
    if strategy not in ("head", "partial"):
        return
    for module in model.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


@dataclass
class GroupRow:
    group: str
    params: int
    share: float
    lr: float
    weight_decay: float


def parameter_table(model: nn.Module, optimizer: torch.optim.Optimizer, peak_lr: float) -> list[GroupRow]:
    """One row per optimizer group (what it holds, size, share of all parameters, peak LR, weight decay), plus
    a row for the frozen parameters."""
    names = {id(p): _short_name(n) for n, p in model.named_parameters()}
    _, total = count_parameters(model)
    rows = []
    for group in optimizer.param_groups:
        count = sum(p.numel() for p in group["params"])
        lr = peak_lr * group.get("lr_scale", 1.0)
        label = _describe([names[id(p)] for p in group["params"]])
        rows.append(GroupRow(label, count, count / total, lr, group["weight_decay"]))
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    if frozen:
        rows.append(GroupRow("frozen", frozen, frozen / total, 0.0, 0.0))
    return rows


def _short_name(name: str) -> str:
    return name.removeprefix("base_model.model.").replace(".modules_to_save.default", "")


def _describe(names: list[str]) -> str:
    """A short label for a group: LoRA adapters counted, other parameters by module (blocks.3, head, ...)."""
    adapters = [n for n in names if "lora_" in n]
    prefixes: list[str] = [f"LoRA adapters ({len(adapters)} tensors)"] if adapters else []
    for name in names:
        if "lora_" in name:
            continue
        parts = name.split(".")
        prefix = ".".join(parts[:2]) if parts[0] in ("blocks", "layers", "stages") and len(parts) > 2 else parts[0]
        if prefix not in prefixes:
            prefixes.append(prefix)
    if len(prefixes) <= 3:
        return ", ".join(prefixes)
    return f"{prefixes[0]} … {prefixes[-1]} ({len(prefixes)} modules)"
