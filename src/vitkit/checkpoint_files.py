"""The files of a checkpoint folder as every part of vitkit reads them: checksums verified, weights loaded.

Training writes checkpoints (train.checkpoint); evaluation, models and deployment only read them, through this
module, so none of them depends on the trainer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from vitkit.errors import VitkitError

CHECKSUMS = "checksums.json"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_problem(folder: Path) -> str | None:
    """Why `folder` is not a complete, undamaged checkpoint, or None when every file matches its checksum."""
    sums_path = folder / CHECKSUMS
    if not folder.is_dir():
        return "missing"
    if not sums_path.exists():
        return f"no {CHECKSUMS} (an interrupted save, or written by an older vitkit)"
    try:
        sums = json.loads(sums_path.read_text())
    except json.JSONDecodeError:
        return f"{CHECKSUMS} is damaged"
    for name, expected in sums.items():
        path = folder / name
        if not path.exists():
            return f"{name} is missing"
        if sha256(path) != expected:
            return f"{name} does not match its checksum (damaged or changed after saving)"
    return None


def verify_checkpoint(folder: Path) -> None:
    """Raise a clear error unless `folder` is a complete, undamaged checkpoint."""
    problem = checkpoint_problem(folder)
    if problem is not None:
        raise VitkitError(f"checkpoint {folder} cannot be used: {problem}.")


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise VitkitError(f"checkpoint file {path} does not exist. Check the run folder or checkpoint path.")
    return load_file(str(path))
