"""Attention quality per layer and head: entropy, head diversity, collapse and near-uniform flags, and rollout.

timm computes attention with fused SDPA, so the probabilities never exist as a tensor. `capture_attention`
recomputes them in a forward pre-hook from the block's own q/k projections (and q/k norms) exactly as timm's
unfused path does; the block itself still runs unchanged, so the model's outputs are untouched.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers.attention import Attention, maybe_add_mask, resolve_self_attn_mask
from torch import nn

from vitkit.evaluate.context import EvalContext, Value
from vitkit.evaluate.images import thumbnail_uri

# A layer has collapsed when its heads attend to few tokens (mean entropy under this share of log N) and all
# alike (diversity under COLLAPSE_DIVERSITY); a head is near-uniform when its entropy is above UNIFORM_SHARE of
# log N, i.e. it barely distinguishes tokens.
COLLAPSE_ENTROPY_SHARE = 0.1
COLLAPSE_DIVERSITY = 0.1
UNIFORM_SHARE = 0.95


def attention_modules(model: nn.Module) -> list[Attention]:
    return [m for m in model.modules() if isinstance(m, Attention)]


def attention_probabilities(module: Attention, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """The probabilities (B, heads, N, N) an attention block computes for its inputs, recomputed from its own q/k
    projections (and q/k norms) exactly as timm's unfused path does. For use in a forward pre-hook."""
    x = args[0]
    attn_mask = kwargs.get("attn_mask", args[1] if len(args) > 1 else None)
    b, n, _ = x.shape
    qkv = module.qkv(x).reshape(b, n, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
    q, k, _v = qkv.unbind(0)
    q, k = module.q_norm(q), module.k_norm(k)
    attn = (q * module.scale) @ k.transpose(-2, -1)
    attn = maybe_add_mask(attn, resolve_self_attn_mask(n, attn, attn_mask, kwargs.get("is_causal", False)))
    return attn.softmax(dim=-1)


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """While active, every forward appends each attention block's probabilities (B, heads, N, N), float32 on CPU,
    in layer order."""
    maps: list[torch.Tensor] = []

    def pre_hook(module: Attention, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        with torch.no_grad():
            maps.append(attention_probabilities(module, args, kwargs).float().cpu())

    handles = [m.register_forward_pre_hook(pre_hook, with_kwargs=True) for m in attention_modules(model)]
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def attention_entropy(attn: torch.Tensor) -> torch.Tensor:
    """Mean entropy H = -Σ A log A (nats) of each head's rows, over images and queries: (B, H, N, N) -> (H,).
    log N for uniform attention, 0 when every query attends to one token."""
    return -(attn * attn.clamp_min(1e-12).log()).sum(dim=-1).mean(dim=(0, 2))


def head_diversity(attn: torch.Tensor) -> float:
    """D = 1 - (1/H²) Σ_{h,h'} cos(A_h, A_h') over each image's flattened head maps, averaged over images:
    0 when all heads are identical, 1 - 1/H when they attend to disjoint tokens (orthogonal maps)."""
    flat = F.normalize(attn.flatten(2), dim=-1)  # (B, H, N*N)
    cosines = flat @ flat.transpose(1, 2)  # (B, H, H)
    heads = attn.shape[1]
    return float((1 - cosines.sum(dim=(1, 2)) / heads**2).mean())


def attention_flags(
    entropy: list[torch.Tensor], diversity: list[float], tokens: int
) -> tuple[list[int], list[list[int]]]:
    """Collapsed layers (low mean entropy and low diversity) and near-uniform heads as [layer, head]."""
    uniform = math.log(tokens)
    collapsed = [
        i
        for i, (h, d) in enumerate(zip(entropy, diversity, strict=True))
        if float(h.mean()) < COLLAPSE_ENTROPY_SHARE * uniform and d < COLLAPSE_DIVERSITY
    ]
    near_uniform = [[i, j] for i, h in enumerate(entropy) for j, v in enumerate(h) if v > UNIFORM_SHARE * uniform]
    return collapsed, near_uniform


def attention_rollout(maps: list[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): heads averaged, the residual added as 0.5·A + 0.5·I, rows
    renormalised, multiplied from the first layer to the last. (B, N, N)."""
    first = maps[0]
    rollout = torch.eye(first.shape[-1]).expand(first.shape[0], -1, -1)
    for attn in maps:
        mixed = 0.5 * attn.mean(dim=1) + 0.5 * torch.eye(attn.shape[-1])
        rollout = (mixed / mixed.sum(dim=-1, keepdim=True)) @ rollout
    return rollout


def rollout_to_patches(rollout: torch.Tensor, prefix_tokens: int, has_class_token: bool) -> torch.Tensor:
    """What each patch contributes to the prediction: the class token's row of the rollout (or, for a pooled
    model without one, the mean over patch rows), without the class, distillation and register tokens. (B, P)"""
    rows = rollout[:, 0] if has_class_token else rollout[:, prefix_tokens:].mean(dim=1)
    return rows[:, prefix_tokens:]


def overlay(image: torch.Tensor, patch_map: torch.Tensor, grid: tuple[int, int]) -> str:
    """A uint8 CHW image with a heat map of `patch_map` laid over it, as a PNG data URI."""
    from matplotlib import colormaps

    heat = patch_map.reshape(1, 1, *grid)
    heat = F.interpolate(heat, size=image.shape[1:], mode="bilinear", align_corners=False)[0, 0]
    heat = (heat - heat.min()) / (heat.max() - heat.min()).clamp_min(1e-12)
    colored = colormaps["inferno"](heat.numpy())[..., :3] * 255
    blended = 0.45 * image.permute(1, 2, 0).numpy() + 0.55 * colored
    return thumbnail_uri(torch.from_numpy(blended.clip(0, 255).astype(np.uint8)).permute(2, 0, 1), size=128)


class AttentionEvaluator:
    name = "attention"

    def __call__(self, ctx: EvalContext) -> Iterator[tuple[str, Value]]:
        if ctx.runner is None or ctx.images is None:
            yield "skipped", "needs the model and the evaluation images"
            return
        model = ctx.runner.model
        if not attention_modules(model):
            yield "skipped", f"{type(model).__name__} has no ViT attention blocks (timm Attention) to measure"
            return
        s = ctx.settings
        sample = ctx.images.subset(np.arange(min(s.attention_images, len(ctx.images))))
        images, _ = next(iter(ctx.runner.batches(sample)))
        with capture_attention(model) as maps:
            logits = ctx.runner.logits(images)
        tokens, prefix = maps[0].shape[-1], int(getattr(model, "num_prefix_tokens", 0))
        uniform = math.log(tokens)
        entropy = [attention_entropy(a) for a in maps]
        diversity = [head_diversity(a) for a in maps]
        yield "layers", len(maps)
        yield "heads", maps[0].shape[1]
        yield "tokens", tokens
        yield "prefix_tokens", prefix
        yield "images", len(images)
        yield "uniform_entropy", uniform
        yield "entropy", [[round(float(h), 5) for h in layer] for layer in entropy]
        yield "mean_entropy", float(torch.stack(entropy).mean())
        yield "diversity", [round(d, 5) for d in diversity]
        yield "mean_diversity", float(np.mean(diversity))
        collapsed = [
            i
            for i, (h, d) in enumerate(zip(entropy, diversity, strict=True))
            if float(h.mean()) < COLLAPSE_ENTROPY_SHARE * uniform and d < COLLAPSE_DIVERSITY
        ]
        near_uniform = [[i, j] for i, h in enumerate(entropy) for j, v in enumerate(h) if v > UNIFORM_SHARE * uniform]
        yield "collapsed_layers", collapsed
        yield "uniform_heads", near_uniform
        flags = [f"layer {i}: attention collapsed (low entropy, heads alike)" for i in collapsed]
        if near_uniform:
            share = len(near_uniform) / (len(maps) * maps[0].shape[1])
            heads = f"{len(near_uniform)} head{'s' if len(near_uniform) > 1 else ''} ({share:.0%})"
            flags.append(f"{heads} of {len(maps) * maps[0].shape[1]} attend almost uniformly (entropy > 95% of log N)")
        yield "flags", flags
        yield from self._rollout(ctx, model, maps, images, logits, prefix)

    def _rollout(
        self,
        ctx: EvalContext,
        model: nn.Module,
        maps: list[torch.Tensor],
        images: torch.Tensor,
        logits: torch.Tensor,
        prefix: int,
    ) -> Iterator[tuple[str, Value]]:
        grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
        if grid is None or int(grid[0]) * int(grid[1]) != maps[0].shape[-1] - prefix:
            yield "rollout_skipped", "the tokens do not form a patch grid"
            return
        has_cls = getattr(model, "cls_token", None) is not None
        patches = rollout_to_patches(attention_rollout(maps), prefix, has_cls)
        names, labels = ctx.class_names, ctx.labels
        yield (
            "rollout",
            [
                {
                    "image": overlay(images[i], patches[i], (int(grid[0]), int(grid[1]))),
                    "true": names[int(labels[i])] if labels.dim() == 1 else "",
                    "predicted": names[int(logits[i].argmax())],
                }
                for i in range(min(ctx.settings.rollout_images, len(images)))
            ],
        )
