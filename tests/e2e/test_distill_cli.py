"""Distillation as a user runs it: train a CNN teacher with its recipe, then a distilled DeiT with --teacher."""

import json
from pathlib import Path

from tests.conftest import TINY_OVERRIDES, write_image_folder
from tests.e2e.test_cli import vitkit

FEW_STEPS = ["train.max_updates=4", "schedule.epochs=1", "schedule.warmup_epochs=0"]
VIT_SHAPE = ("model.patch_size", "model.embed_dim", "model.depth", "model.num_heads")


def _sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def test_cnn_teacher_then_distilled_deit_from_the_command_line(tmp_path: Path):
    data = write_image_folder(tmp_path / "images", per_class=12)
    tiny = [o for o in TINY_OVERRIDES if not o.startswith("data.source")] + FEW_STEPS + ["train.batch_size=8"]
    cnn = [o for o in tiny if not o.startswith(VIT_SHAPE)] + ["model.name=resnet10t"]
    teacher = vitkit("train", "--recipe", "cnn-teacher", "--data", str(data), "--out", str(tmp_path / "t"), *_sets(cnn))
    assert teacher.returncode == 0, teacher.stderr

    run = tmp_path / "student"
    args = ["--recipe", "deit-tiny-distilled", "--data", str(data), "--teacher", str(tmp_path / "t"), "--out", str(run)]
    student = vitkit("train", *args, *_sets(tiny))
    assert student.returncode == 0, student.stderr
    printed = " ".join(student.stdout.split())  # rich wraps lines at the terminal width
    assert "teacher:" in printed and "hard distillation on distillation token" in printed
    assert "dist head only" in printed
    accuracy = json.loads((run / "eval" / "metrics.json").read_text())["results"]["accuracy"]
    assert {"top1", "top1_cls_head", "top1_dist_head"} <= accuracy.keys()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["distill"]["type"] == "hard" and str((tmp_path / "t").resolve()) in summary["distill"]["teacher"]

    # a recipe without distillation switches to hard distillation when given a teacher, and says so
    plain = vitkit(
        "train", "--data", str(data), "--teacher", str(tmp_path / "t"), "--out", str(tmp_path / "q"), *_sets(tiny)
    )
    assert plain.returncode == 0, plain.stderr
    printed = " ".join(plain.stdout.split())
    assert "using hard distillation" in printed and "logit distillation" in printed

    wrong = vitkit("train", "--data", str(data), "--teacher", str(tmp_path / "nope"), "--out", str(tmp_path / "w"))
    assert wrong.returncode == 2 and f"--teacher {tmp_path / 'nope'}: no such file or folder" in wrong.stderr
