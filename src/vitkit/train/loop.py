"""The training loop: one function, top to bottom, that wires the recipe's tricks together.

Each trick lives in a tested building block (data.pipeline, train.optim, models.build, timm, accelerate);
this module only decides the order: batch -> augment -> forward -> loss -> backward -> clip -> step ->
schedule -> EMA -> log, then per epoch evaluate raw and EMA models and checkpoint.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from rich.console import Console
from rich.table import Table
from timm.utils import ModelEmaV3

from vitkit.checkpoint_files import load_weights
from vitkit.config.loader import load_recipe, recipe_to_yaml
from vitkit.config.schema import Recipe
from vitkit.data.check import BadImage, screen_data
from vitkit.data.pipeline import (
    BatchAugment,
    ImageDataset,
    auto_workers,
    eval_transform,
    make_loader,
    maybe_cache,
    train_sampler,
    train_transform,
)
from vitkit.data.sources import DataSplits, load_source
from vitkit.errors import VitkitError
from vitkit.evaluate.metrics import training_metrics
from vitkit.evaluate.predict import predict_outputs
from vitkit.models.build import build_model, choose_attention, num_tokens, set_attention
from vitkit.models.finetune import GroupRow, apply_strategy, count_parameters, parameter_table, set_train_mode
from vitkit.models.lora import load_model_state, model_state_dict
from vitkit.models.pretrained import pretrained_normalization, resolve_pretrained, with_architecture
from vitkit.models.teacher import Teacher, check_teacher_classes, load_teacher
from vitkit.precision import autocast_dtype, resolve_device, resolve_precision
from vitkit.run_folder import claim_run_folder, recipe_input_paths
from vitkit.run_list import running_marker
from vitkit.train.checkpoint import (
    Progress,
    load_training_state,
    newest_valid_checkpoint,
    progress_from_dict,
    progress_to_dict,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from vitkit.train.display import TrainDisplay
from vitkit.train.faults import TrainingDiverged, TrainingPreempted, nonfinite_action, stop_on_signals
from vitkit.train.logging import MetricsLogger
from vitkit.train.losses import training_loss
from vitkit.train.optim import build_optimizer, build_scheduler
from vitkit.train.probe import evaluate_head, extract_features, train_head_epoch
from vitkit.train.trackers import accelerate_trackers, flat_config, tracker_init_kwargs


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_data(recipe: Recipe) -> DataSplits:
    d = recipe.data
    return load_source(
        d.source,
        root=d.root,
        val_fraction=d.val_fraction,
        seed=recipe.train.seed,
        img_size=recipe.model.img_size,
        synthetic_sizes=(d.synthetic_train_size, d.synthetic_val_size),
    )


def resume_recipe(run_dir: Path, overrides: list[str] | None = None) -> Recipe:
    """The recipe of a run folder, with optional overrides (e.g. a larger train.max_steps to extend a run)."""
    recipe_path = run_dir / "recipe.yaml"
    if not recipe_path.exists():
        raise VitkitError(f"--resume {run_dir}: no recipe.yaml there, so it is not a vitkit run folder.")
    return load_recipe(str(recipe_path), overrides)


def train(
    recipe: Recipe,
    run_dir: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    should_stop: Callable[[Progress], bool] | None = None,
    inputs: Sequence[str] = (),
) -> RunResult:
    """Train `recipe` into `run_dir`, or continue the run there when `resume` (see `resume_recipe`).

    A stop asked for by SIGTERM/SIGINT, or by `should_stop` (called after each optimizer update), saves a
    checkpoint at that step and raises `TrainingPreempted`; `resume=True` then continues exactly where it stopped.
    A new run never writes over anything but a vitkit run (`run_folder`), nor over its inputs: the recipe's data,
    weights and teacher, and any other `inputs` (e.g. the recipe file).
    """
    console = console or Console()
    cfg = recipe.model_copy(deep=True)  # pretrained architecture and normalisation are filled in below
    t = cfg.train
    if cfg.finetune.strategy != "full" and not cfg.finetune.pretrained:
        raise VitkitError(
            f"finetune.strategy={cfg.finetune.strategy} keeps pretrained weights fixed, but no weights are given: "
            "pass --pretrained SOURCE (a timm name, a transformers folder, a .safetensors file or a run folder)."
        )
    _check_distill_settings(cfg)
    accelerate_trackers(t.log_with)  # a missing tracker package is named before anything is written
    weights = resolve_pretrained(cfg.finetune.pretrained, cfg.model) if cfg.finetune.pretrained else None
    if weights is not None:
        cfg.model = with_architecture(cfg.model, weights)
    if resume:
        with deterministic_algorithms(t.deterministic), running_marker(run_dir):
            return _train(cfg, run_dir, weights, resume, console, should_stop, on_started=lambda: None)
    claimed = claim_run_folder(run_dir, overwrite, recipe_input_paths(cfg, inputs))
    try:
        with deterministic_algorithms(t.deterministic), running_marker(run_dir):
            return _train(cfg, run_dir, weights, resume, console, should_stop, on_started=claimed.started)
    except BaseException:
        claimed.abandon()  # when training had not started: give the folder (and a replaced run) back as they were
        raise


@contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """torch's deterministic kernels (and cuBLAS's fixed workspace) for the body, then the previous setting."""
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS matmuls
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]


def _train(
    cfg: Recipe,
    run_dir: Path,
    weights: Any,
    resume: bool,
    console: Console,
    should_stop: Callable[[Progress], bool] | None,
    on_started: Callable[[], None],
) -> RunResult:
    t = cfg.train
    seed_everything(t.seed)

    # --- device and precision --------------------------------------------------------------------------
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
    )
    device = accelerator.device

    # --- data ------------------------------------------------------------------------------------------
    data, bad_images = screen_data(load_data(cfg), cfg.data)
    if bad_images:
        _report_bad_images(run_dir, bad_images, console)
    if t.best_metric == "val_top5" and data.num_classes <= 5:
        raise VitkitError(
            f"train.best_metric=val_top5 needs more than 5 classes (the data has {data.num_classes}, so top-5 is "
            "always 100%). Use val_top1 or val_loss."
        )
    teacher = _load_teacher(cfg, data.classes)  # before any compute: a wrong teacher is a clear error now
    train_images, in_memory = maybe_cache(data.train, cfg.data, cfg.model.img_size)
    val_images, _ = maybe_cache(data.val, cfg.data, cfg.model.img_size)
    workers = auto_workers(in_memory, device) if cfg.data.num_workers == "auto" else int(cfg.data.num_workers)
    train_ds = ImageDataset(train_images, train_transform(cfg.augment, cfg.model.img_size))
    val_ds = ImageDataset(val_images, eval_transform(cfg.augment, cfg.model.img_size))
    val_loader = make_loader(val_ds, t.batch_size)  # eval transforms are cheap: no workers
    sampler = train_sampler(len(train_ds), cfg.augment.repeated_aug, t.seed)
    train_loader = make_loader(
        train_ds, t.batch_size, sampler=sampler, workers=workers, drop_last=True, pin_memory=device.type == "cuda"
    )
    steps_per_epoch = (len(sampler) // t.batch_size) // t.accumulation_steps * t.accumulation_steps
    if steps_per_epoch == 0:
        raise VitkitError(
            f"train.batch_size={t.batch_size} x accumulation_steps={t.accumulation_steps} is larger than the "
            f"training set ({len(train_ds)} images). Lower the batch size."
        )
    updates_per_epoch = steps_per_epoch // t.accumulation_steps

    # --- model, optimizer, schedule, EMA ---------------------------------------------------------------
    model = build_model(cfg.model, data.num_classes, pretrained=weights)
    if teacher is not None and hasattr(model, "set_distilled_training"):
        model.set_distilled_training(True)  # type: ignore[operator]  # a distilled DeiT: class and distillation heads get their own terms
    if cfg.data.mean is None or cfg.data.std is None:
        norm = pretrained_normalization(model, weights) if weights is not None else None
        mean, std = norm or cfg.data.normalization()
        cfg.data.mean, cfg.data.std = cfg.data.mean or mean, cfg.data.std or std
    (run_dir / "recipe.yaml").write_text(recipe_to_yaml(cfg))  # the resolved recipe rebuilds this run's model
    tokens = num_tokens(model)
    attention = choose_attention(cfg.model.attn_impl, device, precision, tokens)
    set_attention(model, attention)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = apply_strategy(model, cfg.finetune)
    peak_lr = cfg.effective_lr(accelerator.num_processes)
    optimizer = build_optimizer(model, cfg.optim, peak_lr, layer_decay=cfg.finetune.layer_decay)
    groups = parameter_table(model, optimizer, peak_lr)
    scheduler = build_scheduler(optimizer, cfg.schedule, updates_per_epoch, peak_lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(model)
    ema = ModelEmaV3(raw_model, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup) if cfg.ema.enabled else None
    forward = torch.compile(model) if cfg.model.compile else model
    batch_aug = BatchAugment(cfg.augment, *cfg.data.normalization(), data.num_classes, t.label_smoothing, device)
    student_norm = [torch.tensor(v, device=device).view(1, -1, 1, 1) for v in cfg.data.normalization()]
    if teacher is not None:
        teacher.module.to(device)

    progress = Progress()
    if resume:
        folder, warnings = newest_valid_checkpoint(run_dir)
        for warning in warnings:
            console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
        if folder is None:
            raise VitkitError(
                f"nothing to resume in {run_dir}: no undamaged checkpoint (the run stopped before its first save)."
            )
        progress = _restore(folder, raw_model, ema, optimizer, scheduler, accelerator)
        where = where_in_training(progress)
        console.print(f"resuming {run_dir} from {folder.name}, {where} (update {progress.updates})", highlight=False)

    total_steps = cfg.schedule.epochs * steps_per_epoch
    if t.max_steps is not None:
        total_steps = min(total_steps, t.max_steps * t.accumulation_steps)
    n_trainable, n_params = count_parameters(raw_model)
    _check_disk_space(run_dir, raw_model, ema is not None, cfg)
    console.print(
        f"[bold]vitkit train[/bold] {cfg.model.name} ({n_params / 1e6:.2f}M params, {tokens} tokens) "
        f"on {data.description}\n  device {device}, precision {precision}, attention {attention}, "
        f"batch {t.batch_size} x {t.accumulation_steps} accumulation, peak lr {peak_lr:.2e}, workers {workers}, "
        f"{steps_per_epoch} steps/epoch, {cfg.schedule.epochs} epochs" + (", deterministic" if t.deterministic else ""),
        highlight=False,
    )
    for note in data.notes + (weights.notes if weights is not None else []):
        console.print(f"  note: {note}", highlight=False)
    if weights is not None:
        console.print(f"  pretrained: {weights.source}, strategy {cfg.finetune.strategy}", highlight=False)
    if teacher is not None:
        d = cfg.distill
        heads = "distillation token" if hasattr(raw_model, "head_dist") else "the single head (logit distillation)"
        console.print(
            f"  teacher: {teacher.description}; {d.type} distillation on {heads}, alpha {d.alpha}, tau {d.tau}",
            highlight=False,
        )
    console.print(_groups_table(groups))
    on_started()  # every input is read and the model built: from here on this run replaces any run it overwrites

    step = progress.epoch * steps_per_epoch + progress.step_in_epoch
    if trackers:
        config = flat_config(cfg.model_dump(mode="json"))
        accelerator.init_trackers("vitkit", config=config, init_kwargs=tracker_init_kwargs(trackers, run_dir))
    logger = MetricsLogger(
        run_dir,
        tensorboard="tensorboard" in t.log_with,
        resume_step=step if resume else None,
        sink=accelerator.log if trackers else None,
    )
    amp_dtype = autocast_dtype(precision)
    start_time = time.perf_counter()
    images_seen = 0
    clip = cfg.optim.clip_grad if cfg.optim.clip_grad is not None else math.inf
    display = TrainDisplay(total_steps, console, t.log_every)
    strategy = cfg.finetune.strategy
    run_meta = {"num_classes": data.num_classes, "strategy": strategy}  # every checkpoint's meta.json has these
    saver = partial(
        _save,
        model=raw_model,
        ema=ema,
        optimizer=optimizer,
        scheduler=scheduler,
        accelerator=accelerator,
    )
    try:
        if cfg.finetune.cache_features:
            images_seen = _fit_cached_head(
                cfg,
                raw_model,
                optimizer,
                scheduler,
                train_images,
                val_loader,
                device,
                amp_dtype,
                progress,
                logger,
                run_dir,
                data.num_classes,
                console,
                partial(saver, ema=None),
            )
        with display, stop_on_signals(console) as signalled:

            def stop_requested() -> bool:
                return signalled() or (should_stop is not None and should_stop(progress))

            epoch = progress.epoch
            while epoch < cfg.schedule.epochs and step < total_steps and not cfg.finetune.cache_features:
                # the last good state a rollback returns to: where this epoch (or the resumed run) starts
                snapshot = (
                    _snapshot(raw_model, ema, optimizer, scheduler, progress) if t.nonfinite == "rollback" else None
                )
                set_train_mode(model, cfg.finetune.strategy)
                sampler.set_epoch(epoch, start=progress.step_in_epoch * t.batch_size)
                batches = iter(train_loader)
                epoch_loss = torch.tensor(progress.epoch_loss_sum, dtype=torch.float32, device=device)
                window_loss, window_batches = torch.zeros((), device=device), 0
                window_finite = torch.ones((), dtype=torch.bool, device=device)
                timing_start, timing_images, timing_wait = time.perf_counter(), 0, 0.0
                grad_norm: torch.Tensor | float = progress.last_grad_norm
                while progress.step_in_epoch < steps_per_epoch and step < total_steps:
                    wait_start = time.perf_counter()
                    images, labels = next(batches)
                    timing_wait += time.perf_counter() - wait_start
                    images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
                    x, targets = batch_aug(images, labels)
                    if cfg.model.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    update_ok = True
                    with accelerator.accumulate(model):
                        outputs = forward(x)
                        teacher_logits = None
                        if teacher is not None:  # the teacher sees the same (mixed) images, in the same precision
                            with accelerator.autocast():
                                teacher_logits = teacher.logits(x, *student_norm)
                        d = cfg.distill
                        parts = training_loss(outputs, targets, teacher_logits, d.type, d.alpha, d.tau)
                        loss = parts.total
                        accelerator.backward(loss)
                        window_loss += loss.detach()  # device tensors: reading them each step would sync a GPU
                        window_batches += 1
                        window_finite &= torch.isfinite(loss.detach())
                        if accelerator.sync_gradients:
                            grad_norm = accelerator.clip_grad_norm_(model.parameters(), clip)
                            # one host sync per update; fp16's loss scaler handles its own overflows in step()
                            update_ok = bool(window_finite & torch.isfinite(torch.as_tensor(grad_norm)))
                            if update_ok or accelerator.scaler is not None:
                                optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    step += 1
                    progress.step_in_epoch += 1
                    images_seen += len(images)
                    timing_images += len(images)
                    display.advance(step)
                    if accelerator.sync_gradients:
                        if update_ok:
                            progress.updates += 1
                            progress.nonfinite_in_a_row = 0
                            _set_lr(scheduler, optimizer, progress)
                            if ema is not None:
                                ema.update(raw_model, step=progress.updates)
                            epoch_loss += window_loss
                            progress.epoch_batches += window_batches
                        else:
                            progress.nonfinite_in_a_row += 1
                            action = nonfinite_action(
                                t.nonfinite, progress.nonfinite_in_a_row, progress.rollbacks, t.nonfinite_limit
                            )
                            logger.log(
                                "nonfinite",
                                step,
                                epoch=epoch + 1,
                                update=progress.updates,
                                loss=float(loss.detach()),
                                grad_norm=float(grad_norm),
                                action=action,
                            )
                            display.message(f"non-finite loss or gradient at step {step}: {action}")
                            if action == "stop":
                                raise _diverged(run_dir, step, progress, t.nonfinite)
                            if action == "skip":
                                progress.nonfinite_skipped += 1
                            if action == "rollback" and snapshot is not None:
                                progress = _rollback(snapshot, raw_model, ema, optimizer, scheduler, progress, t)
                                step = epoch * steps_per_epoch + progress.step_in_epoch
                                display.message(f"rolled back to step {step}; lr x {progress.lr_factor:g} from here")
                                break  # restart the epoch's batches from the snapshot's position
                        window_loss, window_batches = torch.zeros((), device=device), 0
                        window_finite = torch.ones((), dtype=torch.bool, device=device)
                    if step % t.log_every == 0 or step == total_steps:
                        # the peak lr (the head's under layer decay), not group 0's (the stem's); every group's in TB
                        group_lrs = [g["lr"] for g in optimizer.param_groups]
                        loss_value, lr = float(loss.detach()), max(group_lrs)
                        logger.log_extra(step, {f"lr/group_{i}": v for i, v in enumerate(group_lrs)})
                        extra = {}
                        if parts.distill is not None:
                            task_value, distill_value = float(parts.task.detach()), float(parts.distill.detach())
                            extra = {"task_loss": task_value, "distill_loss": distill_value}
                        logger.log(
                            "step", step, epoch=epoch + 1, loss=loss_value, lr=lr, grad_norm=float(grad_norm), **extra
                        )
                        elapsed = max(time.perf_counter() - timing_start, 1e-9)
                        ips = timing_images / elapsed
                        logger.log_timing(step, img_per_s=ips, data_wait=timing_wait / elapsed)
                        display.step(step, epoch + 1, loss_value, lr, ips)
                        timing_start, timing_images, timing_wait = time.perf_counter(), 0, 0.0
                    mid_epoch = progress.step_in_epoch < steps_per_epoch and step < total_steps
                    if accelerator.sync_gradients and mid_epoch and stop_requested():
                        progress.epoch_loss_sum = float(epoch_loss)
                        progress.global_step, progress.last_grad_norm = step, float(grad_norm)
                        saver(
                            run_dir / "checkpoints" / "last",
                            progress=progress,
                            cfg=cfg,
                            extra_meta={**run_meta, "best_source": "raw"},
                            keep=t.keep_last,
                        )
                        raise _preempted(run_dir, progress)
                else:  # the epoch's batches ran out (or max_steps was reached): evaluate and checkpoint
                    del batches
                    complete = progress.step_in_epoch == steps_per_epoch
                    record: dict[str, Any] = {
                        "epoch": epoch + 1,  # epochs are numbered from 1 everywhere a person reads them
                        "train_loss": float(epoch_loss) / max(progress.epoch_batches, 1),
                    }
                    if not complete:
                        record["partial"] = True  # max_steps ended the run inside this epoch
                    finished = epoch + 1 == cfg.schedule.epochs or step >= total_steps
                    progress.global_step, progress.last_grad_norm = step, float(grad_norm)
                    if complete:
                        progress.epoch, progress.step_in_epoch = epoch + 1, 0
                        progress.epoch_loss_sum, progress.epoch_batches = 0.0, 0
                    else:
                        progress.epoch_loss_sum = float(epoch_loss)
                    meta: dict[str, Any] = {**run_meta, "best_source": "raw"}
                    if (epoch + 1) % t.eval_every == 0 or finished:
                        record |= _evaluate(raw_model, ema, val_loader, device, cfg, amp_dtype)
                        score, meta["best_source"] = best_of(record, t.best_metric)
                        if improves(score, record, progress, t.best_metric):
                            progress.best_metric, progress.best_epoch = score, epoch + 1
                            progress.best_val_loss = record.get("val_loss", math.nan)
                            meta["why"] = best_reason([*progress.history, record], record, t.best_metric)
                            saver(run_dir / "checkpoints" / "best", progress=progress, cfg=cfg, extra_meta=meta)
                    logger.log("epoch", step, **record)
                    progress.history.append(record)
                    display.message(_epoch_line(record))
                    saver(
                        run_dir / "checkpoints" / "last", progress=progress, cfg=cfg, extra_meta=meta, keep=t.keep_last
                    )
                    epoch = progress.epoch
                    if not finished and stop_requested():
                        raise _preempted(run_dir, progress)
    finally:
        logger.close()
        if trackers:
            accelerator.end_training()

    wall = time.perf_counter() - start_time
    summary = _summary(progress, wall, images_seen, data, precision, attention, n_params, t.best_metric)
    summary |= {"trainable_parameters": n_trainable, "strategy": strategy, "pretrained": cfg.finetune.pretrained}
    summary["nonfinite"] = {
        "policy": t.nonfinite,
        "skipped_updates": progress.nonfinite_skipped,
        "rollbacks": progress.rollbacks,
        "lr_factor": progress.lr_factor,
    }
    if bad_images:
        summary["bad_images"] = {
            "skipped": len(bad_images),
            "train": sum(b.split == "train" for b in bad_images),
            "val": sum(b.split == "val" for b in bad_images),
            "list": "bad_images.jsonl",
        }
    if teacher is not None:
        summary["distill"] = {"type": cfg.distill.type, "teacher": teacher.description, "alpha": cfg.distill.alpha}
    if ema is not None:  # with warmup, the decay ramps up: what the last update used, next to the configured one
        summary["ema"] = {"decay": cfg.ema.decay, "warmup": cfg.ema.warmup, "reached": ema.get_decay(progress.updates)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return RunResult(run_dir, summary)


def _fit_cached_head(
    cfg: Recipe,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    train_images: Any,
    val_loader: Any,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    progress: Progress,
    logger: MetricsLogger,
    run_dir: Path,
    num_classes: int,
    console: Console,
    saver: Callable[..., None],
) -> int:
    """The head strategy with cached features (train.probe): features once, then epochs over the head only."""
    norm = cfg.data.normalization()
    plain = make_loader(
        ImageDataset(train_images, eval_transform(cfg.augment, cfg.model.img_size)), cfg.train.batch_size
    )
    train_feats, train_labels = extract_features(model, plain, device, norm, amp_dtype)
    val_feats, val_labels = extract_features(model, val_loader, device, norm, amp_dtype)
    generator = torch.Generator().manual_seed(cfg.train.seed)

    def on_update() -> None:
        progress.updates += 1
        scheduler.step_update(progress.updates)

    max_updates = cfg.train.max_steps or math.inf
    for epoch in range(progress.epoch, cfg.schedule.epochs):
        if progress.updates >= max_updates:
            break
        loss = train_head_epoch(
            model,
            train_feats,
            train_labels,
            batch_size=cfg.train.batch_size,
            smoothing=cfg.train.label_smoothing,
            num_classes=num_classes,
            optimizer=optimizer,
            on_update=on_update,
            generator=generator,
            max_updates=max_updates - progress.updates,
            accumulation_steps=cfg.train.accumulation_steps,
        )
        progress.epoch = epoch + 1
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": loss, **evaluate_head(model, val_feats, val_labels)}
        meta = {"num_classes": num_classes, "best_source": "raw", "strategy": "head"}
        score, _ = best_of(record, cfg.train.best_metric)
        if improves(score, record, progress, cfg.train.best_metric):
            progress.best_metric, progress.best_epoch = score, epoch + 1
            progress.best_val_loss = record.get("val_loss", math.nan)
            meta["why"] = best_reason([*progress.history, record], record, cfg.train.best_metric)
            saver(run_dir / "checkpoints" / "best", progress=progress, cfg=cfg, extra_meta=meta)
        logger.log("epoch", progress.updates, **record)
        progress.history.append(record)
        console.print(_epoch_line(record), highlight=False)
        saver(run_dir / "checkpoints" / "last", progress=progress, cfg=cfg, extra_meta=meta, keep=cfg.train.keep_last)
    return len(train_labels) * progress.epoch


def _evaluate(
    model: torch.nn.Module,
    ema: ModelEmaV3 | None,
    loader: Any,
    device: torch.device,
    cfg: Recipe,
    amp_dtype: torch.dtype | None,
) -> dict[str, float]:
    out: dict[str, float] = {}
    candidates: list[tuple[str, torch.nn.Module]] = [("", model)]
    if ema is not None:
        candidates.append(("ema_", ema.module))
    for prefix, net in candidates:
        outputs, labels = predict_outputs(net, loader, device, *cfg.data.normalization(), amp_dtype)
        metrics = training_metrics(outputs["logits"], labels)
        out[f"{prefix}val_top1"] = metrics["accuracy.top1"]
        if "accuracy.top5" in metrics:
            out[f"{prefix}val_top5"] = metrics["accuracy.top5"]
        out[f"{prefix}val_loss"] = metrics["accuracy.nll"]
        for head in ("cls_head", "dist_head"):  # a distilled DeiT: each head alone, next to their average above
            if head in outputs:
                out[f"{prefix}val_top1_{head}"] = training_metrics(outputs[head], labels)["accuracy.top1"]
    return out


def best_of(record: dict[str, Any], metric: str) -> tuple[float, str]:
    """The better of the raw and the EMA model's value of `metric` in an epoch record, and which one it is."""
    raw, ema = record[metric], record.get(f"ema_{metric}")
    if ema is None:
        return raw, "raw"
    ema_better = ema < raw if metric == "val_loss" else ema > raw
    return (ema, "ema") if ema_better else (raw, "raw")


def improves(score: float, record: dict[str, Any], progress: Progress, metric: str) -> bool:
    """Whether `score` beats the best so far (none yet: it does); val_loss is minimised, accuracies maximised.

    An accuracy tie (e.g. 100% top-1 on a small validation set, reached early) goes to the lower validation loss,
    so a later, better-trained model is not passed over for the first epoch that reached the same accuracy.
    """
    if progress.best_epoch < 0:
        return True
    if metric == "val_loss":
        return score < progress.best_metric
    if score == progress.best_metric:
        return record.get("val_loss", math.inf) < progress.best_val_loss
    return score > progress.best_metric


def best_reason(history: list[dict[str, Any]], best: dict[str, Any], metric: str) -> str:
    """Why `best` (an epoch record of `history`) is the best checkpoint, in a sentence a person can check."""
    value, source = best_of(best, metric)
    scores = [best_of(r, metric)[0] for r in history if metric in r]
    shown = f"{value:.2%}" if metric != "val_loss" else f"{value:.4f}"
    which = "lowest" if metric == "val_loss" else "highest"
    text = (
        f"epoch {best['epoch']} ({'EMA' if source == 'ema' else 'raw'} weights) has the {which} {metric} ({shown}) of "
        f"the {len(scores)} evaluated epochs so far"
    )
    ties = sum(score == value for score in scores)
    if ties > 1:
        text += f"; {ties} epochs tie on it, and this one has the lowest validation loss"
    return text


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
    for field in ("teacher", "teacher_checkpoint"):
        value = getattr(d, field)
        if value and Path(value).expanduser().exists():
            setattr(d, field, str(Path(value).expanduser().resolve()))


def _load_teacher(cfg: Recipe, classes: list[str]) -> Teacher | None:
    if cfg.distill.type == "none" or not cfg.distill.teacher:
        return None
    teacher = load_teacher(cfg.distill.teacher, cfg.distill.teacher_checkpoint, cfg.model.img_size)
    check_teacher_classes(teacher, classes)
    return teacher


def _groups_table(rows: list[GroupRow]) -> Table:
    table = Table(title="parameters by optimizer group", title_justify="left")
    for column in ("group", "parameters", "share", "peak lr", "weight decay"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for r in rows:
        lr = f"{r.lr:.2e}" if r.group != "frozen" else "-"
        table.add_row(r.group, f"{r.params:,}", f"{r.share:.2%}", lr, f"{r.weight_decay:g}")
    return table


def _epoch_line(record: dict[str, Any]) -> str:
    parts = [f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}"]
    if "val_top1" in record:
        parts.append(f"val top-1 {record['val_top1']:.2%}")
    if "ema_val_top1" in record:
        parts.append(f"EMA val top-1 {record['ema_val_top1']:.2%}")
    return ", ".join(parts)


def _save(
    folder: Path,
    *,
    model: torch.nn.Module,
    ema: ModelEmaV3 | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    accelerator: Accelerator | None,
    progress: Progress,
    cfg: Recipe,
    extra_meta: dict[str, Any],
    keep: int = 1,
) -> None:
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "progress": progress_to_dict(progress),
        "rng": rng_state(),
    }
    if accelerator is not None and accelerator.scaler is not None:  # fp16's loss scale
        state["scaler"] = accelerator.scaler.state_dict()
    meta = {
        "model": cfg.model.name,
        "epoch": progress.epoch + (1 if progress.step_in_epoch else 0),  # the epoch these weights come from
        "step_in_epoch": progress.step_in_epoch,
        "updates": progress.updates,
        **extra_meta,
    }
    save_checkpoint(folder, model, ema.module if ema is not None else None, state, meta, keep)


def _restore(
    folder: Path,
    model: torch.nn.Module,
    ema: ModelEmaV3 | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    accelerator: Accelerator,
) -> Progress:
    # `folder` comes from newest_valid_checkpoint, which has just verified its checksums
    load_model_state(model, load_weights(folder / "model.safetensors"), where=str(folder))
    if ema is not None and (folder / "ema.safetensors").exists():
        load_model_state(ema.module, load_weights(folder / "ema.safetensors"), where=str(folder))
    state = load_training_state(folder)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if "scaler" in state and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return progress_from_dict(state["progress"])


def _set_lr(scheduler: Any, optimizer: torch.optim.Optimizer, progress: Progress) -> None:
    """The schedule's lr for the next update, times the factor left by non-finite rollbacks."""
    scheduler.step_update(progress.updates)
    if progress.lr_factor != 1.0:
        for group in optimizer.param_groups:
            group["lr"] *= progress.lr_factor


@dataclass
class _Snapshot:
    """A CPU copy of everything a rollback restores (not the RNGs: a replay should not repeat the same draws)."""

    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    progress: Progress


def _snapshot(
    model: torch.nn.Module,
    ema: ModelEmaV3 | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: Progress,
) -> _Snapshot:
    def cpu(state: Any) -> Any:  # each tensor copied once, to CPU; containers rebuilt around the copies
        if isinstance(state, torch.Tensor):
            return state.detach().to("cpu", copy=True)
        if isinstance(state, dict):
            return {k: cpu(v) for k, v in state.items()}
        if isinstance(state, (list, tuple)):
            return type(state)(cpu(v) for v in state)
        return copy.deepcopy(state)

    return _Snapshot(
        cpu(model.state_dict()),
        cpu(ema.module.state_dict()) if ema is not None else None,
        cpu(optimizer.state_dict()),
        copy.deepcopy(scheduler.state_dict()),
        copy.deepcopy(progress),
    )


def _rollback(
    snap: _Snapshot,
    model: torch.nn.Module,
    ema: ModelEmaV3 | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    progress: Progress,
    t: Any,
) -> Progress:
    """Back to the snapshot; the counters of non-finite events carry on and the lr is lowered."""
    model.load_state_dict(snap.model)
    if ema is not None and snap.ema is not None:
        ema.module.load_state_dict(snap.ema)
    optimizer.load_state_dict(snap.optimizer)
    scheduler.load_state_dict(snap.scheduler)
    restored = copy.deepcopy(snap.progress)
    restored.rollbacks = progress.rollbacks + 1
    restored.nonfinite_skipped = progress.nonfinite_skipped
    restored.nonfinite_in_a_row = 0
    restored.lr_factor = progress.lr_factor * t.rollback_lr_factor
    _set_lr(scheduler, optimizer, restored)
    return restored


def _preempted(run_dir: Path, progress: Progress) -> TrainingPreempted:
    return TrainingPreempted(
        f"training stopped on request {where_in_training(progress)} (update {progress.updates}); a checkpoint was "
        f"saved. Continue with: vitkit train --resume {run_dir}"
    )


def where_in_training(progress: Progress) -> str:
    """Where training stands, with epochs numbered from 1: 'after epoch 2' or 'in epoch 3, after step 5'."""
    if progress.step_in_epoch:
        return f"in epoch {progress.epoch + 1}, after step {progress.step_in_epoch}"
    return f"after epoch {progress.epoch}" if progress.epoch else "at the start"


def _diverged(run_dir: Path, step: int, progress: Progress, policy: str) -> TrainingDiverged:
    why = (
        "train.nonfinite=stop"
        if policy == "stop"
        else f"{progress.nonfinite_in_a_row} non-finite updates in a row or {progress.rollbacks} rollbacks reached "
        "train.nonfinite_limit"
    )
    return TrainingDiverged(
        f"the loss or the gradients became NaN/inf at step {step} (update {progress.updates}) and training stopped "
        f"({why}). The checkpoints in {run_dir / 'checkpoints'} are from before and are intact. Lower optim.lr, set "
        "optim.clip_grad (e.g. 1.0) or use precision bf16/fp32 instead of fp16, then --resume "
        f"{run_dir} (with --set for the change)."
    )


def _check_disk_space(run_dir: Path, model: torch.nn.Module, has_ema: bool, cfg: Recipe) -> None:
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


def _summary(
    progress: Progress,
    wall: float,
    images: int,
    data: DataSplits,
    precision: str,
    attention: str,
    n_params: int,
    best_metric: str,
) -> dict[str, Any]:
    last = progress.history[-1] if progress.history else {}
    best = next((r for r in progress.history if r["epoch"] == progress.best_epoch), None)
    return {
        "epochs": progress.epoch,
        "updates": progress.updates,
        "best_val_top1": max(
            (max(r.get("val_top1", -1.0), r.get("ema_val_top1", -1.0)) for r in progress.history), default=-1.0
        ),
        "best": {
            "metric": best_metric,
            "value": progress.best_metric,
            "epoch": progress.best_epoch,
            "why": best_reason(progress.history, best, best_metric) if best else "no epoch was evaluated",
        },
        "best_epoch": progress.best_epoch,
        "final": last,
        "wall_seconds": wall,
        "train_images_per_second": images / max(wall, 1e-9),
        "num_classes": data.num_classes,
        "classes": data.classes,
        "precision": precision,
        "attention": attention,
        "parameters": n_params,
    }
