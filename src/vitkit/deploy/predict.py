"""Batch prediction with a run's model or an exported one: files, folders and globs in, CSV or JSONL out.

Each image goes through the model's own eval transform and normalisation; probabilities use the temperature that
`vitkit evaluate` fitted for those weights (a run's calibration.json, or the one written into model.json), so a
printed 90% means right about 90% of the time. Unreadable files are reported with their reason, not fatal.
"""

from __future__ import annotations

import csv
import glob
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vitkit.config.schema import Recipe
from vitkit.data.check import find_bad_images
from vitkit.data.sources import ImageSet
from vitkit.deploy.pixels import pixel_batches
from vitkit.errors import DataError, VitkitError
from vitkit.files import write_atomically

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class Classifier:
    """What prediction needs of a model, wherever it comes from."""

    logits: Callable[[np.ndarray], np.ndarray]  # float32 NCHW normalised pixels -> logits
    recipe: Recipe  # eval transform, normalisation, batch size
    classes: list[str]
    temperature: float | None
    source: str
    sha256: str | None = None  # of the exported file, or of the checkpoint's weights
    version: str | None = None  # an export's model version
    runtime: str = "pytorch"  # onnxruntime, torch.export or pytorch (a run folder, eager)
    thresholds: list[float | None] | None = None  # multi-label: per-label thresholds fitted on validation

    @property
    def multilabel(self) -> bool:
        return self.recipe.train.task == "multilabel"

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Class probabilities, softmax(logits / T) with the fitted temperature; a multi-label model's are each
        label's sigmoid."""
        scores = torch.from_numpy(logits)
        if self.multilabel:
            return scores.sigmoid().numpy()
        return (scores / (self.temperature or 1.0)).softmax(dim=1).numpy()

    def findings(self, probabilities: np.ndarray) -> list[list[str]]:
        """Multi-label: per image, the labels at or above their threshold (90% specificity on the validation
        split, as `vitkit evaluate` fitted it; 0.5 where none was fitted)."""
        cut = np.asarray([0.5 if t is None else t for t in (self.thresholds or [None] * len(self.classes))])
        return [[c for c, hit in zip(self.classes, row >= cut, strict=True) if hit] for row in probabilities]


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]]  # (class, probability), most likely first; empty when the file could not be read
    low_confidence: bool = False
    error: str | None = None
    findings: list[str] | None = None  # multi-label: the labels at or above their decision thresholds


def load_classifier(target: Path) -> Classifier:
    """A run folder (its best checkpoint, eager PyTorch) or a folder written by `vitkit export` (ONNX or .pt2)."""
    from vitkit.deploy.export import MODEL_JSON, check_exported_file, read_model_json

    if (target / MODEL_JSON).exists():
        from vitkit.deploy.formats import load_runtime

        doc = read_model_json(target)
        try:
            runtime = load_runtime(target / doc["file"])
        except VitkitError:
            check_exported_file(target, doc)  # a damaged or replaced file is named as such
            raise
        recipe = Recipe.model_validate(doc["recipe"])
        kind = "onnxruntime" if doc["format"] == "onnx" else "torch.export"
        return Classifier(
            runtime,
            recipe,
            doc["classes"],
            doc.get("temperature"),
            f"{target / doc['file']}",
            doc.get("file_sha256"),
            doc.get("version"),
            kind,
            (doc.get("thresholds") or {}).get("values"),
        )
    from vitkit.deploy.pixels import eager_logits
    from vitkit.evaluate.run import decision_thresholds, saved_temperature, weights_sha256
    from vitkit.models.run_model import load_run_model

    model, recipe, info = load_run_model(target)
    classes = info.get("classes") or [str(i) for i in range(int(info["num_classes"]))]
    return Classifier(
        lambda x: eager_logits(model, x),
        recipe,
        classes,
        saved_temperature(target, info),
        info["checkpoint"],
        weights_sha256(info),
        thresholds=decision_thresholds(target, info),
    )


def expand_inputs(items: list[str]) -> tuple[list[Path], list[Prediction]]:
    """Files as given; folders searched recursively for image files; glob patterns expanded. Inputs that name
    nothing come back as error predictions."""
    paths: list[Path] = []
    missing: list[Prediction] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            paths += found
            if not found:
                missing.append(Prediction(item, [], error="a folder with no image files"))
        elif path.exists():
            paths.append(path)
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
            paths += matches
            if not matches:
                missing.append(Prediction(item, [], error="the pattern matches no file"))
        else:
            missing.append(Prediction(item, [], error="missing"))
    return paths, missing


def predict(
    classifier: Classifier,
    paths: list[Path],
    *,
    top: int = 3,
    threshold: float = 0.5,
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[Prediction]:
    """Predictions for `paths` in order: unreadable files (named with their reason) first, then the rest in
    batches of the recipe's batch size; `on_batch` is told how many images each batch held."""
    images = ImageSet(list(paths), np.zeros(len(paths), dtype=np.int64))
    bad = {str(b.path): b.reason for b in find_bad_images(images, "input", classifier.recipe.data.max_image_pixels)}
    for path, reason in bad.items():
        yield Prediction(path, [], error=reason)
    good = [p for p in paths if str(p) not in bad]
    if not good:
        return
    good_set = ImageSet(good, np.zeros(len(good), dtype=np.int64))
    start = 0
    for pixels, _ in pixel_batches(classifier.recipe, good_set, classifier.recipe.train.batch_size):
        probs = torch.from_numpy(classifier.probabilities(classifier.logits(pixels)))
        values, indices = probs.topk(min(top, probs.shape[1]), dim=1)
        findings = classifier.findings(probs.numpy()) if classifier.multilabel else None
        for offset, (vs, ids) in enumerate(zip(values, indices, strict=True)):
            ranked = [(classifier.classes[int(i)], float(v)) for v, i in zip(vs, ids, strict=True)]
            path = str(good[start + offset])
            if findings is not None:
                yield Prediction(path, ranked, findings=findings[offset])
            else:
                yield Prediction(path, ranked, low_confidence=ranked[0][1] < threshold)
        start += len(pixels)
        if on_batch is not None:
            on_batch(len(pixels))


def write_predictions(predictions: list[Prediction], out: Path) -> None:
    """CSV (path, label_1, prob_1, ..., low_confidence or findings, error) or JSONL, by the file's suffix; a
    multi-label model's rows name the labels found (separated by | in CSV) instead of a low-confidence flag."""
    multilabel = any(p.findings is not None for p in predictions)
    if out.suffix == ".jsonl":
        rows = [
            {"path": p.path, "top": p.top}
            | ({"findings": p.findings} if multilabel else {"low_confidence": p.low_confidence})
            | {"error": p.error}
            for p in predictions
        ]
        write_atomically(out, "".join(json.dumps(r) + "\n" for r in rows))
        return
    if out.suffix != ".csv":
        raise VitkitError(f"--out {out}: write predictions to a .csv or a .jsonl file.")
    k = max((len(p.top) for p in predictions), default=0)
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    ranks = [column for i in range(1, k + 1) for column in (f"label_{i}", f"prob_{i}")]
    writer.writerow(["path", *ranks, "findings" if multilabel else "low_confidence", "error"])
    for p in predictions:
        cells: list[Any] = [x for label, prob in p.top for x in (label, f"{prob:.6f}")]
        cells += [""] * (2 * k - len(cells))
        flag = "|".join(p.findings or []) if multilabel else p.low_confidence
        writer.writerow([p.path, *cells, flag if p.error is None else "", p.error or ""])
    write_atomically(out, text.getvalue(), newline="")  # the csv module ends its rows itself


def require_some_readable(predictions: list[Prediction]) -> None:
    if predictions and all(p.error for p in predictions):
        problems = "; ".join(f"{p.path}: {p.error}" for p in predictions[:5])
        raise DataError(f"cannot classify {problems}. Check the paths, and that each file is an image.")
