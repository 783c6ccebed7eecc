"""Build timm models from the recipe's model section, and choose the attention kernel for the device."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import timm
import torch
from torch import nn

from vitkit.config.schema import ModelConfig
from vitkit.errors import RecipeError, VitkitError
from vitkit.models.local import LocalMlp
from vitkit.models.stems import ConvStemEmbed

if TYPE_CHECKING:
    from vitkit.models.pretrained import PretrainedWeights

# Largest token count for which the explicit math attention beats fused SDPA under bf16 on CPU. Reported for a
# ViT-Tiny at 65 tokens (fused backward took 44% of a step; math was ~1.6x faster); fused wins in fp32 on CPU
# (measured here: 21.6 vs 17.5 img/s at 65 tokens) and on GPUs, where SDPA selects flash/memory-efficient kernels.
MATH_ATTENTION_MAX_TOKENS_CPU_BF16 = 256
_TRANSFORMER_ONLY = ("img_size", "attn_drop_rate")


def model_kwargs(cfg: ModelConfig, num_classes: int) -> dict[str, Any]:
    """Keyword arguments for `timm.create_model`: only the overrides the recipe sets."""
    kwargs: dict[str, Any] = {
        "num_classes": cfg.num_classes or num_classes,
        "img_size": cfg.img_size,
        "drop_rate": cfg.drop_rate,
        "attn_drop_rate": cfg.attn_drop_rate,
        "drop_path_rate": cfg.drop_path_rate,
    }
    if cfg.drop_rate > 0:  # timm splits dropout: drop_rate before the head, proj_drop_rate in attention and MLP
        kwargs["proj_drop_rate"] = cfg.drop_rate
    for key in ("patch_size", "embed_dim", "depth", "num_heads"):
        value = getattr(cfg, key)
        if value is not None:
            kwargs[key] = value
    return kwargs


def check_from_scratch_parts(cfg: ModelConfig, pretrained: PretrainedWeights | None) -> None:
    """vitkit's own layers have no pretrained weights: refuse them with weights rather than start them at random."""
    if cfg.stem == "conv" and pretrained is not None:
        raise RecipeError(
            "model.stem=conv: pretrained weights were learned with a patchify stem and do not fit a convolutional "
            "one. Set model.stem=patch to fine-tune, or drop the pretrained weights to train from scratch."
        )
    if cfg.mlp == "local" and pretrained is not None:
        raise RecipeError(
            "model.mlp=local: pretrained weights have no depthwise convolution in their MLPs. Set model.mlp=mlp to "
            "fine-tune, or drop the pretrained weights to train from scratch."
        )


def from_scratch_layers(cfg: ModelConfig) -> dict[str, Any]:
    """The timm layer arguments for vitkit's convolutional stem and local MLP, where the recipe asks for them."""
    layers: dict[str, Any] = {}
    if cfg.stem == "conv":
        layers["embed_layer"] = ConvStemEmbed
    if cfg.mlp == "local":
        layers["mlp_layer"] = LocalMlp
    return layers


def build_model(cfg: ModelConfig, num_classes: int, pretrained: PretrainedWeights | None = None) -> nn.Module:
    """`timm.create_model` with the recipe's overrides, optionally on pretrained weights (whose architecture
    `cfg` must already carry, see `with_architecture`); unknown names and unsupported overrides get a clear error."""
    hub = cfg.name.startswith(("hf-hub:", "local-dir:"))
    if not hub and not timm.is_model(cfg.name):
        close = timm.list_models(f"*{cfg.name.split('_')[0]}*")[:8]
        raise RecipeError(f"model.name: timm has no model '{cfg.name}'. Similar names: {', '.join(close) or 'none'}.")
    check_from_scratch_parts(cfg, pretrained)
    kwargs = {**model_kwargs(cfg, num_classes), **cfg.kwargs, **from_scratch_layers(cfg)}
    load = pretrained.create_kwargs() if pretrained is not None else {}
    while True:
        try:
            model = timm.create_model(cfg.name, **load, **kwargs)
            break
        except TypeError as exc:
            # CNN teachers and baselines take any input size and have no attention: drop those settings.
            droppable = [k for k in _TRANSFORMER_ONLY if k in kwargs and f"'{k}'" in str(exc)]
            if droppable and (droppable[0] == "img_size" or not kwargs[droppable[0]]):
                kwargs.pop(droppable[0])
                continue
            if "embed_layer" in str(exc):
                raise RecipeError(
                    f"model.stem=conv: '{cfg.name}' has no patch embedding to replace; the convolutional stem is "
                    "for the ViT family (vit_*, deit_*). Set model.stem=patch."
                ) from exc
            if "mlp_layer" in str(exc):
                raise RecipeError(
                    f"model.mlp=local: '{cfg.name}' has no ViT block MLP to replace; the local MLP is for the ViT "
                    "family (vit_*, deit_*). Set model.mlp=mlp."
                ) from exc
            raise RecipeError(
                f"model '{cfg.name}' does not accept one of the settings {sorted(kwargs)}: {exc}. "
                "Remove it from the model section (e.g. Swin takes no 'depth', a ResNet no 'patch_size')."
            ) from exc
        except (OSError, RuntimeError, ValueError) as exc:
            if not (hub or load):
                raise
            # hub weights not in the local cache and no network, or weights that do not fit the architecture
            raise VitkitError(
                f"could not load the pretrained weights for '{cfg.name}': {exc}. Without network access the files "
                "must already be in the Hugging Face cache (HF_HOME); or pass a local .safetensors file or folder."
            ) from exc
    for module in model.modules():
        if isinstance(module, LocalMlp):  # the class and register tokens the model puts before its patches
            module.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
    if cfg.norm_eps is not None:
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = cfg.norm_eps
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)  # type: ignore[operator]
    return model


def num_tokens(model: nn.Module) -> int:
    """Sequence length seen by attention: patches plus class/distillation/register tokens."""
    patch_embed = getattr(model, "patch_embed", None)
    patches = int(getattr(patch_embed, "num_patches", 0) or 0)
    return patches + int(getattr(model, "num_prefix_tokens", 0))


def choose_attention(requested: str, device: torch.device, precision: str, tokens: int) -> str:
    """The attention kernel to use: the recipe's choice, or for `auto` the fastest measured for the setting."""
    if requested != "auto":
        return requested
    if device.type == "cpu" and precision == "bf16" and tokens <= MATH_ATTENTION_MAX_TOKENS_CPU_BF16:
        return "math"
    return "fused"


def set_attention(model: nn.Module, impl: str) -> int:
    """Switch every timm attention module between fused SDPA and explicit math; returns how many were set."""
    count = 0
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = impl == "fused"  # type: ignore[assignment]
            count += 1
    return count


def drop_path_rates(model: nn.Module) -> list[float]:
    """Stochastic-depth probability of each block, as built by timm."""
    rates = []
    for block in getattr(model, "blocks", []):
        drop_path = getattr(block, "drop_path1", None) or getattr(block, "drop_path", None)
        rates.append(float(getattr(drop_path, "drop_prob", 0.0) or 0.0))
    return rates
