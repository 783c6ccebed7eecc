"""The models a server holds: one export or run folder, or a folder of named, versioned exports.

    models/                     vitkit serve models/       -> every NAME, every VERSION
      shapes/1.0.0/model.json   vitkit serve models/shapes -> the versions of one model
      shapes/1.1.0/model.json   vitkit serve models/shapes/1.1.0 (or a run folder) -> one model

A version folder is what `vitkit export --version V --out models/NAME/V` writes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vitkit.data.pipeline import eval_transform, normalize_batch
from vitkit.deploy.predict import Classifier, load_classifier
from vitkit.errors import VitkitError

MODEL_JSON = "model.json"


@dataclass
class ServedModel:
    """One version of one model, with the preprocessing it was evaluated with."""

    name: str
    version: str
    classifier: Classifier
    transform: Callable[[Image.Image], Any] = field(repr=False)
    monitor_forward: Callable[[np.ndarray], list[np.ndarray]] | None = field(default=None, repr=False)
    reference: dict[str, np.ndarray] | None = field(default=None, repr=False)  # the export's validation statistics

    @property
    def classes(self) -> list[str]:
        return self.classifier.classes

    @property
    def img_size(self) -> int:
        return self.classifier.recipe.model.img_size

    def pixels(self, image: Image.Image) -> np.ndarray:
        """(3, H, W) float32: the evaluation transform and normalisation of the model's run."""
        mean, std = self.classifier.recipe.data.normalization()
        uint8 = torch.as_tensor(np.asarray(self.transform(image)))[None]
        return normalize_batch(uint8, mean, std).numpy()[0]

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated class probabilities (softmax of logits / the fitted temperature), or per-label sigmoids."""
        return self.classifier.probabilities(logits)

    def metadata(self) -> dict[str, Any]:
        """The v2 protocol's model metadata, with vitkit's own facts (classes, hash, preprocessing)."""
        size = self.img_size
        recipe = self.classifier.recipe
        mean, std = recipe.data.normalization()
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": self.classifier.runtime,
            "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 3, size, size]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, len(self.classes)]}],
            "parameters": {
                "classes": self.classes,
                "sha256": self.classifier.sha256,
                "temperature": self.classifier.temperature,
                "preprocessing": {
                    "resize": "short side to img_size / crop_pct, then centre crop",
                    "img_size": size,
                    "crop_pct": recipe.augment.crop_pct,
                    "interpolation": recipe.augment.interpolation,
                    "mean": list(mean),
                    "std": list(std),
                },
            },
        }


def served_model(folder: Path, name: str, version: str | None = None) -> ServedModel:
    classifier = load_classifier(folder)
    recipe = classifier.recipe
    transform = eval_transform(recipe.augment, recipe.model.img_size)
    served = ServedModel(name, version or classifier.version or "1", classifier, transform)
    served.monitor_forward, served.reference = _monitoring(folder)
    return served


def _monitoring(folder: Path) -> tuple[Callable[[np.ndarray], list[np.ndarray]] | None, dict[str, np.ndarray] | None]:
    """The export's monitor model and reference statistics, where it has them (exports from vitkit 0.x before
    monitoring, and run folders, have none: they are served without drift tests)."""
    from vitkit.deploy.export import read_model_json

    if not (folder / MODEL_JSON).exists():
        return None, None
    record = read_model_json(folder).get("monitor") or {}
    if not record.get("reference") or not (folder / record["reference"]).exists():
        return None, None
    from safetensors.numpy import load_file

    from vitkit.deploy.formats import load_runtime

    reference = load_file(str(folder / record["reference"]))
    if not record.get("file"):
        return None, reference
    runtime: Any = load_runtime(folder / record["file"])
    return runtime.outputs, reference


def _version_key(version: str) -> tuple[Any, ...]:
    """1.10.0 after 1.9.0: numeric parts compare as numbers."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"[.\-+]", version))


def _is_model(folder: Path) -> bool:
    return (folder / MODEL_JSON).exists() or (folder / "recipe.yaml").exists()


def _versions(folder: Path, name: str) -> list[ServedModel]:
    found = sorted((p for p in folder.iterdir() if p.is_dir() and _is_model(p)), key=lambda p: _version_key(p.name))
    return [served_model(p, name, p.name) for p in found]


def load_models(path: Path, name: str | None = None) -> dict[str, list[ServedModel]]:
    """Every model under `path`, by name, versions oldest first (the last one serves by default)."""
    if not path.is_dir():
        problem = f"{path} is a file, not a folder" if path.exists() else f"{path}: no such folder"
        raise VitkitError(f"{problem}. Serve an export folder, a run folder or a folder of models.")
    if _is_model(path):
        versioned = re.match(r"^\d", path.name) is not None
        # models/NAME/1.2.0 and runs/NAME/export are named after NAME
        own = name or (path.parent.name if versioned or path.name.startswith("export") else path.name)
        return {own: [served_model(path, own, path.name if versioned else None)]}
    versions = _versions(path, name or path.name)
    if versions:
        return {name or path.name: versions}
    models = {p.name: _versions(p, p.name) for p in sorted(path.iterdir()) if p.is_dir()}
    models = {k: v for k, v in models.items() if v}
    if not models:
        raise VitkitError(
            f"{path} holds no model: serve a folder written by vitkit export, a run folder, or a folder of "
            "NAME/VERSION/ exports (vitkit export RUN --version 1.2.0 --out models/NAME/1.2.0)."
        )
    return models
