"""Load a distillation teacher: a vitkit run, a timm name (+ weights file), or a timm/transformers model folder.

The teacher is wrapped in timm's `DistillationTeacher`, which keeps it in eval mode and converts the student's
normalised input to the teacher's normalisation (e.g. a teacher trained with ImageNet mean/std teaching a student
normalised with its dataset's statistics). Its parameters never receive gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from timm.task.distillation import DistillationTeacher
from torch import nn

from vitkit.config.schema import IMAGENET_MEAN, IMAGENET_STD, ModelConfig
from vitkit.errors import VitkitError
from vitkit.models.build import build_model
from vitkit.models.convert import WEIGHT_SUFFIXES
from vitkit.models.pretrained import Norm, pretrained_normalization, resolve_pretrained, with_architecture


@dataclass
class Teacher:
    """A frozen teacher, the classes it predicts (in order, where known) and where it came from."""

    module: DistillationTeacher
    num_classes: int
    classes: list[str] | None
    description: str

    def logits(self, x: torch.Tensor, student_mean: torch.Tensor, student_std: torch.Tensor) -> torch.Tensor:
        """Teacher logits for a batch normalised for the student (no gradient)."""
        with torch.no_grad():
            return self.module(self.module.normalize_input(x, student_mean, student_std))


def load_teacher(source: str, checkpoint: str | None = None, img_size: int = 224) -> Teacher:
    """The teacher named by `distill.teacher` (and `distill.teacher_checkpoint`), at the student's image size."""
    path = Path(source).expanduser()
    if path.is_dir() and ((path / "recipe.yaml").exists() or (path / "meta.json").exists()):
        if checkpoint:
            raise VitkitError("distill.teacher_checkpoint applies to a timm model name, not to a vitkit run folder.")
        return _from_run(path)
    if path.is_file() and checkpoint is None:
        raise VitkitError(
            f"distill.teacher={source} is a weights file, which does not say its architecture: set "
            f"distill.teacher to the timm model name and distill.teacher_checkpoint={source}."
        )
    cfg = ModelConfig(name=source, img_size=img_size)
    if checkpoint is not None:
        file = Path(checkpoint).expanduser()
        if not file.is_file() or file.suffix not in WEIGHT_SUFFIXES:
            raise VitkitError(
                f"distill.teacher_checkpoint={checkpoint}: no such weights file (.safetensors or .pth). Check the path."
            )
        weights = resolve_pretrained(str(file), cfg, option="distill.teacher_checkpoint")
    else:
        weights = resolve_pretrained(source, cfg, option="--teacher")
    cfg = with_architecture(cfg, weights)
    num_classes = weights.num_classes or _hub_classes(cfg.name)
    model = build_model(cfg, num_classes, pretrained=weights)
    mean, std = pretrained_normalization(model, weights) or (IMAGENET_MEAN, IMAGENET_STD)
    label = f"{source} + {checkpoint}" if checkpoint else source
    return _wrap(model, mean, std, num_classes, None, label)


def _from_run(path: Path) -> Teacher:
    from vitkit.models.run_model import load_run_or_checkpoint

    model, recipe, info = load_run_or_checkpoint(path)
    mean, std = recipe.data.normalization()
    label = f"{path} ({recipe.model.name}, {info['checkpoint']})"
    return _wrap(model, mean, std, int(info["num_classes"]), info.get("classes"), label)


def _hub_classes(name: str) -> int:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name.split(":")[-1])
    return int(cfg.num_classes) if cfg is not None and cfg.num_classes else 1000


def _wrap(model: nn.Module, mean: Norm, std: Norm, num_classes: int, classes: list[str] | None, label: str) -> Teacher:
    model.requires_grad_(False)
    wrapped = DistillationTeacher(model.eval())
    wrapped.mean_kd = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    wrapped.std_kd = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return Teacher(wrapped.eval(), num_classes, classes, label)


def check_teacher_classes(teacher: Teacher, classes: list[str]) -> None:
    """The teacher must predict the student's classes, in the same order: a clear error before any compute."""
    if teacher.num_classes != len(classes):
        raise VitkitError(
            f"the teacher {teacher.description} predicts {teacher.num_classes} classes but the data has "
            f"{len(classes)}. Train a teacher on this data first (the cnn-teacher recipe, with the same --data), "
            "then pass its run folder with --teacher."
        )
    if teacher.classes is not None and list(teacher.classes) != list(classes):
        raise VitkitError(
            f"the teacher was trained on classes {teacher.classes} but the data has {classes}: the teacher's "
            "predictions would be read as the wrong classes. Train the teacher on the same classes."
        )
