"""The learning rate a run will use, update by update, from the run's own optimizer and scheduler.

The model is built on the meta device (no memory, no download) with the recipe's fine-tuning strategy, and the
optimizer and scheduler are the ones training builds (`train.optim`), so warmup, cosine floor, linear lr scaling
and layer-wise decay groups are the run's, not a re-derivation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vitkit.config.schema import Recipe
from vitkit.errors import VitkitError
from vitkit.models.build import build_model
from vitkit.models.finetune import apply_strategy
from vitkit.train.optim import build_optimizer, build_scheduler
from vitkit.train.scaleout import process_batch_size

SPARKS = "▁▂▃▄▅▆▇█"
SOFTWARE = "vitkit schedule"


@dataclass(frozen=True)
class LrSchedule:
    lrs: list[list[float]]  # lrs[u][g]: the lr of parameter group g at update u (from 0)
    updates_per_epoch: int
    warmup_updates: int
    global_batch: int
    peak_lr: float

    @property
    def head(self) -> list[float]:
        """The largest group lr at each update (the head's under layer decay)."""
        return [max(groups) for groups in self.lrs]


def lr_schedule(cfg: Recipe, train_size: int, processes: int = 1) -> LrSchedule:
    """Step the recipe's scheduler through every update of a run on `train_size` images and `processes`."""
    cfg = cfg.model_copy(deep=True)
    cfg.train.batch_size = process_batch_size(cfg.train, processes)
    global_batch = cfg.effective_batch(processes)
    updates_per_epoch = train_size // global_batch
    if updates_per_epoch < 1:
        raise VitkitError(
            f"--train-size {train_size} is smaller than one update's batch ({global_batch} images): lower "
            "train.batch_size or give the real training-set size."
        )
    peak = cfg.effective_lr(processes)
    with torch.device("meta"):
        model = apply_strategy(build_model(cfg.model, 10), cfg.finetune)
    optimizer = build_optimizer(model, cfg.optim, peak, layer_decay=cfg.finetune.layer_decay)
    scheduler = build_scheduler(optimizer, cfg.schedule, updates_per_epoch, peak)
    lrs = []
    for update in range(cfg.schedule.epochs * updates_per_epoch):
        scheduler.step_update(update)  # what the loop does before each update (train.loop.set_lr)
        lrs.append([g["lr"] for g in optimizer.param_groups])
    warmup = min(round(cfg.schedule.warmup_epochs * updates_per_epoch), len(lrs) - 1)
    return LrSchedule(lrs, updates_per_epoch, warmup, global_batch, peak)


def sparkline(values: list[float], width: int = 60) -> str:
    """`values` resampled to `width` characters, each a bar from ▁ (lowest) to █ (highest)."""
    if not values:
        return ""
    n = min(width, len(values))
    picks = [values[i * len(values) // n] for i in range(n)]
    low, high = min(values), max(values)
    span = high - low or 1.0
    return "".join(SPARKS[round((v - low) / span * (len(SPARKS) - 1))] for v in picks)


def plot_schedule(schedule: LrSchedule, path: Path) -> Path:
    """A PNG of every parameter group's lr over the updates, epochs marked on a second axis."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.5), layout="constrained")
    ax = fig.subplots()
    groups = list(zip(*schedule.lrs, strict=True))
    for i, lrs in enumerate(groups):
        ax.plot(range(len(lrs)), lrs, lw=1.5 if max(lrs) == schedule.peak_lr else 0.8, label=f"group {i}")
    ax.axvline(schedule.warmup_updates, color="grey", ls=":", lw=1)
    ax.set(xlabel="update", ylabel="learning rate", title="learning rate by parameter group")
    per_epoch = schedule.updates_per_epoch

    def to_epochs(updates: Any) -> Any:
        return updates / per_epoch

    def to_updates(epochs: Any) -> Any:
        return epochs * per_epoch

    top = ax.secondary_xaxis("top", functions=(to_epochs, to_updates))
    top.set_xlabel("epoch")
    if len(groups) <= 12:
        ax.legend(fontsize="small", ncols=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, metadata={"Software": SOFTWARE})  # marks the file as ours, so a rerun may replace it
    return path


def is_our_plot(path: Path) -> bool:
    """Whether `path` is a PNG this module drew (and so may be drawn again)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return str(image.info.get("Software", "")) == SOFTWARE
    except OSError:
        return False
