"""One run on several processes (DDP through accelerate, gloo on CPU) against the same run on one process.

The processes are started as a launcher starts them (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment);
one test goes through `torchrun` itself. Faults are injected on one process by tests/train/scaleout_entry.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from rich.console import Console

from tests.conftest import PLAIN, TINY_OVERRIDES, save_tiny_pretrained, tiny_recipe
from vitkit.checkpoint_files import load_weights
from vitkit.config.schema import TrainConfig
from vitkit.data.pipeline import train_sampler
from vitkit.errors import VitkitError
from vitkit.train.faults import PREEMPTED_EXIT_CODE
from vitkit.train.logging import read_metrics
from vitkit.train.loop import train
from vitkit.train.scaleout import backend_kwargs, process_batch_size

ROOT = Path(__file__).resolve().parents[2]
QUIET = Console(quiet=True)
TIMEOUT = 240  # seconds for one launch; a hang in a collective fails the test instead of the suite

# every image once per epoch: 96 images = 6 global batches of 16; plain SGD with a large lr so the weights move
# far more than the tolerance; validation after every epoch
RECIPE = [
    *TINY_OVERRIDES,
    *PLAIN,
    "train.global_batch_size=16",
    "train.max_updates=10",
    "ema.enabled=false",
    "optim.name=sgd",
    "optim.lr=0.5",
    "optim.lr_scaling=none",
    "optim.weight_decay=0",
    "train.label_smoothing=0",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def train_args(out: Path, sets: list[str]) -> list[str]:
    return ["train", "--recipe", "quickstart", "--out", str(out), *[a for s in sets for a in ("--set", s)]]


def launch(
    processes: int,
    args: list[str],
    env: dict[str, str] | None = None,
    per_rank: dict[int, list[str]] | None = None,
) -> list[subprocess.CompletedProcess[str]]:
    """`vitkit ARGS` on `processes` processes, each started as torchrun starts its workers."""
    port, procs = _free_port(), []
    for rank in range(processes):
        launcher = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(processes)}
        launcher |= {"LOCAL_WORLD_SIZE": str(processes), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        extra = [a for s in (per_rank or {}).get(rank, []) for a in ("--set", s)]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.train.scaleout_entry", *args, *extra],
                cwd=ROOT,
                env={
                    **os.environ,
                    "OMP_NUM_THREADS": "1",
                    "COLUMNS": "200",
                    **(launcher if processes > 1 else {}),
                    **(env or {}),
                },
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return results


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_weights(run / "checkpoints" / "last" / "model.safetensors")


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def files_of(run: Path) -> set[str]:
    """The run folder's files, without TensorBoard's event-file names (they carry a host name and a time)."""
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and "tensorboard" not in p.parts}


def seen(folder: Path, rank: int) -> list[tuple[int, int]]:
    lines = (folder / f"seen.{rank}").read_text().split()
    return list(zip(map(int, lines[::2]), map(int, lines[1::2]), strict=True))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[str, Path]:
    """The reference: the recipe on one process (SGD and AdamW), with the images each run loaded."""
    root = tmp_path_factory.mktemp("one")
    runs = {}
    for optimizer in ("sgd", "adamw"):
        (root / optimizer).mkdir()
        lr = "optim.lr=0.5" if optimizer == "sgd" else "optim.lr=0.01"
        (result,) = launch(
            1,
            train_args(root / optimizer / "run", [*RECIPE, f"optim.name={optimizer}", lr]),
            {"VITKIT_TEST_SEEN": str(root / optimizer)},
        )
        assert result.returncode == 0, result.stderr
        runs[optimizer] = root / optimizer
    return runs


# --- data ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("repeats", [1, 3])
def test_processes_share_each_global_batch_and_seeds_follow_the_global_position(repeats: int):
    """Process r of w takes positions r, r+w, ...: the k-th batches of all processes are the k-th global batch,
    with the augmentation seeds the single process gives those images."""
    single = train_sampler(48, repeats, seed=5)
    shards = [train_sampler(48, repeats, seed=5, rank=r, world=2) for r in range(2)]
    for epoch, start in ((0, 0), (1, 0), (2, 16)):  # also mid-epoch: start counts global positions
        for s in (single, *shards):
            s.set_epoch(epoch, start)
        reference = list(single)
        parts = [list(s) for s in shards]
        assert sum(len(p) for p in parts) == len(reference) == sum(len(s) for s in shards)
        for k in range(len(reference) // 8):  # global batch 8 = 4 per process
            merged = sorted(parts[0][4 * k : 4 * k + 4] + parts[1][4 * k : 4 * k + 4])
            assert merged == sorted(reference[8 * k : 8 * k + 8])
    for s in (single, *shards):
        s.set_epoch(0)
    if repeats == 1:  # without repeated augmentation every image is in the epoch once
        assert sorted(i for i, _ in single) == list(range(48))
    else:  # DeiT: the repeats of one image go to different processes, each with its own augmentation
        (index_0, seed_0), (index_1, seed_1) = next(iter(shards[0])), next(iter(shards[1]))
        assert index_0 == index_1 and seed_0 != seed_1


def test_global_batch_size_is_shared_out_and_must_divide():
    train = TrainConfig(global_batch_size=64, accumulation_steps=2)
    assert process_batch_size(train, 4) == 8 and process_batch_size(train, 1) == 32
    assert process_batch_size(TrainConfig(batch_size=24), 4) == 24  # no global size: batch_size is per process
    with pytest.raises(VitkitError, match=r"global_batch_size=64 does not divide over 3 processes.*multiple of 6"):
        process_batch_size(train, 3)


def test_a_backend_the_machine_lacks_is_refused_with_the_alternative(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(VitkitError, match=r"train.backend=nccl needs CUDA GPUs.*train.backend=gloo"):
        backend_kwargs(TrainConfig(backend="nccl"), torch.device("cpu"))
    assert backend_kwargs(TrainConfig(backend="auto"), torch.device("cpu")) == []
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what accelerate launch --use_fsdp sets
    with pytest.raises(VitkitError, match=r"asks accelerate for FSDP.*Launch without --use_fsdp"):
        backend_kwargs(TrainConfig(), torch.device("cpu"))


# --- two processes against one -------------------------------------------------------------------------------


@pytest.mark.parametrize(("optimizer", "bound"), [("sgd", 1e-5), ("adamw", 1e-3)])
def test_two_processes_train_the_weights_one_process_trains(optimizer: str, bound: float, one_process, tmp_path: Path):
    """2 x batch 8 against 1 x batch 16, 10 updates: the same images with the same augmentation seeds, each once
    per epoch; the same weights (SGD 1e-5; AdamW divides by the root of a small second moment, so last-bit
    differences in a gradient near zero grow: measured 2.2e-4 at lr 0.01, bound 0.1 x lr); the same validation
    metrics (each image counted once); one writer."""
    lr = "optim.lr=0.5" if optimizer == "sgd" else "optim.lr=0.01"
    args = train_args(tmp_path / "run", [*RECIPE, f"optim.name={optimizer}", lr])
    results = launch(2, args, {"VITKIT_TEST_SEEN": str(tmp_path)})
    assert [r.returncode for r in results] == [0, 0], results[0].stderr + results[1].stderr
    reference = one_process[optimizer]
    ours, theirs = seen(tmp_path, 0) + seen(tmp_path, 1), seen(reference, 0)
    assert Counter(ours) == Counter(theirs) and len(theirs) == 10 * 16
    assert not set(seen(tmp_path, 0)) & set(seen(tmp_path, 1))
    first_epoch = [index for index, _ in theirs[:96]]
    assert sorted(first_epoch) == list(range(96))  # each image once in the full epoch
    after_epoch_1 = load_weights(reference / "run" / "checkpoints" / "last.1" / "model.safetensors")
    assert max_difference(weights(reference / "run"), after_epoch_1) > 10 * bound  # 4 updates move the weights
    assert max_difference(weights(tmp_path / "run"), weights(reference / "run")) < bound
    mine, single = (read_metrics(r / "metrics.jsonl", "epoch") for r in (tmp_path / "run", reference / "run"))
    assert len(mine) == len(single) == 2
    for a, b in zip(mine, single, strict=True):
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-6 and a["val_top1"] == b["val_top1"]
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-5
    assert files_of(tmp_path / "run") == files_of(reference / "run")
    assert "process 1" not in results[1].stdout and results[1].stdout.strip() == ""  # only process 0 speaks


# --- faults across processes ---------------------------------------------------------------------------------


def test_sigterm_to_one_process_stops_both_at_one_update_and_one_process_resumes_exactly(one_process, tmp_path: Path):
    """SIGTERM reaches process 1 only, after update 7 (mid-epoch 2): both stop there with exit 75 and one checkpoint;
    the run then continues on one process (same global batch) and ends with the uninterrupted run's weights."""
    run = tmp_path / "run"
    results = launch(2, train_args(run, RECIPE), {"VITKIT_TEST_SIGTERM": "1:7"})
    assert [r.returncode for r in results] == [PREEMPTED_EXIT_CODE] * 2, results[0].stderr + results[1].stderr
    assert "--resume" in results[0].stderr
    meta = json.loads((run / "checkpoints" / "last" / "meta.json").read_text())
    assert (meta["updates"], meta["epoch"], meta["step_in_epoch"]) == (7, 2, 1)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "last", "last.1"]
    (resumed,) = launch(1, ["train", "--resume", str(run)])
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming on 1 processes a run saved by 2" in resumed.stdout
    assert max_difference(weights(run), weights(one_process["sgd"] / "run")) < 1e-5
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl", "step")]
    assert steps == [r["step"] for r in read_metrics(one_process["sgd"] / "run" / "metrics.jsonl", "step")]


def test_a_nonfinite_loss_on_one_process_skips_the_update_on_both(tmp_path: Path, monkeypatch):
    """Process 1's loss is NaN at step 3 while its gradient stays finite (so DDP's averaging alone would not
    tell process 0): both skip that update, as one process with the NaN at the same step does."""
    results = launch(2, train_args(tmp_path / "two", RECIPE), {"VITKIT_TEST_NAN": "1:3"})
    assert [r.returncode for r in results] == [0, 0], results[0].stderr + results[1].stderr
    (one,) = launch(1, train_args(tmp_path / "one", RECIPE), {"VITKIT_TEST_NAN": "0:3"})
    assert one.returncode == 0, one.stderr
    events = read_metrics(tmp_path / "two" / "metrics.jsonl", "nonfinite")
    assert [(e["step"], e["action"]) for e in events] == [(3, "skip")]
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["updates"] == 9
    assert max_difference(weights(tmp_path / "two"), weights(tmp_path / "one")) < 1e-5


def test_different_recipes_on_the_processes_are_refused_on_all(tmp_path: Path):
    results = launch(2, train_args(tmp_path / "run", RECIPE), per_rank={1: ["optim.lr=0.4"]})
    assert [r.returncode for r in results] == [2, 2]
    assert "given different recipes: process 1 differs from process 0" in results[0].stderr
    assert "lr: 0.5 vs lr: 0.4" in results[0].stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


# --- LoRA and distillation under DDP, through torchrun ------------------------------------------------------


def test_lora_with_a_teacher_under_torchrun_matches_one_process(tmp_path: Path):
    """Frozen backbone, LoRA adapters, a frozen CNN teacher: torchrun with 2 processes trains what one does."""
    pretrained, _ = save_tiny_pretrained(tmp_path / "vit.safetensors")
    teacher = tmp_path / "teacher"
    cnn = ["model.name=resnet10t", "model.patch_size=null", "model.embed_dim=null", "model.depth=null"]
    train(
        tiny_recipe(*PLAIN, *cnn, "model.num_heads=null", "schedule.epochs=1"), teacher, console=QUIET, evaluate=False
    )
    sets = [
        *RECIPE,
        "finetune.strategy=lora",
        f"finetune.pretrained={pretrained}",
        "distill.type=hard",
        f"distill.teacher={teacher}",
    ]
    (one,) = launch(1, train_args(tmp_path / "one", sets))
    assert one.returncode == 0, one.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*torchrun, "-m", "vitkit", *train_args(tmp_path / "two", sets)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    assert "8 x 2 processes x 1 accumulation = 16 per update" in done.stdout
    assert "teacher:" in done.stdout and "lora" in done.stdout
    two, single = weights(tmp_path / "two"), weights(tmp_path / "one")
    assert any("lora_" in k for k in two)  # the checkpoint holds the adapters (and the head)
    assert max_difference(two, single) < 1e-5
