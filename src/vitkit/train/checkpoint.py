"""Checkpoints: weights in safetensors, training state (optimizer, schedule, counters, RNG) loaded weights-only.

A checkpoint is a folder: `model.safetensors`, `ema.safetensors` (when EMA is on), `state.pt` and `meta.json`.
It is written to a temporary folder first and then renamed into place, so a crash mid-save leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vitkit.errors import VitkitError
from vitkit.models.lora import model_state_dict


@dataclass
class Progress:
    """Where training stands; enough to continue a run (epoch, step in epoch, updates, best metric)."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    updates: int = 0
    best_metric: float = float("-inf")
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)


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


def save_checkpoint(
    folder: Path,
    model: nn.Module,
    ema: nn.Module | None,
    training_state: dict[str, Any],
    meta: dict[str, Any],
) -> None:
    """Write a checkpoint folder atomically (temporary folder, then rename)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_state_dict_cpu(model), str(tmp / "model.safetensors"))
    if ema is not None:
        save_file(_state_dict_cpu(ema), str(tmp / "ema.safetensors"))
    torch.save(training_state, tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise VitkitError(f"checkpoint file {path} does not exist. Check the run folder or checkpoint path.")
    return load_file(str(path))


def load_training_state(folder: Path) -> dict[str, Any]:
    path = folder / "state.pt"
    if not path.exists():
        raise VitkitError(f"{folder} has no state.pt: it is not a resumable vitkit checkpoint.")
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickled payload or a damaged file
        raise VitkitError(f"{path} could not be loaded safely ({exc}). Use a checkpoint written by vitkit.") from exc
    return state


def progress_to_dict(progress: Progress) -> dict[str, Any]:
    return asdict(progress)


def progress_from_dict(data: dict[str, Any]) -> Progress:
    return Progress(**data)
