"""The non-finite guard: what a run does about an update whose loss or gradient is NaN/inf.

`train.nonfinite` picks the policy: skip drops the update, rollback returns to the state at the start of the epoch
with a lower lr, stop ends the run (its checkpoints are from before and intact). Either of the first two becomes
stop after `train.nonfinite_limit` bad updates in a row or rollbacks, so a run that cannot recover ends.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import nn

from vitkit.train.checkpoint import Progress
from vitkit.train.faults import nonfinite_action


@dataclass
class Snapshot:
    """A CPU copy of everything a rollback restores (not the RNGs: a replay should not repeat the same draws)."""

    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    progress: Progress


def _cpu_copy(state: Any) -> Any:
    """Each tensor copied once, to CPU; containers rebuilt around the copies."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: _cpu_copy(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_cpu_copy(v) for v in state)
    return copy.deepcopy(state)


class NonFiniteGuard:
    """Judges each non-finite update under the policy, and keeps the snapshot a rollback returns to."""

    def __init__(self, policy: str, limit: int, rollback_lr_factor: float) -> None:
        self.policy, self.limit, self.rollback_lr_factor = policy, limit, rollback_lr_factor
        self.snapshot: Snapshot | None = None

    def mark(
        self, model: nn.Module, ema: ModelEmaV3 | None, optimizer: Any, scheduler: Any, progress: Progress
    ) -> None:
        """Remember this state as the one a rollback returns to (only the rollback policy needs it)."""
        if self.policy != "rollback":
            return
        self.snapshot = Snapshot(
            _cpu_copy(model.state_dict()),
            _cpu_copy(ema.module.state_dict()) if ema is not None else None,
            _cpu_copy(optimizer.state_dict()),
            copy.deepcopy(scheduler.state_dict()),
            copy.deepcopy(progress),
        )

    @staticmethod
    def good_update(progress: Progress) -> None:
        progress.nonfinite_in_a_row = 0

    def judge(self, progress: Progress) -> str:
        """Count one more non-finite update and say what to do: skip, rollback or stop."""
        progress.nonfinite_in_a_row += 1
        action = nonfinite_action(self.policy, progress.nonfinite_in_a_row, progress.rollbacks, self.limit)
        if action == "rollback" and self.snapshot is None:
            action = "stop"  # nothing to return to (cannot happen when mark() ran at the epoch start)
        if action == "skip":
            progress.nonfinite_skipped += 1
        return action

    def rollback(
        self, model: nn.Module, ema: ModelEmaV3 | None, optimizer: Any, scheduler: Any, progress: Progress
    ) -> Progress:
        """Back to the snapshot; the counters of non-finite events carry on and the lr factor is lowered."""
        snap = self.snapshot
        assert snap is not None, "judge() says rollback only with a snapshot"
        model.load_state_dict(snap.model)
        if ema is not None and snap.ema is not None:
            ema.module.load_state_dict(snap.ema)
        optimizer.load_state_dict(snap.optimizer)
        scheduler.load_state_dict(snap.scheduler)
        restored = copy.deepcopy(snap.progress)
        restored.rollbacks = progress.rollbacks + 1
        restored.nonfinite_skipped = progress.nonfinite_skipped
        restored.scaler_skipped = progress.scaler_skipped
        restored.nonfinite_in_a_row = 0
        restored.lr_factor = progress.lr_factor * self.rollback_lr_factor
        return restored
