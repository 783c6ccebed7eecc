"""Checkpoints: weights in safetensors, training state (optimizer, schedule, counters, RNG) loaded weights-only.

A checkpoint is a folder: `model.safetensors`, `ema.safetensors` (when EMA is on), `state.pt`, `meta.json` and
`checksums.json` (SHA-256 of each file, verified on load). It is written to a temporary folder, every file
flushed to disk, then renamed into place, so a process killed mid-save, or a failed write (disk full), leaves the
previous checkpoint intact. Older checkpoints are kept as `last.1`, `last.2`, ... (`train.keep_last`).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from vitkit.checkpoint_files import CHECKSUMS, checkpoint_problem, sha256
from vitkit.errors import VitkitError
from vitkit.models.convert import safe_torch_load
from vitkit.models.lora import model_state_dict


@dataclass
class Progress:
    """Where training stands; enough to continue a run exactly, also from the middle of an epoch."""

    epoch: int = 0
    step_in_epoch: int = 0  # batches of `epoch` already trained on
    global_step: int = 0  # steps (micro-batches) trained on, in all epochs
    updates: int = 0  # optimizer updates applied
    best_metric: float = float("-inf")
    best_epoch: int = -1  # numbered from 1; -1: none yet
    best_val_loss: float = float("inf")  # of the best epoch: breaks accuracy ties
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_loss_sum: float = 0.0  # the running train loss of the current epoch (an fp32 value: exact as a float)
    epoch_batches: int = 0
    last_grad_norm: float = float("nan")  # the step log repeats the last update's norm between updates
    lr_factor: float = 1.0  # lowered by each non-finite rollback
    nonfinite_skipped: int = 0
    nonfinite_in_a_row: int = 0
    rollbacks: int = 0
    scaler_skipped: int = 0  # fp16: updates the loss scaler skipped for overflowing gradients (routine, not errors)
    images_per_step: int = 0  # over all processes: a step's place in the epoch's global order (0: not recorded)


def where_in_training(progress: Progress) -> str:
    """Where training stands, with epochs numbered from 1: 'after epoch 2' or 'in epoch 3, after step 5'."""
    if progress.step_in_epoch:
        return f"in epoch {progress.epoch + 1}, after step {progress.step_in_epoch}"
    return f"after epoch {progress.epoch}" if progress.epoch else "at the start"


def rng_state() -> dict[str, Any]:
    """Every RNG that affects training, in types that `torch.load(weights_only=True)` accepts."""
    np_state = np.random.get_state()
    py_version, py_keys, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "python_version": py_version,
        "python_keys": list(py_keys),
        "python_gauss": py_gauss,
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),  # type: ignore[index]
        "numpy_pos": int(np_state[2]),  # type: ignore[index]
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((state["python_version"], tuple(state["python_keys"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _state_dict_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage (e.g. tied weights): store contiguous copies. A LoRA model stores only
    # its adapters and head (model_state_dict).
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model_state_dict(module).items()}


_CHECKPOINT_NAME = re.compile(r"^(last(\.\d+)?|best)$")  # not the .tmp/.old folders of a save in progress


class CheckpointWriteError(VitkitError):
    """A checkpoint could not be written; the previous one is untouched."""


def save_checkpoint(
    folder: Path,
    model: nn.Module,
    ema: nn.Module | None,
    training_state: dict[str, Any],
    meta: dict[str, Any],
    keep: int = 1,
) -> None:
    """Write a checkpoint folder atomically: temporary folder, files flushed, checksums, then rename. With
    `keep` > 1 the previous checkpoints are kept as FOLDER.1 (newest) ... FOLDER.(keep-1)."""
    tmp = folder.with_name(folder.name + ".tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(_state_dict_cpu(model), str(tmp / "model.safetensors"))
        if ema is not None:
            save_file(_state_dict_cpu(ema), str(tmp / "ema.safetensors"))
        torch.save(training_state, tmp / "state.pt")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
        sums = {f.name: sha256(f) for f in sorted(tmp.iterdir())}
        (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=2))
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = f"the previous checkpoint {folder} is intact" if folder.exists() else "no earlier checkpoint exists"
        raise CheckpointWriteError(
            f"could not write the checkpoint {folder} ({exc}); {previous}. Free disk space or fix the folder's "
            "permissions, then continue with --resume."
        ) from exc
    _rotate(folder, keep)
    tmp.rename(folder)
    _fsync(folder.parent)


def _rotate(folder: Path, keep: int) -> None:
    """Shift FOLDER -> FOLDER.1 -> ... -> FOLDER.(keep-1), dropping the oldest; each step is one rename."""
    older = [folder.with_name(f"{folder.name}.{i}") for i in range(1, max(keep, 1))]
    chain = [folder, *older]
    if older:
        shutil.rmtree(older[-1], ignore_errors=True)
        for src, dst in zip(reversed(chain[:-1]), reversed(chain[1:]), strict=True):
            if src.exists():
                src.rename(dst)
    elif folder.exists():
        old = folder.with_name(folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
        shutil.rmtree(old, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_candidates(run_dir: Path) -> list[Path]:
    """Every checkpoint folder of a run: last, last.1, ... and best."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _CHECKPOINT_NAME.match(p.name))


def newest_valid_checkpoint(run_dir: Path) -> tuple[Path | None, list[str]]:
    """The resumable checkpoint with the most updates, skipping damaged ones (each named in a warning)."""
    best: tuple[int, Path] | None = None
    warnings = []
    for folder in checkpoint_candidates(run_dir):
        if not (folder / "state.pt").exists() and not (folder / CHECKSUMS).exists():
            continue
        problem = checkpoint_problem(folder)
        if problem is not None:
            warnings.append(f"skipping checkpoint {folder}: {problem}")
            continue
        updates = int(json.loads((folder / "meta.json").read_text()).get("updates", 0))
        if best is None or updates > best[0] or (updates == best[0] and folder.name == "last"):
            best = (updates, folder)
    return (best[1] if best else None), warnings


def load_training_state(folder: Path) -> dict[str, Any]:
    path = folder / "state.pt"
    if not path.exists():
        raise VitkitError(f"{folder} has no state.pt: it is not a resumable vitkit checkpoint.")
    fix = "vitkit writes no such objects: use another checkpoint of the run (resume picks the newest undamaged one)."
    state: dict[str, Any] = safe_torch_load(path, fix)
    return state


def progress_to_dict(progress: Progress) -> dict[str, Any]:
    return asdict(progress)


def progress_from_dict(data: dict[str, Any]) -> Progress:
    known = Progress.__dataclass_fields__
    return Progress(**{k: v for k, v in data.items() if k in known})
