"""Exact resume: a run stopped at any update, mid-epoch included, and resumed ends bitwise like the run that never
stopped (CPU, deterministic mode), with accumulation, EMA, Mixup/CutMix and the data augmentations on."""

from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from tests.conftest import tiny_recipe
from vitkit.train.checkpoint import Progress
from vitkit.train.faults import TrainingPreempted
from vitkit.train.loop import resume_recipe, train

QUIET = Console(quiet=True)
# 96 images / batch 16 = 6 steps per epoch = 3 updates of 2 accumulated steps; 2 epochs = 6 updates
EVERYTHING_ON = (
    "train.accumulation_steps=2",
    "train.deterministic=true",
    "train.log_every=1",
    "augment.mixup=0.8",
    "augment.cutmix=1.0",
    "augment.mix_prob=1.0",
    "augment.randaugment=rand-m9-mstd0.5",
    "augment.random_erasing=0.5",
    "model.drop_path_rate=0.1",
    "ema.decay=0.9",
)


def _final_state(run: Path) -> dict[str, torch.Tensor]:
    last = run / "checkpoints" / "last"
    state = {f"model.{k}": v for k, v in load_file(last / "model.safetensors").items()}
    state |= {f"ema.{k}": v for k, v in load_file(last / "ema.safetensors").items()}
    optimizer = torch.load(last / "state.pt", weights_only=True)["optimizer"]["state"]
    for index, moments in optimizer.items():
        state |= {f"opt.{index}.{k}": v for k, v in moments.items() if isinstance(v, torch.Tensor)}
    return state


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("resume") / "whole"
    train(tiny_recipe(*EVERYTHING_ON), run, console=QUIET)
    return run


@pytest.mark.parametrize("stop_after_update", [1, 3, 4])  # mid epoch 0, at the end of epoch 0, mid epoch 1
def test_a_run_stopped_and_resumed_ends_bitwise_like_the_uninterrupted_one(
    uninterrupted: Path, tmp_path: Path, stop_after_update: int
):
    run = tmp_path / "run"

    def stop(progress: Progress) -> bool:
        return progress.updates >= stop_after_update

    with pytest.raises(TrainingPreempted, match=r"--resume"):
        train(tiny_recipe(*EVERYTHING_ON), run, console=QUIET, should_stop=stop)
    saved = torch.load(run / "checkpoints" / "last" / "state.pt", weights_only=True)["progress"]
    assert saved["updates"] == stop_after_update
    assert saved["step_in_epoch"] == (2 * stop_after_update) % 6  # 2 steps per update, 6 per epoch
    train(resume_recipe(run), run, resume=True, console=QUIET)

    expected, got = _final_state(uninterrupted), _final_state(run)
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert torch.equal(tensor, got[name]), name
    assert (run / "metrics.jsonl").read_text() == (uninterrupted / "metrics.jsonl").read_text()


def test_two_deterministic_runs_write_identical_metrics(uninterrupted: Path, tmp_path: Path):
    train(tiny_recipe(*EVERYTHING_ON), tmp_path / "again", console=QUIET)
    text = (tmp_path / "again" / "metrics.jsonl").read_text()
    assert text == (uninterrupted / "metrics.jsonl").read_text()
    assert text.count('"kind": "step"') == 12 and text.count('"kind": "epoch"') == 2
    assert not torch.are_deterministic_algorithms_enabled()  # the setting is put back after the run


def test_a_stop_during_the_last_epoch_end_finishes_normally(tmp_path: Path):
    """A stop asked for at the very last update has nothing left to save for: the run just ends."""
    result = train(tiny_recipe(), tmp_path / "run", console=QUIET, should_stop=lambda p: p.updates >= 12)
    assert result.summary["epochs"] == 2
