"""Training: `train()` runs a recipe into a run folder; `fit()` is the loop, readable in one sitting.

A *step* is one micro-batch; an *update* is one optimizer step, made every `train.accumulation_steps` steps. The
loop calls named pieces at named points: `train_step` (forward, loss, backward, clip, update), the non-finite
guard (skip / rollback / stop), a stop request (SIGTERM/SIGINT or a callback), the checkpointer (last, best) and
the logger. What is trained (images, images with a teacher, a head on cached features) is the run's task.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console

from vitkit.checkpoint_files import checkpoint_problem
from vitkit.config.loader import load_recipe, recipe_from_yaml_file
from vitkit.config.schema import Recipe
from vitkit.data.sources import same_source
from vitkit.errors import OutOfMemory, VitkitError
from vitkit.files import write_atomically
from vitkit.run_folder import ClaimedFolder, claim_run_folder, is_run_folder, recipe_input_paths
from vitkit.run_list import running_marker
from vitkit.train.checkpoint import Progress, newest_valid_checkpoint, where_in_training
from vitkit.train.checkpointer import Checkpointer, best_of
from vitkit.train.display import TrainDisplay, epoch_line
from vitkit.train.faults import TrainingDiverged, TrainingPreempted, stop_on_signals
from vitkit.train.guard import NonFiniteGuard
from vitkit.train.logging import MetricsLogger, NoLogger
from vitkit.train.ranks import Ranks
from vitkit.train.setup import Run, make_accelerator, resolve_recipe, setup_run
from vitkit.train.step import StepOutcome, train_step
from vitkit.train.summary import run_summary
from vitkit.train.tasks import Batch
from vitkit.train.trackers import accelerate_trackers, flat_config, tracker_init_kwargs


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    evaluation: dict[str, Any] | None = None  # the metrics.json of the end-of-training evaluation
    evaluation_dir: Path | None = None


def resume_recipe(run_dir: Path, overrides: list[str] | None = None) -> Recipe:
    """The recipe of a run folder, with optional overrides (e.g. a larger train.max_updates to extend a run)."""
    recipe_path = run_dir / "recipe.yaml"
    if not recipe_path.exists():
        raise VitkitError(f"--resume {run_dir}: no recipe.yaml there, so it is not a vitkit run folder.")
    return load_recipe(str(recipe_path), overrides)


def train(
    recipe: Recipe,
    run_dir: Path,
    *,
    resume: bool | Literal["auto"] = False,
    overwrite: bool = False,
    console: Console | None = None,
    should_stop: Callable[[Progress], bool] | None = None,
    inputs: Sequence[str] = (),
    evaluate: bool = True,
) -> RunResult:
    """Train `recipe` into `run_dir`, then evaluate the best model (accuracy, calibration) into RUN/eval.

    `resume=True` continues the run in `run_dir` (pass its recipe: `resume_recipe`); `resume="auto"` continues it
    when it has a checkpoint and starts it otherwise, for jobs that are simply run again after a preemption.
    A stop asked for by SIGTERM/SIGINT, or by `should_stop` (called after each update), saves a checkpoint and
    raises `TrainingPreempted`; resuming then continues exactly where it stopped. A new run never writes over
    anything but a vitkit run (`run_folder`), nor over its inputs: the recipe's data, weights and teacher, and any
    other `inputs` (e.g. the recipe file).
    """
    console = console or Console()
    if resume == "auto":
        resume, overwrite = _auto_resume(recipe, run_dir, overwrite, console)
    cfg, weights = resolve_recipe(recipe)
    accelerator, precision = make_accelerator(cfg, run_dir)
    ranks = Ranks(accelerator)  # launched on several processes, the first one writes the run folder
    if not ranks.main:
        console = Console(quiet=True)
    inputs_of_run = recipe_input_paths(cfg, inputs)
    claimed = None if resume else ranks.on_main(lambda: claim_run_folder(run_dir, overwrite, inputs_of_run))
    try:
        with deterministic_algorithms(cfg.train.deterministic), ExitStack() as marked:
            ranks.on_main(lambda: marked.enter_context(running_marker(run_dir)))
            run = setup_run(cfg, weights, run_dir, accelerator, precision, resume=bool(resume), console=console)
            if claimed is not None:
                claimed.started()  # every input read and the model built: this run now replaces one it overwrites
            summary = _fit_and_summarise(run, console, should_stop)
    except BaseException as exc:
        if claimed is not None:
            _abandon(claimed, console)
        if OutOfMemory.recognise(exc):
            raise _out_of_memory(exc, accelerator.device, run_dir) from exc
        raise
    result = RunResult(run_dir, summary)
    if evaluate and ranks.main:  # the evaluation of the finished run is one process's work
        from vitkit.evaluate.registry import training_end
        from vitkit.evaluate.run import evaluate_run

        result.evaluation, result.evaluation_dir = evaluate_run(run_dir, only=training_end(summary.get("task")))
    return result


def _abandon(claimed: ClaimedFolder, console: Console) -> None:
    """Put the run folder back as it was when training had not started, and say so when that removed the list of
    skipped images the console pointed to."""
    listed = claimed.path / "bad_images.jsonl"
    had_list = listed.is_file()
    claimed.abandon()
    if had_list and not listed.exists():
        console.print(
            f"note: the run stopped before training, so vitkit removed what it had written to {claimed.path}, "
            "bad_images.jsonl included. To list every unreadable file, run again with --set data.bad_images=fail "
            "(it stops before training and names them all).",
            highlight=False,
        )


def _out_of_memory(exc: BaseException, device: torch.device, run_dir: Path) -> OutOfMemory:
    """What to change when the model, batch and images do not fit: the allocator's first line, then the settings
    that take memory, most effective first."""
    reason = OutOfMemory.reason(exc)
    kept = " The checkpoints already in the run folder are kept." if (run_dir / "checkpoints").is_dir() else ""
    return OutOfMemory(
        f"out of {device.type} memory ({reason}). Lower train.batch_size (raise train.accumulation_steps to keep "
        "the images per update), set model.grad_checkpointing=true, use train.precision=bf16, or a smaller "
        f"model. `vitkit plan memory RECIPE --batch N --device-memory SIZE` says what fits before training.{kept}"
    )


def _auto_resume(recipe: Recipe, run_dir: Path, overwrite: bool, console: Console) -> tuple[bool, bool]:
    """(resume, overwrite) for resume="auto": continue a run that has a checkpoint, on the same data only."""
    folder, _ = newest_valid_checkpoint(run_dir)
    if folder is None:
        console.print(f"resume auto: no checkpoint in {run_dir} yet, starting the run", highlight=False)
        return False, overwrite or is_run_folder(run_dir)  # a run that never saved is started again
    trained_on = recipe_from_yaml_file(run_dir / "recipe.yaml").data.source or ""
    if not same_source(recipe.data.source or "", trained_on):
        raise VitkitError(
            f"resume auto: the run in {run_dir} trains on {trained_on}, not on {recipe.data.source}. Use the same "
            "data to continue it, or another output folder for a new run on this data."
        )
    return True, overwrite


def _fit_and_summarise(run: Run, console: Console, should_stop: Callable[[Progress], bool] | None) -> dict[str, Any]:
    start = time.perf_counter()
    images = fit(run, console, should_stop)
    summary = run_summary(run, time.perf_counter() - start, images)
    if run.ranks.main:
        write_atomically(run.run_dir / "summary.json", json.dumps(summary, indent=2))
    return summary


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


# --- the loop ------------------------------------------------------------------------------------------------


def fit(run: Run, console: Console, should_stop: Callable[[Progress], bool] | None = None) -> int:
    """Train `run` from where its progress stands to its last step; returns the images trained on.

    Each epoch: mark the state a rollback returns to, train its steps, then validate, keep the best checkpoint
    and write `last`. A stop request is honoured at the next update (mid-epoch) or at the epoch's end.
    """
    s = run.settings
    guard = NonFiniteGuard(s.nonfinite, s.nonfinite_limit, s.rollback_lr_factor)
    checkpointer = _checkpointer(run)
    tracking = bool(accelerate_trackers(run.cfg.train.log_with)) and run.ranks.main  # MLflow / W&B
    logger = _open_logger(run, tracking) if run.ranks.main else NoLogger()
    meter = Throughput()
    try:
        with TrainDisplay(s.total_steps, console, s.log_every) as display, stop_on_signals(console) as signalled:

            def stop_requested() -> bool:  # a signal to any process stops all of them at the same update
                return run.ranks.any(signalled() or (should_stop is not None and should_stop(run.progress)))

            loop = _Loop(run, guard, checkpointer, logger, display, meter, stop_requested)
            while not run_finished(run):
                guard.mark(run.raw_model, run.ema, run.optimizer, run.scheduler, run.progress)
                if not loop.train_epoch():
                    continue  # rolled back: the epoch starts again from the marked state, at a lower lr
                loop.end_epoch()
                if not run_finished(run) and stop_requested():
                    raise _preempted(run)
            _replace_damaged_best(run, checkpointer, console)
    finally:
        logger.close()
        if tracking:
            run.accelerator.end_training()
    return meter.total_images


def _replace_damaged_best(run: Run, checkpointer: Checkpointer, console: Console) -> None:
    """A run resumed with a damaged `best` and no epoch left to train has no best to evaluate or export: the final
    epoch's weights (the model as resumed, validated in that epoch's record) become it."""
    p, best = run.progress, run.run_dir / "checkpoints" / "best"
    if p.best_epoch >= 0 or not p.history or checkpointer.best_metric not in p.history[-1]:
        return
    if not best.exists() or checkpoint_problem(best) is None:  # no best yet is no damaged one (e.g. no finite score)
        return
    record = p.history[-1]
    meta = {
        "best_source": best_of(record, checkpointer.best_metric)[1],
        "why": f"the final epoch ({record['epoch']}), in place of a best checkpoint that was damaged",
    }
    checkpointer.save_best(p, record, meta)
    checkpointer.save_last(p, meta)
    console.print(f"the final epoch ({record['epoch']}) is now the best checkpoint, in place of the damaged one")


def run_finished(run: Run) -> bool:
    p, s = run.progress, run.settings
    return p.epoch >= s.epochs or p.global_step >= s.total_steps


def epoch_finished(run: Run) -> bool:
    p, s = run.progress, run.settings
    return p.step_in_epoch >= s.steps_per_epoch or p.global_step >= s.total_steps


@dataclass
class _Loop:
    """The loop's pieces, so that each phase of an epoch is a short method over them."""

    run: Run
    guard: NonFiniteGuard
    checkpointer: Checkpointer
    logger: MetricsLogger
    display: TrainDisplay
    meter: Throughput
    stop_requested: Callable[[], bool]
    epoch_loss: torch.Tensor = field(default_factory=lambda: torch.zeros(()))  # the epoch's summed step losses

    def train_epoch(self) -> bool:
        """The current epoch's steps from where it stands; False when a rollback cut it short."""
        run, p = self.run, self.run.progress
        run.task.train_mode()
        self.epoch_loss = torch.tensor(p.epoch_loss_sum, dtype=torch.float32, device=run.accelerator.device)
        self.meter.reset()
        with closing(run.task.batches(p.epoch, p.step_in_epoch)) as batches:
            for batch in self.meter.timed(batches):
                outcome = self.step(batch)
                if outcome.updated and self.after_update(outcome) == "rollback":
                    return False
                if run.progress.global_step % run.settings.log_every == 0 or run_finished(run):
                    self.log_step(outcome)
                if epoch_finished(run):
                    break
                if outcome.updated and self.stop_requested():
                    run.progress.epoch_loss_sum = run.ranks.mean(self.epoch_loss)
                    self.checkpointer.save_last(run.progress)
                    raise _preempted(run)
        return True

    def step(self, batch: Batch) -> StepOutcome:
        if self.run.dynamics is not None:  # read the gradients and update sizes of the updates that get logged
            self.run.dynamics.due = (self.run.progress.global_step + 1) % self.run.settings.log_every == 0
        outcome = train_step(self.run, batch)
        p = self.run.progress
        p.global_step += 1
        p.step_in_epoch += 1
        self.meter.count(batch.size * self.run.ranks.world)  # every process takes a batch of the same size
        self.display.advance(p.global_step)
        return outcome

    def after_update(self, outcome: StepOutcome) -> str:
        """Count a finite update (schedule, EMA, epoch loss) or let the guard judge a non-finite one."""
        run, p = self.run, self.run.progress
        p.last_grad_norm = outcome.grad_norm
        if not outcome.finite:
            return self.nonfinite(outcome)
        self.guard.good_update(p)
        self.epoch_loss += outcome.window.loss_sum
        p.epoch_batches += outcome.window.steps
        if outcome.scaler_skipped:  # fp16: the scaler lowered its scale and made no update; nothing went wrong
            p.scaler_skipped += 1
            return "ok"
        p.updates += 1
        set_lr(run.scheduler, run.optimizer, p)
        if run.ema is not None:
            run.ema.update(run.raw_model, step=p.updates)
        return "ok"

    def nonfinite(self, outcome: StepOutcome) -> str:
        run, p = self.run, self.run.progress
        action = self.guard.judge(p)
        values = {"loss": float(outcome.loss), "grad_norm": outcome.grad_norm, "action": action}
        self.logger.log("nonfinite", p.global_step, epoch=p.epoch + 1, update=p.updates, **values)
        self.display.message(f"non-finite loss or gradient at step {p.global_step}: {action}")
        if action == "stop":
            raise _diverged(run, run.settings.nonfinite)
        if action == "rollback":
            run.progress = self.guard.rollback(run.raw_model, run.ema, run.optimizer, run.scheduler, p)
            set_lr(run.scheduler, run.optimizer, run.progress)
            lowered = run.progress.lr_factor
            self.display.message(f"rolled back to step {run.progress.global_step}; lr x {lowered:g} from here")
        return action

    def log_step(self, outcome: StepOutcome) -> None:
        """The step's loss, the peak lr (the head's under layer decay, not the stem's) and the last update's
        gradient norm to metrics.jsonl; every group's lr to TensorBoard; throughput to timing.jsonl."""
        p, step = self.run.progress, self.run.progress.global_step
        group_lrs = [g["lr"] for g in self.run.optimizer.param_groups]
        loss, lr = self.run.ranks.mean(outcome.loss), max(group_lrs)  # the global batch's loss
        self.logger.log_extra(step, {f"lr/group_{i}": v for i, v in enumerate(group_lrs)})
        parts = outcome.parts
        extra = (
            {}
            if parts.distill is None
            else {"task_loss": float(parts.task.detach()), "distill_loss": float(parts.distill.detach())}
        )
        extra |= self.dynamics_readings(step)
        self.logger.log("step", step, epoch=p.epoch + 1, loss=loss, lr=lr, grad_norm=p.last_grad_norm, **extra)
        images_per_s, data_wait = self.meter.lap()
        self.logger.log_timing(step, img_per_s=images_per_s, data_wait=data_wait)
        self.display.step(step, p.epoch + 1, loss, lr, images_per_s)

    def dynamics_readings(self, step: int) -> dict[str, Any]:
        """The monitor's per-block readings of this step's update (once), also per block to TensorBoard."""
        dynamics = self.run.dynamics
        if dynamics is None or not dynamics.grads:
            return {}
        readings = dynamics.record()
        per_block = {
            f"dynamics/{name}/block_{i}": v
            for name in ("grad_norm_attn", "grad_norm_mlp", "update_ratio_attn", "update_ratio_mlp")
            for i, v in enumerate(readings[name])
            if math.isfinite(v)
        }
        self.logger.log_extra(step, per_block)
        dynamics.grads, dynamics.ratios = {}, {}
        return readings

    def end_epoch(self) -> None:
        """Validate (every train.eval_every epochs, and at the end), keep the best checkpoint, write `last`."""
        run, p, s = self.run, self.run.progress, self.run.settings
        epoch_loss = run.ranks.mean(self.epoch_loss)  # over the processes: the loss of the global batches
        record: dict[str, Any] = {"epoch": p.epoch + 1, "train_loss": epoch_loss / max(p.epoch_batches, 1)}
        finished = p.epoch + 1 == s.epochs or p.global_step >= s.total_steps
        if p.step_in_epoch == s.steps_per_epoch:
            p.epoch, p.step_in_epoch, p.epoch_loss_sum, p.epoch_batches = p.epoch + 1, 0, 0.0, 0
        else:
            record["partial"] = True  # train.max_updates ended the run inside this epoch
            p.epoch_loss_sum = epoch_loss
        if record["epoch"] % s.eval_every == 0 or finished:
            record |= run.task.validate(run.raw_model)
            if run.ema is not None:
                record |= run.task.validate(run.ema.module, prefix="ema_")
        meta = self.checkpointer.save_best_if_improved(p, record)
        self.logger.log("epoch", p.global_step, **record)
        p.history.append(record)
        self.display.message(epoch_line(record))
        for warning in dynamics_warnings(record):
            self.display.message(f"warning: {warning}")
        self.checkpointer.save_last(p, meta)


class Throughput:
    """Images per second and the share of time spent waiting for data, between two logging steps."""

    def __init__(self) -> None:
        self.total_images = 0
        self.reset()

    def reset(self) -> None:
        self.start, self.images, self.wait = time.perf_counter(), 0, 0.0

    def timed(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        iterator = iter(batches)
        while True:
            start = time.perf_counter()
            batch = next(iterator, None)
            self.wait += time.perf_counter() - start
            if batch is None:
                return
            yield batch

    def count(self, images: int) -> None:
        self.images += images
        self.total_images += images

    def lap(self) -> tuple[float, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        figures = self.images / elapsed, self.wait / elapsed
        self.reset()
        return figures


def dynamics_warnings(record: dict[str, Any]) -> list[str]:
    """What the epoch's attention readings say is going wrong, in words for the progress line."""
    out = []
    if record.get("attn_collapsed"):
        layers = ", ".join(str(i) for i in record["attn_collapsed"])
        out.append(
            f"attention collapsed in layer {layers} (entropy near zero, heads alike): lower optim.lr or lengthen "
            "schedule.warmup_epochs"
        )
    uniform = record.get("attn_uniform", [])
    if uniform and len(uniform) == len(record.get("attn_entropy", [])) and record.get("epoch", 0) >= UNIFORM_AFTER:
        out.append("attention is still uniform in every layer: the model has not learnt where to look yet")
    return out


UNIFORM_AFTER = 3  # epochs after which attention that is uniform in every layer is worth a warning


def set_lr(scheduler: Any, optimizer: Any, progress: Progress) -> None:
    """The schedule's lr for the next update, times the factor left by non-finite rollbacks."""
    scheduler.step_update(progress.updates)
    if progress.lr_factor != 1.0:
        for group in optimizer.param_groups:
            group["lr"] *= progress.lr_factor


def _checkpointer(run: Run) -> Checkpointer:
    cfg = run.cfg
    return Checkpointer(
        run.run_dir,
        ranks=run.ranks,
        model=run.raw_model,
        ema=run.ema,
        optimizer=run.optimizer,
        scheduler=run.scheduler,
        scaler=run.accelerator.scaler,
        model_name=cfg.model.name,
        run_meta={"num_classes": run.facts.data.num_classes, "strategy": cfg.finetune.strategy},
        keep_last=cfg.train.keep_last,
        best_metric=cfg.train.best_metric,
    )


def _open_logger(run: Run, tracking: bool) -> MetricsLogger:
    """metrics.jsonl, timing.jsonl, TensorBoard and the recipe's other trackers (through accelerate)."""
    log_with = run.cfg.train.log_with
    if tracking:
        config = flat_config(run.cfg.model_dump(mode="json"))
        kwargs = tracker_init_kwargs(accelerate_trackers(log_with), run.run_dir)
        run.accelerator.init_trackers("vitkit", config=config, init_kwargs=kwargs)
    return MetricsLogger(
        run.run_dir,
        tensorboard="tensorboard" in log_with,
        resume_step=run.progress.global_step if run.resumed else None,
        sink=run.accelerator.log if tracking else None,
    )


def _preempted(run: Run) -> TrainingPreempted:
    p = run.progress
    return TrainingPreempted(
        f"training stopped on request {where_in_training(p)} (update {p.updates}); a checkpoint was saved. Continue "
        f"with: vitkit train --resume {run.run_dir}"
    )


def _diverged(run: Run, policy: str) -> TrainingDiverged:
    p, limit = run.progress, run.settings.nonfinite_limit
    why = (
        "train.nonfinite=stop"
        if policy == "stop"
        else f"{p.nonfinite_in_a_row} non-finite updates in a row or {p.rollbacks} rollbacks reached "
        f"train.nonfinite_limit ({limit})"
    )
    return TrainingDiverged(
        f"the loss or the gradients became NaN/inf at step {p.global_step} (update {p.updates}) and training stopped "
        f"({why}). The checkpoints in {run.run_dir / 'checkpoints'} are from before and are intact. Lower optim.lr, "
        "set optim.clip_grad (e.g. 1.0) or use precision bf16/fp32 instead of fp16, then --resume "
        f"{run.run_dir} (with --set for the change)."
    )
