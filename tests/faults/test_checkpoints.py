"""Checkpoints survive crashes, damage and failed writes: checksums, rotation, SIGKILL mid-save, disk full."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console

import vitkit.train.checkpoint as checkpoint
from tests.conftest import tiny_recipe
from tests.e2e.test_cli import vitkit
from vitkit.checkpoint_files import checkpoint_problem, verify_checkpoint
from vitkit.errors import VitkitError
from vitkit.models.run_model import load_run_model
from vitkit.train.checkpoint import CheckpointWriteError, newest_valid_checkpoint
from vitkit.train.logging import read_metrics
from vitkit.train.loop import resume_recipe, train

QUIET = Console(quiet=True)
THREE_EPOCHS = ("schedule.epochs=3", "train.keep_last=2")


def _meta(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text())


def _damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ckpt") / "run"
    train(tiny_recipe(*THREE_EPOCHS), run, console=QUIET)
    return run


def test_the_last_n_checkpoints_are_kept_with_checksums(three_epochs: Path):
    root = three_epochs / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["best", "last", "last.1"]
    assert (_meta(root / "last")["epoch"], _meta(root / "last.1")["epoch"]) == (3, 2)
    for folder in root.iterdir():
        assert checkpoint_problem(folder) is None
        sums = json.loads((folder / "checksums.json").read_text())
        assert {"model.safetensors", "state.pt", "meta.json"} <= sums.keys()


def test_a_damaged_checkpoint_is_refused_on_load_and_skipped_on_resume(three_epochs: Path, tmp_path: Path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(three_epochs, run)
    _damage(run / "checkpoints" / "last" / "model.safetensors")
    assert "does not match its checksum" in checkpoint_problem(run / "checkpoints" / "last")
    with pytest.raises(VitkitError, match=r"model\.safetensors does not match its checksum"):
        load_run_model(run, "last")
    # best is at least as new as last.1 when it was saved in epoch 2 or 3, and undamaged: resume may use it
    best_is_newer = _meta(run / "checkpoints" / "best")["updates"] >= _meta(run / "checkpoints" / "last.1")["updates"]
    expected = "best" if best_is_newer else "last.1"
    assert newest_valid_checkpoint(run)[0] == run / "checkpoints" / expected
    (run / "checkpoints" / "best" / "state.pt").write_bytes(b"truncated")
    folder, warnings = newest_valid_checkpoint(run)
    assert folder == run / "checkpoints" / "last.1" and len(warnings) == 2
    assert all(w.startswith("skipping checkpoint") for w in warnings)
    # resuming continues from last.1 (epoch 2) and re-runs the third epoch; its first record is dropped
    train(resume_recipe(run), run, resume=True, console=QUIET)
    assert [e["epoch"] for e in read_metrics(run / "metrics.jsonl", "epoch")] == [1, 2, 3]
    assert checkpoint_problem(run / "checkpoints" / "last") is None
    # the damaged best is replaced by the next evaluated epoch, whatever its score, so the run can be evaluated
    assert (
        checkpoint_problem(run / "checkpoints" / "best") is None and _meta(run / "checkpoints" / "best")["epoch"] == 3
    )


def test_a_finished_run_with_a_damaged_best_resumes_to_a_best_it_can_evaluate(three_epochs: Path, tmp_path: Path):
    """No epoch is left to replace the damaged best: before, the resumed run ended on its evaluation's error about
    the damaged checkpoint; now the final epoch's weights become best, and the run evaluates and exports."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(three_epochs, run)
    _damage(run / "checkpoints" / "best" / "model.safetensors")
    result = train(resume_recipe(run), run, resume=True, console=QUIET)
    best = run / "checkpoints" / "best"
    assert checkpoint_problem(best) is None and _meta(best)["epoch"] == 3 and "damaged" in _meta(best)["why"]
    final, resumed = load_run_model(run, "best")[0].state_dict(), load_run_model(run, "last")[0].state_dict()
    assert all(torch.equal(a, b) for a, b in zip(final.values(), resumed.values(), strict=True))
    assert result.evaluation is not None and (run / "eval" / "metrics.json").is_file()
    # the best epoch is recorded for the next resume too: it finds nothing damaged to replace
    assert json.loads((run / "summary.json").read_text())["best_epoch"] == 3


def test_a_failed_save_keeps_the_previous_checkpoint_and_says_so(tmp_path: Path, monkeypatch):
    calls = {"n": 0}
    real_save = checkpoint.save_file

    def disk_full_on_third_save(tensors, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] >= 5:  # epoch 1 wrote best + last (2 files each with EMA); the next save fails
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", disk_full_on_third_save)
    run = tmp_path / "run"
    with pytest.raises(CheckpointWriteError, match=r"No space left on device.*previous checkpoint .* is intact"):
        train(tiny_recipe("schedule.epochs=3"), run, console=QUIET)
    last = run / "checkpoints" / "last"
    verify_checkpoint(last)
    assert _meta(last)["epoch"] == 1
    assert not any(p.name.endswith(".tmp") for p in (run / "checkpoints").iterdir())


CHILD = """
import os, sys, time
from pathlib import Path
import torch
from rich.console import Console
sys.path.insert(0, {root!r})
import vitkit.train.checkpoint as checkpoint
from tests.conftest import tiny_recipe
from vitkit.train.loop import train

real_save = torch.save
saves = {{"n": 0}}

def slow_save(obj, path, *args, **kwargs):
    saves["n"] += Path(path).parent.name == "last.tmp"
    real_save(obj, path, *args, **kwargs)
    if saves["n"] == 2:  # epoch 1 saved last; hang in the middle of epoch 2's save of last
        Path({marker!r}).write_text("saving")
        time.sleep(60)

checkpoint.torch.save = slow_save
train(tiny_recipe("schedule.epochs=3", "ema.enabled=false"), Path({run!r}), console=Console(quiet=True))
"""


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path: Path):
    run, marker = tmp_path / "run", tmp_path / "saving"
    root = str(Path(__file__).resolve().parents[2])
    script = CHILD.format(root=root, marker=str(marker), run=str(run))
    child = subprocess.Popen([sys.executable, "-c", script], cwd=root)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, "the training process ended before the save under test"
            assert time.monotonic() < deadline
            time.sleep(0.1)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    folders = {p.name for p in (run / "checkpoints").iterdir()}
    assert "last.tmp" in folders  # the interrupted save
    folder, warnings = newest_valid_checkpoint(run)
    # last is from epoch 1; best is newer when epoch 2 improved (it is saved just before last)
    assert folder is not None and not warnings
    assert (folder.name, _meta(folder)["epoch"]) in {("last", 1), ("best", 2)}
    model, _, _ = load_run_model(run, "last")
    assert isinstance(model(torch.zeros(1, 3, 16, 16)), torch.Tensor)
    result = train(resume_recipe(run), run, resume=True, console=QUIET)
    # the epoch whose save was killed is trained again from the epoch-1 checkpoint
    assert [e["epoch"] for e in read_metrics(run / "metrics.jsonl", "epoch")] == [1, 2, 3]
    assert result.summary["epochs"] == 3


def test_resume_auto_starts_then_continues_the_same_command(tmp_path: Path):
    run = tmp_path / "run"
    sets = [
        a
        for o in (
            "data.synthetic_train_size=96",
            "data.synthetic_val_size=40",
            "train.batch_size=16",
            "model.img_size=16",
            "model.patch_size=4",
            "model.embed_dim=32",
            "model.depth=2",
            "model.num_heads=2",
            "schedule.warmup_epochs=0",
        )
        for a in ("--set", o)
    ]
    first = vitkit("train", "--out", str(run), "--resume", "auto", *sets, "--set", "schedule.epochs=1")
    assert first.returncode == 0, first.stderr
    assert "no checkpoint" in " ".join(first.stdout.split())
    again = vitkit("train", "--out", str(run), "--resume", "auto", *sets, "--set", "schedule.epochs=2")
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stdout
    assert [e["epoch"] for e in read_metrics(run / "metrics.jsonl", "epoch")] == [1, 2]


def test_best_is_chosen_by_the_recipes_metric(tmp_path: Path):
    result = train(tiny_recipe(*THREE_EPOCHS, "train.best_metric=val_loss"), tmp_path / "run", console=QUIET)
    history = read_metrics(tmp_path / "run" / "metrics.jsonl", "epoch")
    losses = [min(e["val_loss"], e["ema_val_loss"]) for e in history]
    best = losses.index(min(losses))
    assert {k: result.summary["best"][k] for k in ("metric", "value", "epoch")} == {
        "metric": "val_loss",
        "value": min(losses),
        "epoch": best + 1,
    }
    assert result.summary["best"]["why"].startswith(f"epoch {best + 1} (")
    assert "lowest val_loss" in result.summary["best"]["why"]
    meta = _meta(tmp_path / "run" / "checkpoints" / "best")
    assert meta["epoch"] == best + 1
    assert meta["best_source"] == ("ema" if history[best]["ema_val_loss"] < history[best]["val_loss"] else "raw")


def test_top5_on_five_classes_or_fewer_is_refused_before_training(tmp_path: Path):
    from tests.conftest import write_image_folder

    data = write_image_folder(tmp_path / "data")  # 3 classes
    with pytest.raises(VitkitError, match=r"val_top5 needs more than 5 classes \(the data has 3"):
        train(tiny_recipe("train.best_metric=val_top5", f"data.source={data}"), tmp_path / "run", console=QUIET)
    assert not (tmp_path / "run" / "checkpoints").exists()
