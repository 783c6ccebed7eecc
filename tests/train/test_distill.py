"""Distillation inside whole training runs: a CNN teacher trained here teaches tiny ViT students."""

from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from safetensors.torch import save_file

import vitkit.train.setup as setup
from tests.conftest import PLAIN as BASE_PLAIN
from tests.conftest import tiny_recipe, tiny_vit
from vitkit.checkpoint_files import load_weights
from vitkit.data.pipeline import BatchAugment
from vitkit.errors import VitkitError
from vitkit.models.run_model import load_run_model
from vitkit.models.teacher import Teacher, load_teacher
from vitkit.train.logging import read_metrics
from vitkit.train.loop import resume_recipe, train

QUIET = Console(quiet=True)
PLAIN = [
    *BASE_PLAIN,
    "ema.enabled=false",
    "train.label_smoothing=0",
    "optim.lr=1e-3",
    "optim.lr_scaling=none",
]
CNN = [
    "model.name=resnet10t",
    "model.patch_size=null",
    "model.embed_dim=null",
    "model.depth=null",
    "model.num_heads=null",
]
DISTILLED_VIT = "model.name=deit_tiny_distilled_patch16_224"


def colour_classes(n: int, seed: int, label_noise: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """16-px noise images whose class is a faint colour cast (red, green, blue or grey); labels optionally noisy."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    images = rng.integers(0, 120, size=(n, 16, 16, 3)).astype(np.uint8)
    for i, c in enumerate(labels):
        if c < 3:
            images[i, ..., c] += 35
        else:
            images[i] += 20
    noisy = labels.copy()
    flip = rng.random(n) < label_noise
    noisy[flip] = rng.integers(0, 4, int(flip.sum()))
    return images, labels, noisy


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Clean and noisy-label copies of one training set (80% of labels redrawn at random), same clean val set."""
    root = tmp_path_factory.mktemp("colours")
    x, y, noisy = colour_classes(256, seed=0, label_noise=0.8)
    x_val, y_val, _ = colour_classes(200, seed=1)
    classes = np.array(["red", "green", "blue", "grey"])
    for name, labels in (("clean", y), ("noisy", noisy)):
        np.savez(root / f"{name}.npz", x_train=x, y_train=labels, x_val=x_val, y_val=y_val, classes=classes)
    return {"clean": root / "clean.npz", "noisy": root / "noisy.npz", "root": root}


@pytest.fixture(scope="module")
def teacher_run(data: dict[str, Path]) -> Path:
    """A ResNet teacher trained on the clean labels (it reaches 100% on this task)."""
    run = data["root"] / "teacher"
    result = train(tiny_recipe(*PLAIN, *CNN, f"data.source={data['clean']}", "schedule.epochs=3"), run, console=QUIET)
    assert result.summary["final"]["val_top1"] > 0.95
    return run


def test_a_strong_teacher_lifts_the_student_above_training_alone(data, teacher_run, tmp_path: Path):
    """Students see the noisy labels; the teacher's predictions carry the signal the labels lost."""
    common = [*PLAIN, DISTILLED_VIT, f"data.source={data['noisy']}", "train.max_updates=40", "schedule.epochs=30"]
    accuracy = {}
    for kind, extra in {
        "none": [],
        "hard": ["distill.type=hard", f"distill.teacher={teacher_run}"],
        "soft": ["distill.type=soft", "distill.tau=2", f"distill.teacher={teacher_run}"],
    }.items():
        result = train(tiny_recipe(*common, *extra), tmp_path / kind, console=QUIET)
        accuracy[kind] = result.summary["final"]["val_top1"]
    assert accuracy["hard"] > accuracy["none"] + 0.3, accuracy
    assert accuracy["soft"] > accuracy["none"] + 0.3, accuracy
    steps = read_metrics(tmp_path / "hard" / "metrics.jsonl", "step")
    assert all("task_loss" in s and "distill_loss" in s for s in steps)
    final = read_metrics(tmp_path / "hard" / "metrics.jsonl", "epoch")[-1]
    assert {"val_top1", "val_top1_cls_head", "val_top1_dist_head"} <= final.keys()


def test_teacher_stays_frozen_with_mixup_accumulation_and_ema(data, teacher_run, tmp_path: Path, monkeypatch):
    """The ResNet teacher's parameters and BatchNorm statistics are bitwise unchanged after training."""
    loaded: list[tuple[Teacher, dict[str, torch.Tensor]]] = []

    def recording_load(*args, **kwargs) -> Teacher:
        teacher = load_teacher(*args, **kwargs)
        loaded.append((teacher, {k: v.clone() for k, v in teacher.module.state_dict().items()}))
        return teacher

    monkeypatch.setattr(setup, "load_teacher", recording_load)
    student_inputs: list[torch.Tensor] = []
    teacher_inputs: list[torch.Tensor] = []
    augment, logits = BatchAugment.__call__, Teacher.logits

    def recording_augment(self: BatchAugment, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, targets = augment(self, *args)
        student_inputs.append(x.clone())
        return x, targets

    def recording_logits(self: Teacher, x: torch.Tensor, *norm: torch.Tensor) -> torch.Tensor:
        teacher_inputs.append(x.clone())
        return logits(self, x, *norm)

    monkeypatch.setattr(BatchAugment, "__call__", recording_augment)
    monkeypatch.setattr(Teacher, "logits", recording_logits)
    recipe = tiny_recipe(
        DISTILLED_VIT,
        f"data.source={data['clean']}",
        f"distill.teacher={teacher_run}",
        "distill.type=soft",
        "augment.mixup=0.8",
        "augment.cutmix=1.0",
        "train.accumulation_steps=2",
        "ema.enabled=true",
        "train.max_updates=4",
    )
    result = train(recipe, tmp_path / "run", console=QUIET)
    ((teacher, before),) = loaded
    after = teacher.module.state_dict()
    assert before.keys() == after.keys() and any("running_mean" in k for k in after)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not teacher.module.training and not any(p.requires_grad for p in teacher.module.parameters())
    assert result.summary["updates"] == 4 and result.summary["distill"]["type"] == "soft"
    assert "ema_val_top1_dist_head" in result.summary["final"]
    # the teacher saw exactly the student's mixed batches (Mixup/CutMix at probability 1 mixes every batch)
    assert len(teacher_inputs) == len(student_inputs) == 8
    assert all(torch.equal(s, t) for s, t in zip(student_inputs, teacher_inputs, strict=True))


def test_teacher_runs_in_the_students_precision(data, teacher_run, tmp_path: Path, monkeypatch):
    dtypes: list[torch.dtype] = []
    original = Teacher.logits

    def recording_logits(self: Teacher, *args: torch.Tensor) -> torch.Tensor:
        logits = original(self, *args)
        dtypes.append(logits.dtype)
        return logits

    monkeypatch.setattr(Teacher, "logits", recording_logits)
    recipe = [*PLAIN, DISTILLED_VIT, f"data.source={data['clean']}", f"distill.teacher={teacher_run}"]
    train(
        tiny_recipe(*recipe, "distill.type=soft", "train.precision=bf16", "train.max_updates=2"),
        tmp_path / "bf16",
        console=QUIET,
    )
    assert dtypes == [torch.bfloat16, torch.bfloat16]
    dtypes.clear()
    train(
        tiny_recipe(*recipe, "distill.type=soft", "train.precision=fp32", "train.max_updates=2"),
        tmp_path / "fp32",
        console=QUIET,
    )
    assert dtypes == [torch.float32, torch.float32]


def test_resume_with_distillation_matches_the_uninterrupted_run(data, teacher_run, tmp_path: Path):
    recipe = [DISTILLED_VIT, f"data.source={data['clean']}", f"distill.teacher={teacher_run}", "distill.type=hard"]
    train(tiny_recipe(*recipe, "schedule.epochs=2"), tmp_path / "full", console=QUIET)
    train(tiny_recipe(*recipe, "schedule.epochs=2", "train.max_updates=16"), tmp_path / "stopped", console=QUIET)
    train(
        resume_recipe(tmp_path / "stopped", ["train.max_updates=null"]),
        tmp_path / "stopped",
        resume=True,
        console=QUIET,
    )
    resumed = load_weights(tmp_path / "stopped" / "checkpoints" / "last" / "model.safetensors")
    reference = load_weights(tmp_path / "full" / "checkpoints" / "last" / "model.safetensors")
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], atol=1e-6, rtol=1e-5)


def test_lora_fine_tuning_of_a_pretrained_distilled_student(data, teacher_run, tmp_path: Path):
    student = tiny_vit(num_classes=4, name="deit_tiny_distilled_patch16_224")
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(tmp_path / "student.safetensors"))
    recipe = tiny_recipe(
        *PLAIN,
        DISTILLED_VIT,
        f"data.source={data['clean']}",
        f"finetune.pretrained={tmp_path / 'student.safetensors'}",
        "finetune.strategy=lora",
        f"distill.teacher={teacher_run}",
        "distill.type=hard",
        "train.max_updates=6",
    )
    train(recipe, tmp_path / "lora", console=QUIET)
    model, _, _ = load_run_model(tmp_path / "lora")
    trained = model.state_dict()
    assert not torch.equal(trained["head_dist.weight"], student.state_dict()["head_dist.weight"])
    assert not torch.equal(trained["blocks.0.attn.qkv.weight"], student.state_dict()["blocks.0.attn.qkv.weight"])
    assert torch.equal(trained["blocks.0.mlp.fc1.weight"], student.state_dict()["blocks.0.mlp.fc1.weight"])


def test_distillation_settings_are_checked_before_training(data, teacher_run, tmp_path: Path):
    base = [DISTILLED_VIT, f"data.source={data['clean']}"]
    with pytest.raises(VitkitError, match="needs a teacher: pass --teacher"):
        train(tiny_recipe(*base, "distill.type=hard"), tmp_path / "a", console=QUIET)
    with pytest.raises(VitkitError, match=r"distill\.type is none"):
        train(tiny_recipe(*base, f"distill.teacher={teacher_run}"), tmp_path / "b", console=QUIET)
    other = tmp_path / "three.npz"
    x, y, _ = colour_classes(64, seed=2)
    np.savez(other, x_train=x, y_train=y % 3, classes=np.array(["red", "green", "blue"]))
    with pytest.raises(VitkitError, match="predicts 4 classes but the data has 3"):
        train(
            tiny_recipe(DISTILLED_VIT, f"data.source={other}", f"distill.teacher={teacher_run}", "distill.type=hard"),
            tmp_path / "c",
            console=QUIET,
        )
    renamed = tmp_path / "renamed.npz"
    np.savez(renamed, x_train=x, y_train=y, classes=np.array(["grey", "red", "green", "blue"]))
    with pytest.raises(VitkitError, match="trained on classes"):
        train(
            tiny_recipe(DISTILLED_VIT, f"data.source={renamed}", f"distill.teacher={teacher_run}", "distill.type=hard"),
            tmp_path / "d",
            console=QUIET,
        )
    weights = teacher_run / "checkpoints" / "best" / "model.safetensors"
    with pytest.raises(VitkitError, match="does not say its architecture"):
        load_teacher(str(weights))
    teacher = load_teacher("resnet10t", str(weights), img_size=16)  # the same weights, architecture named
    assert teacher.num_classes == 4
