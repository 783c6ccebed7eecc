"""Optimizer with weight-decay groups and the per-step warmup + cosine schedule, both from timm."""

from __future__ import annotations

import math

import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn

from vitkit.config.schema import OptimConfig, ScheduleConfig


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, lr: float, layer_decay: float | None = None
) -> torch.optim.Optimizer:
    """AdamW (or SGD) through timm, which puts norms, biases and `model.no_weight_decay()` names
    (position embedding, class and distillation tokens) in a group without weight decay, leaves frozen
    parameters out, and with `layer_decay` gives layer i the LR scale decay^(L+1-i) (see models.finetune)."""
    extra = {"betas": tuple(cfg.betas), "eps": cfg.eps} if cfg.name == "adamw" else {"momentum": cfg.momentum}
    opt = "momentum" if cfg.name == "sgd" else cfg.name  # timm's "sgd" means Nesterov; ours is plain momentum
    return create_optimizer_v2(model, opt=opt, lr=lr, weight_decay=cfg.weight_decay, layer_decay=layer_decay, **extra)


def no_decay_parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> set[str]:
    """Names of parameters that the optimizer applies no weight decay to (for reports and tests)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]}


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, updates_per_epoch: int, peak_lr: float
) -> CosineLRScheduler:
    """Per-update linear warmup from `warmup_lr` to the peak, then cosine down to `min_lr` at the last update."""
    total = cfg.epochs * updates_per_epoch
    warmup = min(round(cfg.warmup_epochs * updates_per_epoch), total - 1)
    return CosineLRScheduler(
        optimizer,
        t_initial=total - warmup,
        lr_min=cfg.min_lr,
        warmup_t=warmup,
        warmup_lr_init=cfg.warmup_lr,
        warmup_prefix=True,
        t_in_epochs=False,
    )


def warmup_cosine_lr(step: int, total: int, warmup: int, peak: float, warmup_lr: float, min_lr: float) -> float:
    """Closed form of the schedule: the reference the wiring is tested against."""
    if step < warmup:
        return warmup_lr + step * (peak - warmup_lr) / warmup
    progress = (step - warmup) / (total - warmup)
    return min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * progress))
