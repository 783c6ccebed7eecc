"""`vitkit codegen`: the eject button. A recipe or run as one standalone training script (plan/standalone_train.py
with its CONFIG filled in) that uses torch, torchvision and timm only, and reproduces vitkit's training of that
recipe step for step on one process: the same data order and per-image augmentation seeds, model, parameter
groups, schedule, EMA and loss.

The script covers what a plain from-scratch run does (any model, augmentation, mixing, regularisation,
accumulation, clipping, EMA, fp32 or bf16); recipes that need more of vitkit (pretrained weights and fine-tuning
strategies, distillation, multi-label tasks, imbalance handling, fp16's loss scaling) are refused with the reason.
"""

from __future__ import annotations

import pprint
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from vitkit.config.schema import Recipe
from vitkit.errors import VitkitError
from vitkit.models.build import choose_attention, model_kwargs

CONFIG_LINE = "CONFIG: dict[str, Any] = {}  # the recipe, filled in by vitkit codegen"


def unsupported(recipe: Recipe) -> list[str]:
    """What of `recipe` the standalone script does not do, each with the setting that asks for it."""
    reasons = []
    if recipe.finetune.pretrained or recipe.finetune.strategy != "full":
        reasons.append("pretrained weights / finetune.strategy (the script trains from scratch)")
    if recipe.distill.type != "none":
        reasons.append(f"distill.type={recipe.distill.type}")
    if recipe.train.task == "multilabel":
        reasons.append("train.task=multilabel")
    if recipe.train.imbalance != "none":
        reasons.append(f"train.imbalance={recipe.train.imbalance}")
    if recipe.train.precision == "fp16":
        reasons.append("train.precision=fp16 (needs a loss scaler; use bf16 or fp32)")
    if recipe.data.source and not Path(recipe.data.source).is_dir() and recipe.data.source != "DIR":
        reasons.append(f"data.source={recipe.data.source} (the script reads an image folder: pass --data DIR)")
    return reasons


def script_config(recipe: Recipe, data: str | None = None) -> dict[str, Any]:
    """The CONFIG block: every recipe value the script reads, resolved as vitkit resolves it on one CPU process."""
    m, a, o, s, t = recipe.model, recipe.augment, recipe.optim, recipe.schedule, recipe.train
    mean, std = recipe.data.normalization()
    precision = "bf16" if t.precision == "bf16" else "fp32"  # auto: fp32, the same on every CPU
    kwargs = {k: v for k, v in model_kwargs(m, 2).items() if k != "num_classes"} | dict(m.kwargs)
    batch = t.global_batch_size // t.accumulation_steps if t.global_batch_size else t.batch_size
    return {
        "data": data or recipe.data.source or "DIR",
        "seed": t.seed,
        "deterministic": t.deterministic,
        "val_fraction": recipe.data.val_fraction,
        "model": m.name,
        "model_kwargs": kwargs,
        "conv_stem": m.stem == "conv",
        "local_mlp": m.mlp == "local",
        "fused_attention": choose_attention(m.attn_impl, torch.device("cpu"), precision, _tokens(m)) == "fused",
        "norm_eps": m.norm_eps,
        "grad_checkpointing": m.grad_checkpointing,
        "img_size": m.img_size,
        "mean": list(mean),
        "std": list(std),
        "rrc_scale": list(a.rrc_scale),
        "rrc_ratio": list(a.rrc_ratio),
        "hflip": a.hflip,
        "rotation": a.rotation,
        "color_jitter": a.color_jitter,
        "randaugment": a.randaugment,
        "random_erasing": a.random_erasing,
        "erasing_mode": a.erasing_mode,
        "interpolation": a.interpolation,
        "crop_pct": a.crop_pct,
        "mixup": a.mixup,
        "cutmix": a.cutmix,
        "mix_prob": a.mix_prob,
        "mix_switch_prob": a.mix_switch_prob,
        "mix_mode": a.mix_mode,
        "repeated_aug": a.repeated_aug,
        "label_smoothing": t.label_smoothing,
        "optimizer": "momentum" if o.name == "sgd" else o.name,
        "lr": o.lr,
        "lr_base_batch": o.lr_base_batch,
        "lr_scaling": o.lr_scaling,
        "weight_decay": o.weight_decay,
        "layer_decay": recipe.finetune.layer_decay,
        "betas": list(o.betas),
        "eps": o.eps,
        "momentum": o.momentum,
        "clip_grad": o.clip_grad,
        "epochs": s.epochs,
        "warmup_epochs": s.warmup_epochs,
        "warmup_lr": s.warmup_lr,
        "min_lr": s.min_lr,
        "batch_size": batch,
        "accumulation_steps": t.accumulation_steps,
        "precision": precision,
        "ema": recipe.ema.enabled,
        "ema_decay": recipe.ema.decay,
        "ema_warmup": recipe.ema.warmup,
    }


def _tokens(m: Any) -> int:
    """Patches plus the class token: what vitkit's automatic attention choice looks at."""
    patch = m.patch_size or 16
    return (m.img_size // patch) ** 2 + 1


def generate(recipe: Recipe, data: str | None = None, origin: str = "") -> str:
    """The standalone script for `recipe` (training on `data`, else the recipe's folder)."""
    reasons = unsupported(recipe if data is None else recipe.model_copy(update={"data": recipe.data}))
    if data is not None:
        reasons = [r for r in reasons if not r.startswith("data.source")]
    if reasons:
        raise VitkitError(
            "vitkit codegen writes a plain from-scratch training script, and this recipe needs more of vitkit: "
            + "; ".join(reasons)
            + ". Keep training it with vitkit train, or change those settings."
        )
    template = (files("vitkit.plan") / "standalone_train.py").read_text()
    block = pprint.pformat(script_config(recipe, data), sort_dicts=False, width=116)
    header = f"# the recipe{f' of {origin}' if origin else ''}, as vitkit resolved it\n"
    return template.replace(CONFIG_LINE, header + f"CONFIG: dict[str, Any] = {block}")
