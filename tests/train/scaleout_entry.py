"""`vitkit` as one process of a multi-process run, with faults injected on one process for the tests.

Run as `python -m tests.train.scaleout_entry ARGS...` with the launcher's environment (RANK, WORLD_SIZE, ...).
VITKIT_TEST_NAN="RANK:STEP,STEP": that process's loss is NaN at those steps (from 1); its gradient stays finite.
VITKIT_TEST_SIGTERM="RANK:UPDATE": that process sends itself SIGTERM right after that optimizer update.
VITKIT_TEST_SEEN=DIR: each process appends the index and augmentation seed of every training image it loads to
DIR/seen.RANK.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import torch

import vitkit.data.pipeline as pipeline
import vitkit.train.step as step
import vitkit.train.tasks as tasks
from vitkit.cli import main
from vitkit.train.losses import LossParts

RANK = int(os.environ.get("RANK", "0"))


def _for_this_rank(name: str) -> list[int]:
    value = os.environ.get(name, "")
    if not value or int(value.split(":")[0]) != RANK:
        return []
    return [int(v) for v in value.split(":")[1].split(",")]


def _inject_nan(steps: list[int]) -> None:
    original, calls = tasks.training_loss, [0]

    def nan_at(*args, **kwargs) -> LossParts:
        parts = original(*args, **kwargs)
        calls[0] += 1
        if calls[0] not in steps:
            return parts
        # a NaN loss whose gradient is finite: only this process can tell that the step went wrong
        return LossParts(parts.total + torch.tensor(float("nan")), parts.task, parts.distill)

    tasks.training_loss = nan_at


def _sigterm_after(update: int) -> None:
    original, updates = step.train_step, [0]

    def signalling(run, batch):
        outcome = original(run, batch)
        updates[0] += outcome.updated
        if outcome.updated and updates[0] == update:
            os.kill(os.getpid(), signal.SIGTERM)
        return outcome

    step.train_step = signalling
    import vitkit.train.loop as loop

    loop.train_step = signalling


def _record_seen(folder: Path) -> None:
    """Every training image this process loads, with its augmentation seed: `index seed` lines."""
    original = pipeline.ImageDataset.__getitems__

    def recording(self, keys):
        if keys and isinstance(keys[0], tuple):  # training keys; validation loads by plain index
            with (folder / f"seen.{RANK}").open("a") as f:
                f.writelines(f"{index} {seed}\n" for index, seed in keys)
        return original(self, keys)

    pipeline.ImageDataset.__getitems__ = recording


if __name__ == "__main__":
    if steps := _for_this_rank("VITKIT_TEST_NAN"):
        _inject_nan(steps)
    if update := _for_this_rank("VITKIT_TEST_SIGTERM"):
        _sigterm_after(update[0])
    if seen := os.environ.get("VITKIT_TEST_SEEN"):
        _record_seen(Path(seen))
    main()
