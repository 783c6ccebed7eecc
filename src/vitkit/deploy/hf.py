"""A timm ViT or distilled DeiT as a transformers model: config, weights and an image processor config.

transformers' ViT has one fixed block design (pre-norm LayerNorm, GELU MLP, class-token pooling), so only timm
models with exactly that design map onto it; `transformers_blockers` names every part that does not, so the user
learns why a model cannot go to transformers (and that the timm folder format takes any timm model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vitkit.errors import MissingExtraError, VitkitError
from vitkit.models.convert import timm_to_transformers

# timm's interpolation names -> PIL resampling codes, which transformers' processor configs store
PIL_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def require_transformers(purpose: str) -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise MissingExtraError("transformers", "hf", purpose) from exc
    return transformers


def _is(module: Any, *names: str) -> bool:
    return module is None or type(module).__name__ in names


def transformers_blockers(model: nn.Module) -> list[str]:
    """Why `model` has no transformers ViT/DeiT equivalent; empty when it maps exactly."""
    kind = type(model).__name__
    if kind not in ("VisionTransformer", "VisionTransformerDistilled"):
        return [f"it is a {kind}, and transformers' ViT/DeiT classes hold only timm's VisionTransformer design"]
    m: Any = model
    reasons = []
    if getattr(m, "num_reg_tokens", 0):
        reasons.append(f"it has {m.num_reg_tokens} register tokens")
    if m.cls_token is None or m.global_pool != "token":
        reasons.append(f"it pools with '{m.global_pool}' instead of the class token")
    if m.pos_embed is None or getattr(m, "no_embed_class", False):
        reasons.append("its position embedding is not the class-token-inclusive learned one")
    for part in ("norm_pre", "fc_norm"):
        if not _is(getattr(m, part, None), "Identity"):
            reasons.append(f"it has a {part} layer")
    if getattr(m, "attn_pool", None) is not None:
        reasons.append("it pools with attention")
    if not _is(m.patch_embed.proj, "Conv2d"):
        reasons.append("its patch embedding is a convolutional stem (model.stem=conv)")
    elif not _is(m.norm, "LayerNorm") or not _is(m.patch_embed.norm, "Identity") or m.patch_embed.proj.bias is None:
        reasons.append("its patch embedding or final norm differs from ViT's")
    reasons += _block_blockers(m.blocks)
    size, patch = m.patch_embed.img_size, m.patch_embed.patch_size
    if size is None or size[0] != size[1] or patch[0] != patch[1]:
        reasons.append(f"its image {size} or patch {patch} is not square")
    return reasons


def _block_blockers(blocks: Any) -> list[str]:
    reasons: set[str] = set()
    eps: set[float] = set()
    for block in blocks:
        b: Any = block
        if type(b).__name__ != "Block":
            reasons.add(f"its blocks are {type(b).__name__}, not ViT's pre-norm Block")
            continue
        if not (_is(b.ls1, "Identity") and _is(b.ls2, "Identity")):
            reasons.add("it has layer scale (as DeiT III and CaiT do)")
        if not all(_is(getattr(b.attn, n, None), "Identity") for n in ("q_norm", "k_norm", "norm")):
            reasons.add("its attention has qk-norm or a scale norm")
        if type(b.mlp).__name__ != "Mlp" or type(b.mlp.act).__name__ != "GELU" or b.mlp.act.approximate != "none":
            reasons.add(f"its MLP is {type(b.mlp).__name__} with {type(getattr(b.mlp, 'act', None)).__name__}")
        if not (_is(b.norm1, "LayerNorm") and _is(b.norm2, "LayerNorm")):
            reasons.add("its blocks do not use LayerNorm")
        else:
            eps |= {b.norm1.eps, b.norm2.eps}
    if len(eps) > 1:
        reasons.add(f"its LayerNorms use several eps values {sorted(eps)}")
    return sorted(reasons)


@dataclass
class TransformersModel:
    """The transformers class and config keyword arguments that hold a given timm model."""

    model_type: str  # vit or deit
    class_name: str
    config: dict[str, Any]


def transformers_spec(model: nn.Module, classes: list[str]) -> TransformersModel:
    """The transformers class and config for `model`; refuses, naming every reason, when none fits."""
    reasons = transformers_blockers(model)
    if reasons:
        raise VitkitError(
            "this model cannot be written as a transformers ViT/DeiT: "
            + "; ".join(reasons)
            + ". Export it with --format timm instead, which holds any timm model."
        )
    m: Any = model
    first = m.blocks[0]
    distilled = type(model).__name__ == "VisionTransformerDistilled"
    config = {
        "hidden_size": m.embed_dim,
        "num_hidden_layers": len(m.blocks),
        "num_attention_heads": first.attn.num_heads,
        "intermediate_size": first.mlp.fc1.out_features,
        "hidden_act": "gelu",
        "layer_norm_eps": first.norm1.eps,
        "image_size": m.patch_embed.img_size[0],
        "patch_size": m.patch_embed.patch_size[0],
        "num_channels": m.patch_embed.proj.in_channels,
        "qkv_bias": first.attn.qkv.bias is not None,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "id2label": dict(enumerate(classes)),
        "label2id": {name: i for i, name in enumerate(classes)},
    }
    if distilled:
        return TransformersModel("deit", "DeiTForImageClassificationWithTeacher", config)
    return TransformersModel("vit", "ViTForImageClassification", config)


def to_transformers(model: nn.Module, classes: list[str]) -> Any:
    """A transformers model (eval mode) computing what the timm `model` computes."""
    transformers = require_transformers("exporting to transformers")
    transformers.utils.logging.disable_progress_bar()  # a progress bar per tiny file would drown vitkit's output
    spec = transformers_spec(model, classes)
    config_class = transformers.DeiTConfig if spec.model_type == "deit" else transformers.ViTConfig
    hf_model = getattr(transformers, spec.class_name)(config_class(**spec.config))
    target = hf_model.state_dict()
    state = timm_to_transformers(model.state_dict(), list(target))
    missing = [k for k in target if k not in state and "pooler" not in k]
    if missing:
        raise VitkitError(f"the transformers model has weights the timm model lacks: {', '.join(missing[:5])}.")
    with torch.no_grad():
        hf_model.load_state_dict(state, strict=True)
    return hf_model.eval()


def processor_config(
    model_type: str, img_size: int, crop_pct: float, interpolation: str, mean: Any, std: Any
) -> dict[str, Any]:
    """An image processor config that does what vitkit's evaluation transform does (timm's: resize the short
    side to img_size / crop_pct, centre-crop img_size, scale to [0, 1], normalise), with its resampling."""
    if interpolation not in PIL_RESAMPLE:
        raise VitkitError(
            f"augment.interpolation '{interpolation}' has no transformers processor equivalent; "
            f"use one of {', '.join(PIL_RESAMPLE)}."
        )
    return {
        "image_processor_type": "DeiTImageProcessor" if model_type == "deit" else "ViTImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": math.floor(img_size / crop_pct)},
        "resample": PIL_RESAMPLE[interpolation],
        "do_center_crop": True,
        "crop_size": {"height": img_size, "width": img_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(mean),
        "image_std": list(std),
    }
