"""Training tasks: what `fit` trains, behind one small interface.

A task supplies an epoch's micro-batches, the loss of one micro-batch, the train/eval mode of its model and its
validation. `fit` does the rest (updates, schedule, EMA, guard, checkpoints, logging) the same way for all of them:

- `ImageClassification`: augmented images through the whole model; with a teacher it is DeiT distillation.
- `CachedHead`: the head alone on features the frozen backbone computed once (finetune.strategy=head with
  finetune.cache_features), so each epoch costs only the head's matmul.

Validation goes through the accuracy evaluator on the same pixels `vitkit evaluate` uses (the original validation
images, decoded and resized once by the eval transform), so a checkpoint scores the same in both.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from vitkit.data.pipeline import BatchAugment, smooth_targets
from vitkit.data.sources import ImageSet
from vitkit.evaluate.context import EvalContext, ModelRunner, run_evaluator
from vitkit.evaluate.metrics import AccuracyEvaluator
from vitkit.evaluate.run import predict_context
from vitkit.models.finetune import set_train_mode
from vitkit.models.teacher import Teacher
from vitkit.train.dynamics import attention_health
from vitkit.train.losses import Criterion, LossParts, soft_target_cross_entropy, training_loss
from vitkit.train.probe import classifier_forward, extract_features
from vitkit.train.ranks import Ranks

# accuracy evaluator name -> epoch record name (a distilled DeiT's heads: top1_cls_head -> val_top1_cls_head)
_RECORD_NAMES = {"top1": "val_top1", "top5": "val_top5", "nll": "val_loss", "auroc": "val_auroc"}


@dataclass
class Batch:
    inputs: torch.Tensor  # on the training device: normalised images, or cached features
    targets: torch.Tensor  # soft targets: label smoothing and Mixup/CutMix folded in
    size: int  # images in the batch


class Task(Protocol):
    steps_per_epoch: int  # micro-batches in one epoch (whole accumulation windows only)

    def batches(self, epoch: int, start: int) -> Generator[Batch]:
        """Micro-batches of epoch `epoch` (from 0), from micro-batch `start` on; the same ones on every call."""
        ...

    def loss(self, batch: Batch) -> LossParts: ...

    def train_mode(self) -> None: ...

    def validate(self, model: nn.Module, prefix: str = "") -> dict[str, float]:
        """Validation metrics of `model` (the raw or the EMA weights) as epoch-record fields."""
        ...


def epoch_metrics(ctx: EvalContext, prefix: str = "") -> dict[str, float]:
    """The accuracy evaluator's top-1, top-5 and NLL (and each head's top-1), or a multi-label task's macro AUROC
    and NLL, under their epoch-record names."""
    values = run_evaluator(AccuracyEvaluator(), ctx)
    out = {f"{prefix}{name}": float(values[key]) for key, name in _RECORD_NAMES.items() if key in values}
    for key, value in values.items():
        if key.startswith("top1_"):
            out[f"{prefix}val_{key}"] = float(value)
    return out


@dataclass
class ImageClassification:
    """Images through the whole model; with a `teacher`, the DeiT distillation loss (the teacher sees the same
    mixed images in the same precision)."""

    model: nn.Module  # as prepared by accelerate
    forward: Callable[[torch.Tensor], Any]  # the model, or its torch.compile'd form
    loader: Any  # the training DataLoader over a PositionSeededSampler
    batch_augment: BatchAugment
    device: torch.device
    steps_per_epoch: int
    strategy: str  # which parts train (finetune.strategy): frozen blocks stay in eval mode
    runner: ModelRunner  # validation: eval transform, batch size, normalisation and autocast of `vitkit evaluate`
    val_images: ImageSet
    channels_last: bool = False
    teacher: Teacher | None = None
    distill: tuple[str, float, float] = ("none", 0.5, 1.0)  # type, alpha, tau
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext  # the accelerator's, for the teacher
    ranks: Ranks | None = None  # several processes: each validates its share of the images
    criterion: Criterion = soft_target_cross_entropy  # the classification term (train.losses.make_criterion)
    train_sample: ImageSet | None = None  # train.monitor_dynamics: training images scored like validation

    def __post_init__(self) -> None:
        # the student's normalisation as (1, C, 1, 1) tensors: the teacher re-normalises the same images its own way
        self.student_norm = [torch.tensor(v, device=self.device).view(1, -1, 1, 1) for v in self.runner_norm]

    @property
    def runner_norm(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.runner.mean, self.runner.std

    def batches(self, epoch: int, start: int) -> Generator[Batch]:
        sampler = self.loader.sampler  # positions are global: `start` steps of every process's batch
        sampler.set_epoch(epoch, start=start * self.loader.batch_size * sampler.world)
        for images, labels in self.loader:
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            x, targets = self.batch_augment(images, labels)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield Batch(x, targets, len(images))

    def loss(self, batch: Batch) -> LossParts:
        outputs = self.forward(batch.inputs)
        teacher_logits = None
        if self.teacher is not None:
            with self.autocast():
                teacher_logits = self.teacher.logits(batch.inputs, *self.student_norm)
        return training_loss(outputs, batch.targets, teacher_logits, *self.distill, criterion=self.criterion)

    def train_mode(self) -> None:
        set_train_mode(self.model, self.strategy)

    def validate(self, model: nn.Module, prefix: str = "") -> dict[str, Any]:
        runner = replace(self.runner, model=model)
        if self.ranks is None or self.ranks.world == 1:
            record: dict[str, Any] = epoch_metrics(predict_context(runner, self.val_images, []), prefix)
        else:
            share = self.ranks.shard(len(self.val_images))
            ctx = predict_context(runner, self.val_images.subset(np.arange(share.start, share.stop)), [])
            record = epoch_metrics(gathered(ctx, self.ranks), prefix)
        if self.train_sample is not None and not prefix:  # the raw model: how it trains, beside how it generalises
            record |= train_fit(runner, self.train_sample)
            record |= attention_health(model, runner, self.val_images)
        return record


def train_fit(runner: ModelRunner, sample: ImageSet) -> dict[str, float]:
    """Top-1 (or macro AUROC) and loss of a fixed sample of training images under the eval transform: against the
    validation figures, the gap that tells overfitting from underfitting."""
    values = epoch_metrics(predict_context(runner, sample, []))
    return {key.replace("val_", "train_eval_", 1): value for key, value in values.items()}


def monitor_sample(images: ImageSet, seed: int, size: int = 512) -> ImageSet:
    """A seeded, fixed sample of the training images for `train_fit`."""
    if len(images) <= size:
        return images
    return images.subset(np.sort(np.random.default_rng(seed).choice(len(images), size, replace=False)))


def gathered(ctx: EvalContext, ranks: Ranks) -> EvalContext:
    """The predictions of every process's share (`Ranks.shard`), in order: the whole set, each image once."""
    shares = ranks.gather((ctx.logits, ctx.labels, ctx.head_logits))
    heads = {name: torch.cat([share[2][name] for share in shares]) for name in ctx.head_logits}
    return EvalContext(
        logits=torch.cat([share[0] for share in shares]),
        labels=torch.cat([share[1] for share in shares]),
        head_logits=heads,
    )


@dataclass
class CachedHead:
    """The head alone, on pooled features of the frozen backbone (train.probe.extract_features), computed with the
    eval transform when first needed (after a resumed run's weights are restored). An epoch's order is the
    `epoch`-th permutation of a generator seeded once, so an epoch can be replayed from any micro-batch."""

    model: nn.Module  # the whole model: its head trains, its backbone is frozen
    runner: ModelRunner  # the backbone's pass over the images: eval transform, normalisation, autocast
    train_images: ImageSet
    val_images: ImageSet
    batch_size: int
    steps_per_epoch: int
    num_classes: int
    smoothing: float
    seed: int
    criterion: Criterion = soft_target_cross_entropy

    @cached_property
    def features(self) -> dict[str, torch.Tensor]:
        r, norm = self.runner, (self.runner.mean, self.runner.std)
        train, train_labels = extract_features(self.model, r.batches(self.train_images), r.device, norm, r.amp_dtype)
        val, val_labels = extract_features(self.model, r.batches(self.val_images), r.device, norm, r.amp_dtype)
        return {"train": train, "train_labels": train_labels, "val": val, "val_labels": val_labels}

    def batches(self, epoch: int, start: int) -> Generator[Batch]:
        features, labels = self.features["train"], self.features["train_labels"]
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(epoch + 1):
            order = torch.randperm(len(labels), generator=generator)
        for step in range(start, self.steps_per_epoch):
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            targets = smooth_targets(labels[idx], self.num_classes, self.smoothing)
            yield Batch(features[idx], targets, len(idx))

    def loss(self, batch: Batch) -> LossParts:
        return training_loss(classifier_forward(self.model)(batch.inputs), batch.targets, criterion=self.criterion)

    def train_mode(self) -> None:
        self.model.train()

    def validate(self, model: nn.Module, prefix: str = "") -> dict[str, float]:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits = classifier_forward(model)(self.features["val"]).float().cpu()
        model.train(was_training)
        return epoch_metrics(EvalContext(logits=logits, labels=self.features["val_labels"].cpu()), prefix)
