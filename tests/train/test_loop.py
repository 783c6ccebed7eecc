"""Whole training runs on tiny models and data (seconds each)."""

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from tests.conftest import PLAIN, tiny_recipe
from vitkit.checkpoint_files import load_weights
from vitkit.errors import RecipeError, VitkitError
from vitkit.train.logging import read_metrics
from vitkit.train.loop import resume_recipe, train

QUIET = Console(quiet=True)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_recipe("schedule.epochs=3"), run, console=QUIET)
    return run


def test_run_folder_holds_recipe_metrics_tensorboard_checkpoints_summary(finished_run: Path):
    assert (finished_run / "recipe.yaml").exists() and (finished_run / "summary.json").exists()
    steps = read_metrics(finished_run / "metrics.jsonl", "step")
    epochs = read_metrics(finished_run / "metrics.jsonl", "epoch")
    timing = read_metrics(finished_run / "timing.jsonl")
    assert {"loss", "lr", "grad_norm", "epoch"} <= set(steps[0])
    assert [t["step"] for t in timing] == [s["step"] for s in steps]  # throughput beside each logged step
    assert all(0.0 <= t["data_wait"] <= 1.0 and t["img_per_s"] > 0 for t in timing)
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert {"val_top1", "val_top5", "val_loss", "ema_val_top1", "ema_val_top5", "train_loss"} <= set(epochs[-1])
    assert list((finished_run / "tensorboard").glob("events.out.tfevents.*"))
    for which in ("last", "best"):
        folder = finished_run / "checkpoints" / which
        files = {"model.safetensors", "ema.safetensors", "state.pt", "meta.json", "checksums.json"}
        assert {p.name for p in folder.iterdir()} == files


def test_lr_in_the_log_follows_the_schedule(finished_run: Path):
    steps = read_metrics(finished_run / "metrics.jsonl", "step")
    lrs = [s["lr"] for s in steps]
    peak = max(lrs)
    assert peak <= tiny_recipe().effective_lr() + 1e-12
    assert lrs[-1] < peak / 10  # cosine has decayed at the end


def test_ema_differs_from_raw_weights(finished_run: Path):
    last = finished_run / "checkpoints" / "last"
    raw, ema = load_weights(last / "model.safetensors"), load_weights(last / "ema.safetensors")
    assert raw.keys() == ema.keys()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)


def test_existing_run_folder_is_not_overwritten_by_accident(finished_run: Path):
    with pytest.raises(VitkitError, match="--resume"):
        train(tiny_recipe(), finished_run, console=QUIET)


def test_resume_after_a_stop_matches_the_uninterrupted_run(tmp_path: Path, finished_run: Path):
    run = tmp_path / "stopped"
    recipe = tiny_recipe("schedule.epochs=3")
    steps_per_epoch = 96 // 16
    train(
        recipe.model_copy(update={"train": recipe.train.model_copy(update={"max_updates": 2 * steps_per_epoch})}),
        run,
        console=QUIET,
    )
    assert len(read_metrics(run / "metrics.jsonl", "epoch")) == 2
    said = Console(record=True, width=200, file=io.StringIO())
    train(resume_recipe(run, ["train.max_updates=null"]), run, resume=True, console=said)
    assert [e["epoch"] for e in read_metrics(run / "metrics.jsonl", "epoch")] == [1, 2, 3]
    # the recipe.yaml rewritten for the rest of the run no longer shows the first part's value: the log does
    assert f"changed on resume: train.max_updates {2 * steps_per_epoch} -> None" in said.export_text()
    assert "changed on resume" not in _resumed_output(run)  # the same recipe again: nothing to say
    resumed = load_weights(run / "checkpoints" / "last" / "model.safetensors")
    reference = load_weights(finished_run / "checkpoints" / "last" / "model.safetensors")
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], atol=1e-6, rtol=1e-5)


def _resumed_output(run: Path) -> str:
    """What resuming a finished run with its own recipe prints (it trains nothing more)."""
    said = Console(record=True, width=200, file=io.StringIO())
    train(resume_recipe(run), run, resume=True, console=said)
    return said.export_text()


def test_gradient_accumulation_matches_the_large_batch(tmp_path: Path):
    # SGD, not AdamW: Adam's update is nearly invariant to the gradient's scale, so it would hide a missing division
    # by the accumulation steps; SGD's update is proportional to it
    common = [*PLAIN, "train.max_updates=1", "schedule.epochs=2", "ema.enabled=false", "optim.clip_grad=null"]
    common += ["optim.name=sgd", "optim.lr=0.5"]
    big = tiny_recipe(*common, "train.batch_size=32")
    small = tiny_recipe(*common, "train.batch_size=16", "train.accumulation_steps=2")
    assert big.effective_lr() == small.effective_lr()
    train(big, tmp_path / "big", console=QUIET)
    train(small, tmp_path / "small", console=QUIET)
    a = load_weights(tmp_path / "big" / "checkpoints" / "last" / "model.safetensors")
    b = load_weights(tmp_path / "small" / "checkpoints" / "last" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5)
    torch.manual_seed(0)  # the initial weights (same seed) differ from the trained ones: an update happened
    from vitkit.models.build import build_model

    init = build_model(big.model, 10).state_dict()
    assert not torch.allclose(init["head.weight"], a["head.weight"])


def test_gradient_clipping_bounds_the_update(tmp_path: Path):
    common = [
        *PLAIN,
        "train.max_updates=1",
        "ema.enabled=false",
        "optim.name=sgd",
        "optim.momentum=0",
        "optim.weight_decay=0",
        "optim.lr_scaling=none",
        "optim.lr=1.0",
    ]
    torch.manual_seed(0)
    from vitkit.models.build import build_model

    recipe = tiny_recipe(*common, "optim.clip_grad=0.01")
    torch.manual_seed(recipe.train.seed)
    init = build_model(recipe.model, 10).state_dict()
    train(recipe, tmp_path / "clip", console=QUIET)
    after = load_weights(tmp_path / "clip" / "checkpoints" / "last" / "model.safetensors")
    delta = torch.sqrt(sum(((after[k] - init[k]) ** 2).sum() for k in init))
    assert float(delta) == pytest.approx(0.01, rel=1e-3)  # SGD, lr 1: the step is the clipped gradient


def test_bf16_on_cpu_trains_when_asked(tmp_path: Path):
    result = train(
        tiny_recipe("train.precision=bf16", "schedule.epochs=1", "schedule.warmup_epochs=0", "train.max_updates=2"),
        tmp_path / "bf16",
        console=QUIET,
    )
    assert result.summary["precision"] == "bf16" and result.summary["updates"] == 2
    losses = [s["loss"] for s in read_metrics(tmp_path / "bf16" / "metrics.jsonl", "step")]
    assert losses and all(math.isfinite(v) for v in [*losses, result.summary["final"]["val_loss"]])


def test_fp16_on_cpu_is_refused_before_training(tmp_path: Path):
    with pytest.raises(RecipeError, match="fp16 needs a CUDA GPU"):
        train(tiny_recipe("train.precision=fp16"), tmp_path / "fp16", console=QUIET)
    assert not (tmp_path / "fp16" / "checkpoints").exists()


def test_batch_larger_than_dataset_is_a_clear_error(tmp_path: Path):
    with pytest.raises(VitkitError, match="larger than the training set"):
        train(tiny_recipe("train.batch_size=512"), tmp_path / "big", console=QUIET)


def test_compile_and_channels_last_train_like_eager(tmp_path: Path):
    """torch.compile (inductor, on CPU) and channels-last inputs change speed, not what is learned."""
    common = [*PLAIN, "train.max_updates=3", "schedule.epochs=2", "ema.enabled=false"]
    train(tiny_recipe(*common), tmp_path / "eager", console=QUIET)
    train(tiny_recipe(*common, "model.compile=true", "model.channels_last=true"), tmp_path / "fast", console=QUIET)
    eager = load_weights(tmp_path / "eager" / "checkpoints" / "last" / "model.safetensors")
    fast = load_weights(tmp_path / "fast" / "checkpoints" / "last" / "model.safetensors")
    assert eager.keys() == fast.keys()
    for key in eager:
        torch.testing.assert_close(fast[key], eager[key], atol=1e-4, rtol=1e-3)


def test_an_accuracy_tie_goes_to_the_lower_validation_loss():
    from vitkit.train.checkpoint import Progress
    from vitkit.train.checkpointer import improves

    best_so_far = Progress(best_metric=1.0, best_epoch=2, best_val_loss=0.5)  # 100% top-1 already at epoch 2
    assert improves(1.0, {"val_loss": 0.3}, best_so_far, "val_top1")
    assert not improves(1.0, {"val_loss": 0.7}, best_so_far, "val_top1")
    assert not improves(0.9, {"val_loss": 0.01}, best_so_far, "val_top1")
    assert improves(0.4, {"val_loss": 0.4}, Progress(best_metric=0.5, best_epoch=1), "val_loss")


def test_the_best_checkpoint_says_why_it_was_chosen():
    from vitkit.train.checkpointer import best_reason

    history = [
        {"epoch": 1, "val_top1": 0.50, "val_loss": 1.0},
        {"epoch": 2, "val_top1": 1.00, "val_loss": 0.40},
        {"epoch": 3, "val_top1": 0.75, "val_loss": 0.6, "ema_val_top1": 1.00, "ema_val_loss": 0.2},
    ]
    assert best_reason(history, history[2], "val_top1") == (
        "epoch 3 (raw weights) has the highest val_top1 (100.00%) of the 3 evaluated epochs so far; 2 epochs tie on "
        "it, and this one has the lowest validation loss"
    ).replace("raw", "EMA")
    assert best_reason(history[:2], history[0], "val_loss") == (
        "epoch 1 (raw weights) has the lowest val_loss (1.0000) of the 2 evaluated epochs so far"
    )


def test_the_logged_lr_is_the_peak_not_the_stems_under_layer_decay(tmp_path: Path):
    """With layer decay 0.5 the stem's group runs at 0.5^(depth + 1) of the head's lr: the step records carry the
    head's (the schedule's own value), and TensorBoard gets every group's."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = tiny_recipe(*PLAIN, "finetune.layer_decay=0.5", "schedule.epochs=2", "ema.enabled=false")
    train(recipe, tmp_path / "run", console=QUIET)
    steps = read_metrics(tmp_path / "run" / "metrics.jsonl", "step")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    groups = [tag for tag in events.Tags()["scalars"] if tag.startswith("lr/group_")]
    assert len(groups) >= 2
    for record in steps:
        per_group = [next(e.value for e in events.Scalars(tag) if e.step == record["step"]) for tag in groups]
        assert record["lr"] == pytest.approx(max(per_group), rel=1e-6)
        assert min(per_group) == pytest.approx(max(per_group) * 0.5**3, rel=1e-5)  # depth 2: stem at 0.5^3


def test_the_summary_says_which_ema_decay_was_reached(tmp_path: Path):
    """timm's warmup ramps the decay as 1 - (1 + t/gamma)^-power (gamma 1, power 2/3 by default): after the few
    updates of a tiny run it is far from 0.998; without warmup the configured decay is used from the start."""
    ramped = train(tiny_recipe("ema.decay=0.998", "ema.warmup=true"), tmp_path / "warm", console=QUIET).summary
    updates = ramped["updates"]
    assert ramped["ema"]["reached"] == pytest.approx(1 - (1 + (updates - 1)) ** (-2 / 3))
    plain = train(tiny_recipe("ema.decay=0.998", "ema.warmup=false"), tmp_path / "plain", console=QUIET).summary
    assert plain["ema"] == {"decay": 0.998, "warmup": False, "reached": 0.998}


def test_training_validation_and_vitkit_evaluate_score_a_checkpoint_the_same(tmp_path: Path):
    """One eval pixel path: training validates on the original images through the eval transform, as `vitkit
    evaluate` does, even when the training images are decoded and downsized into memory (data.cache=memory)."""
    from PIL import Image

    from vitkit.evaluate.run import evaluate_run

    rng = np.random.default_rng(0)
    for i, name in enumerate(("cat", "dog", "fox")):
        (tmp_path / "images" / name).mkdir(parents=True)
        for j in range(8):  # 90 x 70: larger than the cache's 2 x img_size, so a cached copy would be resized
            pixels = rng.integers(0, 200, size=(70, 90, 3), dtype=np.uint8)
            pixels[::3, ::3, i] = 255
            Image.fromarray(pixels).save(tmp_path / "images" / name / f"{j}.png")
    recipe = tiny_recipe(*PLAIN, "ema.enabled=false", "schedule.epochs=1", "data.cache=memory", "train.batch_size=4")
    recipe.data.source = str(tmp_path / "images")
    result = train(recipe, tmp_path / "run", console=QUIET, evaluate=False)
    epoch = read_metrics(tmp_path / "run" / "metrics.jsonl", "epoch")[-1]
    doc, _ = evaluate_run(tmp_path / "run", only="accuracy")
    assert result.summary["best_epoch"] == 1
    assert doc["results"]["accuracy"]["nll"] == pytest.approx(epoch["val_loss"], rel=1e-6)
    assert doc["results"]["accuracy"]["top1"] == pytest.approx(epoch["val_top1"], abs=1e-9)
