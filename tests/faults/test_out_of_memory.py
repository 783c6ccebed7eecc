"""A model, batch or image size that does not fit gets the settings to change, and the run's checkpoints stay."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from rich.console import Console

import vitkit.train.loop as loop
from tests.conftest import tiny_recipe
from vitkit.checkpoint_files import checkpoint_problem
from vitkit.errors import OutOfMemory, VitkitError
from vitkit.train.loop import train

QUIET = Console(quiet=True)


def _fails_at_update(n: int, fail: Callable[[], object], monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = loop.train_step, []

    def step(run, batch):
        calls.append(1)
        if len(calls) == n:
            fail()
        return real(run, batch)

    monkeypatch.setattr(loop, "train_step", step)


def test_the_cpu_allocator_running_out_names_the_settings_to_change(tmp_path: Path, monkeypatch):
    """torch.empty of 40 TB fails in the CPU allocator itself, as a too-large batch or model does."""
    _fails_at_update(9, lambda: torch.empty(10**13), monkeypatch)
    run = tmp_path / "run"
    with pytest.raises(OutOfMemory) as error:
        train(tiny_recipe("schedule.epochs=2"), run, console=QUIET)  # 6 updates an epoch: fails in the second
    message = str(error.value)
    assert message.startswith("out of cpu memory (") and "can't allocate memory" in message
    for setting in ("train.batch_size", "train.accumulation_steps", "model.grad_checkpointing", "vitkit plan memory"):
        assert setting in message
    assert isinstance(error.value, VitkitError) and error.value.exit_code == 2  # the CLI prints it, no traceback
    assert "checkpoints already in the run folder are kept" in message
    assert checkpoint_problem(run / "checkpoints" / "last") is None  # the first epoch is still there to resume


def test_a_gpu_out_of_memory_error_is_recognised_by_its_type(tmp_path: Path, monkeypatch):
    def cuda_oom() -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    _fails_at_update(1, cuda_oom, monkeypatch)
    with pytest.raises(OutOfMemory, match=r"Tried to allocate 2\.00 GiB\)\. Lower train\.batch_size") as error:
        train(tiny_recipe(), tmp_path / "run", console=QUIET)
    assert "kept" not in str(error.value)  # nothing was saved yet: no checkpoint is promised
    assert not OutOfMemory.recognise(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
