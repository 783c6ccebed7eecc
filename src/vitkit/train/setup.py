"""Everything a run needs before its first step, built once from a resolved recipe: `setup_run(...) -> Run`.

`resolve_recipe` fixes what the recipe leaves open (the pretrained architecture, the teacher's absolute paths);
`setup_run` then builds device and precision, data, model, optimizer, schedule, EMA, the task and, when resuming,
restores all of it from the newest undamaged checkpoint. The loop (`train.loop.fit`) reads only `Run` and its
plain `LoopSettings`, never recipe sections.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from rich.console import Console
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader

from vitkit.checkpoint_files import checkpoint_problem, load_weights
from vitkit.config.loader import recipe_to_yaml
from vitkit.config.schema import Recipe
from vitkit.data.check import BadImage, screen_data
from vitkit.data.pipeline import (
    BatchAugment,
    ImageDataset,
    auto_workers,
    balancing_weights,
    eval_transform,
    make_loader,
    maybe_cache,
    train_sampler,
    train_transform,
)
from vitkit.data.sources import DataSplits, recipe_splits, split_files
from vitkit.errors import VitkitError
from vitkit.evaluate.context import ModelRunner
from vitkit.models.build import build_model, choose_attention, num_tokens, set_attention
from vitkit.models.finetune import apply_strategy, count_parameters, parameter_table
from vitkit.models.lora import load_model_state, model_state_dict
from vitkit.models.pretrained import PretrainedWeights, pretrained_normalization, resolve_pretrained, with_architecture
from vitkit.models.teacher import Teacher, check_teacher_classes, load_teacher
from vitkit.precision import autocast_dtype, precision_note, resolve_device, resolve_precision
from vitkit.run_list import resume_changes
from vitkit.train.checkpoint import (
    Progress,
    load_training_state,
    newest_valid_checkpoint,
    progress_from_dict,
    set_rng_state,
    where_in_training,
)
from vitkit.train.display import print_run_header
from vitkit.train.dynamics import DynamicsMonitor
from vitkit.train.losses import make_criterion
from vitkit.train.optim import build_optimizer, build_scheduler
from vitkit.train.ranks import Ranks
from vitkit.train.scaleout import backend_kwargs, check_same_recipe, process_batch_size
from vitkit.train.step import Window
from vitkit.train.tasks import CachedHead, ImageClassification, Task, monitor_sample
from vitkit.train.trackers import accelerate_trackers


@dataclass(frozen=True)
class LoopSettings:
    """The recipe's settings the loop acts on. Steps are micro-batches; updates are optimizer steps."""

    epochs: int
    steps_per_epoch: int
    total_steps: int  # the run ends after this many steps (all epochs, or train.max_updates' worth)
    log_every: int  # steps
    eval_every: int  # epochs
    nonfinite: str
    nonfinite_limit: int
    rollback_lr_factor: float
    images_per_step: int = 0  # over all processes: where a step puts the run in the epoch's global order


@dataclass
class RunFacts:
    """What the summary reports about a run besides its progress."""

    data: DataSplits
    bad_images: list[BadImage]
    precision: str
    attention: str
    parameters: int
    trainable_parameters: int
    teacher: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Run:
    cfg: Recipe  # resolved: architecture, normalisation and teacher paths filled in
    run_dir: Path
    accelerator: Accelerator
    model: nn.Module  # as prepared by accelerate (what the step calls)
    raw_model: nn.Module  # the model itself (what checkpoints hold)
    optimizer: Any
    scheduler: Any
    ema: ModelEmaV3 | None
    task: Task
    settings: LoopSettings
    facts: RunFacts
    progress: Progress
    clip: float  # max gradient norm; inf for none
    resumed: bool = False  # restored from a checkpoint
    window: Window = field(default_factory=Window)  # the accumulation window in progress
    dynamics: DynamicsMonitor | None = None  # gradient and update sizes at logging steps (train.monitor_dynamics)

    @property
    def ranks(self) -> Ranks:
        return Ranks(self.accelerator)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_recipe(recipe: Recipe) -> tuple[Recipe, PretrainedWeights | None]:
    """A copy of `recipe` with what it leaves open decided, checked before anything is written: the pretrained
    weights (read now) fix the architecture; distillation settings are checked and teacher paths made absolute."""
    cfg = recipe.model_copy(deep=True)
    if cfg.finetune.strategy != "full" and not cfg.finetune.pretrained:
        raise VitkitError(
            f"finetune.strategy={cfg.finetune.strategy} keeps pretrained weights fixed, but no weights are given: "
            "pass --pretrained SOURCE (a timm name, a transformers folder, a .safetensors file or a run folder)."
        )
    _check_distill_settings(cfg)
    accelerate_trackers(cfg.train.log_with)  # a missing tracker package is named before anything is written
    weights = resolve_pretrained(cfg.finetune.pretrained, cfg.model) if cfg.finetune.pretrained else None
    if weights is not None:
        cfg.model = with_architecture(cfg.model, weights)
    return cfg, weights


def _check_distill_settings(cfg: Recipe) -> None:
    """Distillation needs a type and a teacher together; paths are made absolute so a resumed run finds them."""
    d = cfg.distill
    if d.type != "none" and not d.teacher:
        raise VitkitError(
            f"distill.type={d.type} needs a teacher: pass --teacher RUN_FOLDER (train one with --recipe cnn-teacher "
            "on the same data) or set distill.teacher."
        )
    if d.teacher and d.type == "none":
        raise VitkitError(
            f"distill.teacher={d.teacher} is set but distill.type is none: set distill.type=hard or soft, or remove "
            "the teacher."
        )
    for name in ("teacher", "teacher_checkpoint"):
        value = getattr(d, name)
        if value and Path(value).expanduser().exists():
            setattr(d, name, str(Path(value).expanduser().resolve()))


def make_accelerator(cfg: Recipe, run_dir: Path) -> tuple[Accelerator, str]:
    """accelerate's Accelerator for the recipe's device, precision, accumulation and trackers; and the precision."""
    t = cfg.train
    device = resolve_device(t.device)
    precision = resolve_precision(t.precision, device)
    AcceleratorState._reset_state(reset_partial_state=True)  # allow several runs in one process
    trackers = accelerate_trackers(t.log_with)
    accelerator = Accelerator(
        cpu=device.type == "cpu",
        mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision],
        gradient_accumulation_steps=t.accumulation_steps,
        log_with=trackers or None,
        project_dir=str(run_dir),
        kwargs_handlers=backend_kwargs(t, device),
    )
    return accelerator, precision


@dataclass
class _Built:
    """What setup builds on each process before the processes meet (everything that can fail on one of them)."""

    data: DataSplits
    bad_images: list[BadImage]
    teacher: Teacher | None
    loader: DataLoader[Any]
    workers: int
    image_steps: int
    model: nn.Module
    attention: str


def setup_run(
    cfg: Recipe,
    weights: PretrainedWeights | None,
    run_dir: Path,
    accelerator: Accelerator,
    precision: str,
    *,
    resume: bool,
    console: Console,
) -> Run:
    """Build the run of the resolved recipe `cfg` (see `resolve_recipe`) in `run_dir` on `accelerator` (one of
    `make_accelerator`); when `resume`, restore it from the newest undamaged checkpoint there. Prints what it
    built. With several processes each builds its own copy; only the first writes to `run_dir`."""
    t, ranks = cfg.train, Ranks(accelerator)
    seed_everything(t.seed)  # the same initial weights on every process (DDP also copies process 0's)
    b = ranks.everywhere(lambda: _build(cfg, weights, run_dir, accelerator, precision, ranks, console))
    data, bad_images, teacher, model = b.data, b.bad_images, b.teacher, b.model
    if ranks.rank:  # dropout, drop path and Mixup draw differently on each process; process 0 keeps the seed's stream
        seed_everything(t.seed + ranks.rank)
    if ranks.main:
        changes = resume_changes(run_dir, cfg.model_dump(mode="json")) if resume else None
        if changes:
            console.print(changes, highlight=False, markup=False)
        (run_dir / "recipe.yaml").write_text(recipe_to_yaml(cfg))  # the resolved recipe rebuilds this run's model
    peak_lr = cfg.effective_lr(accelerator.num_processes)
    optimizer = build_optimizer(model, cfg.optim, peak_lr, layer_decay=cfg.finetune.layer_decay)
    groups = parameter_table(model, optimizer, peak_lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    ema = ModelEmaV3(raw_model, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup) if cfg.ema.enabled else None
    runner = ModelRunner(
        raw_model,
        accelerator.device,
        *cfg.data.normalization(),
        eval_transform(cfg.augment, cfg.model.img_size),
        t.batch_size,
        autocast_dtype(precision),
    )
    task: Task
    if cfg.finetune.cache_features:  # the head on cached features: no image augmentation, no EMA
        ema = None
        steps = whole_windows(len(data.train), t.batch_size, t.accumulation_steps, len(data.train))
        task = CachedHead(
            raw_model,
            runner,
            data.train,
            data.val,
            t.batch_size,
            steps,
            data.num_classes,
            t.label_smoothing,
            t.seed,
            criterion(cfg, data),
        )
    else:
        task = _image_task(cfg, accelerator, model, b.loader, b.image_steps, runner, data, teacher)
    scheduler = build_scheduler(optimizer, cfg.schedule, task.steps_per_epoch // t.accumulation_steps, peak_lr)
    n_trainable, n_params = count_parameters(raw_model)
    facts = RunFacts(
        data, bad_images, precision, b.attention, n_params, n_trainable, teacher.description if teacher else None
    )
    facts.notes = data.notes + (weights.notes if weights is not None else [])
    if (note := precision_note(t.precision, precision, accelerator.device)) is not None:
        facts.notes.append(note)
    clip = cfg.optim.clip_grad if cfg.optim.clip_grad is not None else math.inf
    settings = loop_settings(cfg, task.steps_per_epoch, t.batch_size * ranks.world)
    run = Run(
        cfg, run_dir, accelerator, model, raw_model, optimizer, scheduler, ema, task, settings, facts, Progress(), clip
    )
    run.dynamics = DynamicsMonitor() if t.monitor_dynamics else None
    if resume:
        run.progress, run.resumed = restore(run, console), True
    run.progress.images_per_step = settings.images_per_step
    ranks.on_main(lambda: _check_disk_space(run_dir, raw_model, ema is not None, cfg))
    if ranks.main:
        print_run_header(run, groups, b.workers, peak_lr, weights, console)
    return run


def _build(
    cfg: Recipe,
    weights: PretrainedWeights | None,
    run_dir: Path,
    accelerator: Accelerator,
    precision: str,
    ranks: Ranks,
    console: Console,
) -> _Built:
    """Data, teacher, loader and model: the part of setup that reads the user's files, on every process."""
    cfg.train.batch_size = process_batch_size(cfg.train, ranks.world)
    check_same_recipe(cfg, ranks)
    if ranks.world > 1 and cfg.finetune.cache_features:
        raise VitkitError(
            "finetune.cache_features trains the head alone on features computed once; it runs on one process "
            "(seconds per epoch). Start it without accelerate launch / torchrun, or set finetune.cache_features=false."
        )
    data, bad_images = _screened_data(cfg, run_dir, console, write=ranks.main)
    data = resolve_task(cfg, data)
    if ranks.main:
        write_split_record(run_dir, data)
    teacher = _load_teacher(cfg, data.classes)  # before any compute: a wrong teacher is a clear error now
    loader, workers, image_steps = _train_loader(cfg, data, accelerator.device, ranks)
    model, attention = _build_model(cfg, data, weights, teacher, accelerator.device, precision)
    return _Built(data, bad_images, teacher, loader, workers, image_steps, model, attention)


def _screened_data(
    cfg: Recipe, run_dir: Path, console: Console, write: bool = True
) -> tuple[DataSplits, list[BadImage]]:
    """The recipe's data with unreadable files screened out (data.bad_images), and those files (listed in the run
    folder when `write`)."""
    data, bad_images = screen_data(recipe_splits(cfg), cfg.data)
    if bad_images and write:
        _report_bad_images(run_dir, bad_images, console)
    if cfg.train.best_metric == "val_top5" and data.num_classes <= 5:
        raise VitkitError(
            f"train.best_metric=val_top5 needs more than 5 classes (the data has {data.num_classes}, so top-5 is "
            "always 100%). Use val_top1 or val_loss."
        )
    return data, bad_images


def resolve_task(cfg: Recipe, data: DataSplits) -> DataSplits:
    """Fix train.task and train.best_metric from the data (auto), checking that they fit it; multilabel on
    single-label data turns each class into its own 0/1 label."""
    t, multilabel = cfg.train, data.multilabel
    task = t.task
    if task == "auto":
        task = "multilabel" if multilabel else "binary" if data.num_classes == 2 else "multiclass"
    if multilabel and task != "multilabel":
        raise VitkitError(
            f"train.task={task}, but {data.description} has several labels per image: use train.task=multilabel "
            "(or auto)."
        )
    if task == "binary" and data.num_classes != 2:
        raise VitkitError(
            f"train.task=binary needs two classes; {data.description} has {data.num_classes}: use multiclass or auto."
        )
    if task == "multilabel" and not multilabel:
        eye = np.eye(data.num_classes, dtype=np.float32)
        data = replace(
            data, train=data.train.with_labels(eye[data.train.labels]), val=data.val.with_labels(eye[data.val.labels])
        )
    if task == "multilabel" and t.best_metric in ("val_top1", "val_top5"):
        raise VitkitError(
            f"train.best_metric={t.best_metric} is a single-label accuracy; a multi-label run is judged by "
            "val_auroc (or val_loss). Set train.best_metric=val_auroc or auto."
        )
    if task == "multilabel" and cfg.distill.type != "none":
        raise VitkitError("distillation is defined for single-label tasks here; set distill.type=none.")
    if t.best_metric == "auto":
        t.best_metric = "val_auroc" if task == "multilabel" else "val_top1"
    if t.best_metric == "val_auroc" and task != "multilabel":
        raise VitkitError("train.best_metric=val_auroc is for multi-label tasks; use val_top1, val_top5 or val_loss.")
    t.task = task
    return data


def write_split_record(run_dir: Path, data: DataSplits) -> None:
    """RUN/data_split.json: how validation was chosen (method, seed, fraction) and which images went where, so
    a published number can name its split."""
    record = {
        **data.split,
        "data": data.description,
        "train_images": len(data.train),
        "val_images": len(data.val),
        "train_patients": len(set(data.train.patients)) if data.train.patients is not None else None,
        "val_patients": len(set(data.val.patients)) if data.val.patients is not None else None,
        "val_patient_ids": sorted(set(data.val.patients)) if data.val.patients is not None else None,
        "val_files": split_files(data.val),
    }
    (run_dir / "data_split.json").write_text(json.dumps(record, indent=1))


def _train_loader(
    cfg: Recipe, data: DataSplits, device: torch.device, ranks: Ranks
) -> tuple[DataLoader[Any], int, int]:
    """The training images (decoded once into memory when data.cache allows) behind the seeded sampler, this
    process's share of each epoch; the loader, its worker processes and the steps per epoch."""
    t = cfg.train
    train_images, in_memory = maybe_cache(data.train, cfg.data, cfg.model.img_size)
    workers = auto_workers(in_memory, device) if cfg.data.num_workers == "auto" else int(cfg.data.num_workers)
    train_ds = ImageDataset(train_images, train_transform(cfg.augment, cfg.model.img_size))
    weights = balancing_weights(train_images.labels) if t.imbalance == "sampler" else None
    sampler = train_sampler(len(train_ds), cfg.augment.repeated_aug, t.seed, ranks.rank, ranks.world, weights)
    loader = make_loader(
        train_ds, t.batch_size, sampler=sampler, workers=workers, drop_last=True, pin_memory=device.type == "cuda"
    )
    # steps per epoch from the global order: the same on every process, and the same as one process's at the
    # global batch
    global_batch = t.batch_size * ranks.world
    return loader, workers, whole_windows(len(sampler.order), global_batch, t.accumulation_steps, len(train_ds))


def _build_model(
    cfg: Recipe,
    data: DataSplits,
    weights: PretrainedWeights | None,
    teacher: Teacher | None,
    device: torch.device,
    precision: str,
) -> tuple[nn.Module, str]:
    """The model with its attention kernel and fine-tuning strategy; fills in the recipe's normalisation from the
    pretrained weights when it names none. Returns the model and the attention kernel."""
    model = build_model(cfg.model, data.num_classes, pretrained=weights)
    if teacher is not None and hasattr(model, "set_distilled_training"):
        model.set_distilled_training(True)  # type: ignore[operator]  # a distilled DeiT: class and distillation heads get their own terms
    if cfg.data.mean is None or cfg.data.std is None:
        norm = pretrained_normalization(model, weights) if weights is not None else None
        mean, std = norm or cfg.data.normalization()
        cfg.data.mean, cfg.data.std = cfg.data.mean or mean, cfg.data.std or std
    attention = choose_attention(cfg.model.attn_impl, device, precision, num_tokens(model))
    set_attention(model, attention)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return apply_strategy(model, cfg.finetune), attention


def criterion(cfg: Recipe, data: DataSplits) -> Any:
    t = cfg.train
    return make_criterion(t.task, t.imbalance, data.train.labels, data.num_classes, t.focal_gamma)


def _image_task(
    cfg: Recipe,
    accelerator: Accelerator,
    model: nn.Module,
    loader: DataLoader[Any],
    steps: int,
    runner: ModelRunner,
    data: DataSplits,
    teacher: Teacher | None,
) -> ImageClassification:
    """Image classification, or DeiT distillation when there is a teacher."""
    device = accelerator.device
    if teacher is not None:
        teacher.module.to(device)
    d = cfg.data.normalization()
    return ImageClassification(
        model,
        torch.compile(model) if cfg.model.compile else model,
        loader,
        BatchAugment(cfg.augment, *d, data.num_classes, cfg.train.label_smoothing, device, multilabel=data.multilabel),
        device,
        steps,
        cfg.finetune.strategy,
        runner,
        data.val,
        channels_last=cfg.model.channels_last,
        teacher=teacher,
        distill=(cfg.distill.type, cfg.distill.alpha, cfg.distill.tau),
        autocast=accelerator.autocast,
        ranks=Ranks(accelerator),
        criterion=criterion(cfg, data),
        train_sample=monitor_sample(data.train, cfg.train.seed) if cfg.train.monitor_dynamics else None,
    )


def whole_windows(sampled: int, batch_size: int, accumulation_steps: int, images: int) -> int:
    """Steps per epoch: full batches of the `sampled` images, in whole accumulation windows."""
    steps = (sampled // batch_size) // accumulation_steps * accumulation_steps
    if steps == 0:
        raise VitkitError(
            f"train.batch_size={batch_size} x accumulation_steps={accumulation_steps} is larger than the "
            f"training set ({images} images). Lower the batch size."
        )
    return steps


def loop_settings(cfg: Recipe, steps_per_epoch: int, images_per_step: int = 0) -> LoopSettings:
    t = cfg.train
    total_steps = cfg.schedule.epochs * steps_per_epoch
    if t.max_updates is not None:
        total_steps = min(total_steps, t.max_updates * t.accumulation_steps)
    return LoopSettings(
        epochs=cfg.schedule.epochs,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        log_every=t.log_every,
        eval_every=t.eval_every,
        nonfinite=t.nonfinite,
        nonfinite_limit=t.nonfinite_limit,
        rollback_lr_factor=t.rollback_lr_factor,
        images_per_step=images_per_step,
    )


def restore(run: Run, console: Console) -> Progress:
    """Weights, EMA, optimizer, schedule, loss scale and RNGs from the newest undamaged checkpoint of the run."""
    folder, warnings = newest_valid_checkpoint(run.run_dir)
    for warning in warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    if folder is None:
        raise VitkitError(
            f"nothing to resume in {run.run_dir}: no undamaged checkpoint (the run stopped before its first save)."
        )
    # newest_valid_checkpoint has just verified the folder's checksums
    load_model_state(run.raw_model, load_weights(folder / "model.safetensors"), where=str(folder))
    if run.ema is not None and (folder / "ema.safetensors").exists():
        load_model_state(run.ema.module, load_weights(folder / "ema.safetensors"), where=str(folder))
    state = load_training_state(folder)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if "scaler" in state and run.accelerator.scaler is not None:
        run.accelerator.scaler.load_state_dict(state["scaler"])
    progress = progress_from_dict(state["progress"])
    _forget_damaged_best(run.run_dir, progress, console)
    _check_same_global_batch(progress, run.settings, run.cfg.train.accumulation_steps)
    rng = _rng_of_this_process(state, run.ranks, console)
    if rng is not None:
        set_rng_state(rng)
    where = where_in_training(progress)
    console.print(f"resuming {run.run_dir} from {folder.name}, {where} (update {progress.updates})", highlight=False)
    return progress


def _forget_damaged_best(run_dir: Path, progress: Progress, console: Console) -> None:
    """A damaged `best` checkpoint cannot be evaluated or exported: the resumed run then keeps its next evaluated
    epoch as the new best, whatever its score, instead of measuring it against a checkpoint that is gone."""
    best = run_dir / "checkpoints" / "best"
    problem = checkpoint_problem(best) if best.exists() else None
    if problem is None or progress.best_epoch < 0:
        return
    console.print(
        f"[yellow]warning:[/yellow] {best} is damaged ({problem}); the next evaluated epoch becomes the best "
        "checkpoint.",
        highlight=False,
    )
    progress.best_epoch, progress.best_metric, progress.best_val_loss = -1, float("-inf"), float("inf")


def _check_same_global_batch(progress: Progress, settings: LoopSettings, accumulation: int) -> None:
    """A run continues at a global position in the epoch's order: step x images per step over all processes."""
    before, now = progress.images_per_step, settings.images_per_step
    if before and now and before != now:
        raise VitkitError(
            f"this run trained on {before} images per step over all its processes; it would continue on {now} "
            f"(train.batch_size x processes), which moves its place in the epoch and its learning rate. Resume with "
            f"the same global batch: --set train.global_batch_size={before * accumulation}."
        )


def _rng_of_this_process(state: dict[str, Any], ranks: Ranks, console: Console) -> dict[str, Any] | None:
    """The RNG state this process saved; on another number of processes, process 0 takes the first process's and
    the others keep their fresh seeds (data order and augmentation are global and continue exactly; only
    dropout, drop path and Mixup draw new numbers)."""
    saved = state.get("rng_by_process", [state["rng"]])
    if len(saved) != ranks.world:
        console.print(
            f"resuming on {ranks.world} processes a run saved by {len(saved)}: the data continue exactly where they "
            "stopped; dropout, drop path and Mixup draw new random numbers.",
            highlight=False,
        )
    if len(saved) == ranks.world:
        return dict(saved[ranks.rank])
    return dict(saved[0]) if ranks.main else None


def _report_bad_images(run_dir: Path, bad: list[BadImage], console: Console) -> None:
    """Name the skipped files on the console and list them all, with reasons, in RUN/bad_images.jsonl."""
    (run_dir / "bad_images.jsonl").write_text("".join(json.dumps(asdict(b)) + "\n" for b in bad))
    console.print(
        f"[yellow]warning:[/yellow] skipping {len(bad)} unreadable image files (data.bad_images=skip; all listed "
        f"in {run_dir / 'bad_images.jsonl'}):",
        highlight=False,
    )
    for b in bad[:5]:
        console.print(f"  {b.path}: {b.reason}", highlight=False)


def _load_teacher(cfg: Recipe, classes: list[str]) -> Teacher | None:
    if cfg.distill.type == "none" or not cfg.distill.teacher:
        return None
    teacher = load_teacher(cfg.distill.teacher, cfg.distill.teacher_checkpoint, cfg.model.img_size)
    check_teacher_classes(teacher, classes)
    return teacher


def _check_disk_space(run_dir: Path, model: nn.Module, has_ema: bool, cfg: Recipe) -> None:
    """Refuse to start when the run folder's disk cannot hold the checkpoints the run will write."""
    weights = sum(p.numel() * p.element_size() for p in model_state_dict(model).values())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    moments = 2 if cfg.optim.name == "adamw" else 1
    per_checkpoint = weights * (2 if has_ema else 1) + trainable * moments
    folders = cfg.train.keep_last + 2  # the kept `last` ones, `best`, and the one being written
    needed = per_checkpoint * folders
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise VitkitError(
            f"the disk of {run_dir} has {free / 2**20:.0f} MiB free, but this run's checkpoints need about "
            f"{needed / 2**20:.0f} MiB ({folders} checkpoints of {per_checkpoint / 2**20:.0f} MiB). Free some "
            "space, lower train.keep_last, or choose another --out."
        )
