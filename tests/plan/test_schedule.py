"""`vitkit schedule`: the lr a run will use, against a real run's logged lr and the closed form."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

from rich.console import Console

from tests.conftest import tiny_recipe
from tests.e2e.test_cli import vitkit
from vitkit.config import load_recipe
from vitkit.plan.schedule import lr_schedule, sparkline
from vitkit.train.logging import read_metrics
from vitkit.train.loop import train


def test_the_planned_lr_is_the_lr_a_run_logs(tmp_path: Path):
    """A tiny run logs every step's lr (the lr of the next update): the plan must give the same numbers."""
    cfg = tiny_recipe("train.log_every=1", "schedule.warmup_epochs=0.5", "ema.enabled=false")
    train(cfg, tmp_path / "run", console=Console(quiet=True), evaluate=False)
    logged = [r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl", "step")]
    plan = lr_schedule(cfg, train_size=96)
    assert len(plan.lrs) == 12 == len(logged)  # 96 images / batch 16 = 6 updates x 2 epochs
    for update in range(1, 12):
        assert math.isclose(logged[update - 1], plan.head[update], rel_tol=1e-9)


def test_warmup_and_cosine_by_hand():
    """Linear warmup from warmup_lr to the peak over 3 updates, then cosine to min_lr over the other 27."""
    cfg = load_recipe(
        "deit-tiny",
        ["train.batch_size=10", "schedule.epochs=3", "schedule.warmup_epochs=0.3", "optim.lr=0.5",
         "optim.lr_base_batch=10", "schedule.warmup_lr=0.1", "schedule.min_lr=0.0"],
    )  # fmt: skip
    plan = lr_schedule(cfg, train_size=100)  # 10 updates per epoch
    peak, lrs = 0.5, plan.head
    assert plan.warmup_updates == 3 and len(lrs) == 30
    assert [round(v, 9) for v in lrs[:4]] == [0.1, round(0.1 + 0.4 / 3, 9), round(0.1 + 0.8 / 3, 9), 0.5]
    for u in (3, 10, 18, 29):
        assert math.isclose(lrs[u], 0.5 * peak * (1 + math.cos(math.pi * (u - 3) / 27)), abs_tol=1e-12)


def test_layer_decay_groups_and_lr_scaling_with_processes():
    cfg = load_recipe("deit-tiny", ["finetune.layer_decay=0.5", "schedule.epochs=2", "schedule.warmup_epochs=1"])
    plan = lr_schedule(cfg, train_size=2560)
    at_peak = sorted(set(plan.lrs[plan.warmup_updates]), reverse=True)
    assert len(at_peak) == 14  # stem, 12 blocks, head
    assert all(math.isclose(b / a, 0.5) for a, b in itertools.pairwise(at_peak))
    four = lr_schedule(cfg, train_size=2560, processes=4)  # batch per process: 4x the images per update
    assert math.isclose(four.peak_lr, 4 * plan.peak_lr) and four.global_batch == 4 * plan.global_batch
    fixed = load_recipe("deit-tiny", ["train.global_batch_size=512", "schedule.epochs=2", "schedule.warmup_epochs=1"])
    assert math.isclose(lr_schedule(fixed, 5120, processes=4).peak_lr, lr_schedule(fixed, 5120).peak_lr)


def test_sparkline_spans_the_bars():
    assert sparkline([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]) == "▁▂▃▄▅▆▇█"
    assert len(sparkline([float(i) for i in range(1000)], width=40)) == 40


def test_cli_prints_the_schedule_and_draws_only_over_its_own_plot(tmp_path: Path):
    plot = tmp_path / "plots" / "lr.png"  # a folder that does not exist yet is made
    for _ in range(2):  # a second run replaces the plot it drew
        out = vitkit("schedule", "quickstart", "--plot", str(plot))
        assert out.returncode == 0, out.stderr
    assert "updates (78 per epoch x 25 epochs) of 64 images" in out.stdout and plot.stat().st_size > 1000
    foreign = tmp_path / "photo.png"
    foreign.write_bytes(b"not vitkit's")
    out = vitkit("schedule", "quickstart", "--plot", str(foreign))
    assert out.returncode == 2 and "is not a vitkit schedule plot" in out.stderr
    assert foreign.read_bytes() == b"not vitkit's"
    refused = ((foreign / "lr.png", "photo.png is a file, not a folder"), (plot.with_suffix(".txt"), "a .png"))
    for where, says in refused:
        out = vitkit("schedule", "quickstart", "--plot", str(where))
        assert out.returncode == 2 and says in " ".join(out.stderr.split()), where
    out = vitkit("schedule", "deit-tiny")
    assert out.returncode == 2 and "--train-size N" in out.stderr
