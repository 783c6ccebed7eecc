"""One training step: forward, loss, backward and, at the end of an accumulation window, clip and optimizer update.

A *step* is one micro-batch; an *update* is one optimizer step, made every `train.accumulation_steps` steps. The
step decides nothing about what a bad update means for the run (that is the guard's job, in `train.guard`) and
logs nothing; it only never applies an update whose loss or gradient is not finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from accelerate import Accelerator
from torch import nn

from vitkit.train.dynamics import DynamicsMonitor
from vitkit.train.losses import LossParts
from vitkit.train.ranks import Ranks
from vitkit.train.tasks import Batch, Task


@dataclass
class Window:
    """The losses of the current accumulation window, kept on the device (reading them each step would sync a GPU)."""

    loss_sum: torch.Tensor | float = 0.0
    steps: int = 0
    finite: torch.Tensor | bool = True

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum = self.loss_sum + loss
        self.steps += 1
        self.finite = torch.isfinite(loss) & self.finite


@dataclass
class StepOutcome:
    loss: torch.Tensor  # this step's loss, detached
    parts: LossParts
    size: int  # images in the micro-batch
    updated: bool = False  # the step ended an accumulation window, so an update was due
    finite: bool = True  # (when updated) every loss of the window was finite, and so was the gradient norm
    scaler_skipped: bool = False  # fp16: the loss scaler skipped the update for inf/NaN gradients (routine)
    grad_norm: float = math.nan  # (when updated) the gradient norm before clipping
    window: Window = field(default_factory=Window)  # (when updated) the window this update closed


class Steppable(Protocol):
    """What a step needs of a run."""

    accelerator: Accelerator
    model: nn.Module  # as prepared by accelerate
    optimizer: Any  # accelerate's AcceleratedOptimizer
    task: Task
    clip: float  # max gradient norm; inf for none
    window: Window
    dynamics: DynamicsMonitor | None  # reads gradients and update sizes at the updates it is due for


def train_step(run: Steppable, batch: Batch) -> StepOutcome:
    """Forward and backward of one micro-batch; at the window's end, clip and update unless it is not finite.

    With fp16 the loss scaler owns gradient overflow: an inf gradient norm is its routine signal to skip the
    update and lower the scale (`optimizer.step_was_skipped`), not a non-finite event; only a non-finite loss
    is. Without a scaler, a non-finite loss or gradient norm means the update is not applied. With several
    processes the update is skipped on all of them when the loss was not finite on any.
    """
    accelerator, scaler = run.accelerator, run.accelerator.scaler
    with accelerator.accumulate(run.model):
        parts = run.task.loss(batch)
        accelerator.backward(parts.total)
        loss = parts.total.detach()
        run.window.add(loss)
        outcome = StepOutcome(loss, parts, batch.size)
        if accelerator.sync_gradients:
            watch = run.dynamics if run.dynamics is not None and run.dynamics.due else None
            if watch is not None:
                watch.before_update(accelerator.unwrap_model(run.model))
            norm = accelerator.clip_grad_norm_(run.model.parameters(), run.clip)
            finite = run.window.finite & torch.isfinite(torch.as_tensor(norm)) if scaler is None else run.window.finite
            # one host sync per update; with several processes one all-reduce, so that all make the same decision
            outcome.updated, outcome.finite = True, Ranks(accelerator).all(finite)
            outcome.grad_norm, outcome.window = float(norm), run.window
            if outcome.finite or scaler is not None:  # the scaler skips inf/NaN gradients itself, and lowers its scale
                run.optimizer.step()
            if watch is not None:
                watch.after_update(accelerator.unwrap_model(run.model))
            outcome.scaler_skipped = scaler is not None and run.optimizer.step_was_skipped
            run.window = Window()
        run.optimizer.zero_grad(set_to_none=True)
    return outcome
