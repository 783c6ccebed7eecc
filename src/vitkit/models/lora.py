"""LoRA through PEFT on timm ViTs, with q, k and v adaptable separately.

timm computes q, k and v with one fused `qkv` Linear, and PEFT can only adapt a whole Linear (PEFT issue #691),
so "LoRA on q and v" would otherwise mean LoRA on all three. Before PEFT wraps the model, `split_qkv` replaces
each fused `qkv` by `SplitQKV`: three Linears holding the row blocks of the fused weight, whose concatenated
output is the fused output exactly (the same rows, computed separately). PEFT then targets `attn.qkv.q` and
`attn.qkv.v` by name and leaves `attn.qkv.k` untouched. After merging, `fuse_qkv` puts the three back into one
Linear, so a merged model is a plain timm model that `timm.create_model` can load.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from vitkit.config.schema import FinetuneConfig
from vitkit.errors import VitkitError
from vitkit.models.convert import describe_mismatch

# Where each LoRA target sits inside a timm block (names after split_qkv).
TARGET_PATTERNS = {
    "q": r"attn\.qkv\.q",
    "k": r"attn\.qkv\.k",
    "v": r"attn\.qkv\.v",
    "proj": r"attn\.proj",
    "fc1": r"mlp\.fc1",
    "fc2": r"mlp\.fc2",
}


class SplitQKV(nn.Module):
    """A fused qkv Linear as three Linears q, k, v; `forward` returns the same tensor as the fused layer."""

    def __init__(self, qkv: nn.Linear) -> None:
        super().__init__()
        if qkv.out_features % 3:
            raise ValueError(f"a fused qkv Linear has 3 x dim outputs, got {qkv.out_features}")
        dim = qkv.out_features // 3
        has_bias = qkv.bias is not None
        factory: dict[str, Any] = {"device": qkv.weight.device, "dtype": qkv.weight.dtype}
        self.q, self.k, self.v = (nn.Linear(qkv.in_features, dim, bias=has_bias, **factory) for _ in range(3))
        with torch.no_grad():
            for i, part in enumerate((self.q, self.k, self.v)):
                part.weight.copy_(qkv.weight[i * dim : (i + 1) * dim])
                if has_bias:
                    part.bias.copy_(qkv.bias[i * dim : (i + 1) * dim])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)

    def fused(self) -> nn.Linear:
        """The equivalent single Linear (used after LoRA weights are merged into q, k, v)."""
        q, k, v = self.q, self.k, self.v
        out = nn.Linear(q.in_features, 3 * q.out_features, bias=q.bias is not None)
        out = out.to(device=q.weight.device, dtype=q.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
            if q.bias is not None:
                out.bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
        return out


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def split_qkv(model: nn.Module) -> int:
    """Replace every fused `qkv` Linear by a `SplitQKV`; returns how many were split."""
    fused = [(n, m) for n, m in model.named_modules() if n.endswith("qkv") and isinstance(m, nn.Linear)]
    for name, module in fused:
        _replace(model, name, SplitQKV(module))
    return len(fused)


def fuse_qkv(model: nn.Module) -> int:
    """Undo `split_qkv` (after merging): every `SplitQKV` becomes one Linear again."""
    split = [(n, m) for n, m in model.named_modules() if isinstance(m, SplitQKV)]
    for name, module in split:
        _replace(model, name, module.fused())
    return len(split)


def target_regex(targets: list[str]) -> str:
    """PEFT `target_modules` as a full-match regex over module names, e.g. q and v of every block."""
    unknown = sorted(set(targets) - set(TARGET_PATTERNS))
    if unknown:
        raise ValueError(f"unknown LoRA targets {unknown}; choose from {sorted(TARGET_PATTERNS)}")
    return r".*\.(" + "|".join(TARGET_PATTERNS[t] for t in targets) + r")$"


def classifier_names(model: nn.Module) -> list[str]:
    """Module names of the classifier(s) from timm's pretrained config (`head`, or `head` and `head_dist`)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or "head"
    names = [names] if isinstance(names, str) else list(names)
    return [n for n in names if _has_module(model, n)]


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def apply_lora(model: nn.Module, cfg: FinetuneConfig) -> nn.Module:
    """Wrap a timm model with PEFT LoRA on the recipe's targets; the classifier trains fully (`modules_to_save`)."""
    from peft import LoraConfig, get_peft_model

    split_qkv(model)
    regex = target_regex(list(cfg.lora_targets))
    if not any(re.fullmatch(regex, name) for name, _ in model.named_modules()):
        raise ValueError(
            f"finetune.lora_targets={list(cfg.lora_targets)} match no Linear of this model; LoRA targets need a "
            "ViT-style block (attn.qkv, attn.proj, mlp.fc1, mlp.fc2)"
        )
    config = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=regex,
        modules_to_save=classifier_names(model),
        bias="none",
    )
    return get_peft_model(model, config)


def is_peft(model: nn.Module) -> bool:
    return type(model).__name__ == "PeftModel" or hasattr(model, "peft_config")


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the LoRA updates into the weights and return the plain timm model (fused qkv again)."""
    merged: nn.Module = model.merge_and_unload()  # type: ignore[operator]
    fuse_qkv(merged)
    return merged


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint stores: for a LoRA model only the adapters and the trained head, else everything."""
    if is_peft(model):
        from peft import get_peft_model_state_dict

        return dict(get_peft_model_state_dict(model))
    return model.state_dict()


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], where: str = "the checkpoint") -> None:
    """Inverse of `model_state_dict`; every stored tensor must find its place, else a message says what differs."""
    fix = "Load it into the recipe it was trained with (the run's recipe.yaml), or pick the matching checkpoint."
    if is_peft(model):
        from peft import set_peft_model_state_dict

        try:
            unexpected = getattr(set_peft_model_state_dict(model, state), "unexpected_keys", [])
        except RuntimeError as exc:  # a size mismatch: another rank, width or class count
            raise VitkitError(f"{where} does not fit this LoRA model ({exc}). {fix}") from None
        if unexpected:
            raise VitkitError(f"{where} has adapter weights that fit no module of this model: {unexpected[:5]}. {fix}")
        return
    problem = describe_mismatch(model.state_dict(), state)
    if problem is not None:
        raise VitkitError(f"{where} does not fit the model: {problem}. {fix}")
    model.load_state_dict(state)
