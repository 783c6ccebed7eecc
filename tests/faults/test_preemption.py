"""Preemption with real signals: SIGTERM or SIGINT to `vitkit train` saves at the next step boundary and exits 75;
`--resume auto` then finishes the run exactly as if it had never stopped."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from vitkit.config import load_recipe
from vitkit.train.faults import PREEMPTED_EXIT_CODE
from vitkit.train.loop import train

SETS = (
    "data.synthetic_train_size=320",
    "data.synthetic_val_size=40",
    "train.batch_size=16",
    "train.log_every=1",
    "train.deterministic=true",
    "data.num_workers=0",
    "model.img_size=16",
    "model.patch_size=4",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "schedule.epochs=3",
    "schedule.warmup_epochs=1",
)


def _command(run: Path) -> list[str]:
    sets = [a for s in SETS if s != "train.deterministic=true" for a in ("--set", s)]
    command = [sys.executable, "-m", "vitkit", "train", "--recipe", "quickstart", "--out", str(run), *sets]
    return [*command, "--deterministic"]  # the same as train.deterministic=true in the in-process reference


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("preempt") / "whole"
    train(load_recipe("quickstart", list(SETS)), run, console=Console(quiet=True))
    return run


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_saves_at_the_next_step_and_resume_auto_finishes_the_same_run(
    reference: Path, tmp_path: Path, signum: int
):
    run = tmp_path / "run"
    env = {**os.environ, "COLUMNS": "200"}
    child = subprocess.Popen(_command(run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        metrics = run / "metrics.jsonl"
        while not (metrics.exists() and '"kind": "step"' in metrics.read_text()):
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        child.send_signal(signum)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == PREEMPTED_EXIT_CODE, err
    message = " ".join((out + err).split())
    assert f"{signal.Signals(signum).name} received" in message and f"--resume {run}" in message
    saved = torch.load(run / "checkpoints" / "last" / "state.pt", weights_only=True)["progress"]
    assert 0 < saved["updates"] < 60  # stopped inside the run, not at its end

    again = subprocess.run([*_command(run), "--resume", "auto"], capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stdout
    for name in ("model.safetensors", "ema.safetensors"):
        expected = load_file(reference / "checkpoints" / "last" / name)
        got = load_file(run / "checkpoints" / "last" / name)
        assert all(torch.equal(expected[k], got[k]) for k in expected), name
    assert (run / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
