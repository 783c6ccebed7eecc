"""Hugging Face datasets in and out.

In: `--data hf:PATH` (a folder written by `save_to_disk`, or an image folder `datasets` reads) or `hf:ORG/NAME`, a
dataset already in the local `datasets` cache (loaded once where there is network). The cache is read with the
Hub switched off, so a name that is not cached fails at once with what to do, instead of waiting on a network.
Out: `vitkit data export` writes any vitkit source as a `DatasetDict` (train/validation, an Image column with the
encoded files, a ClassLabel column, and the group column when there is one), with the split vitkit trains on.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitkit.data.sources import (
    VAL_FOLDER_NAMES,
    DataSplits,
    HFColumns,
    ImageSet,
    _split,
    image_problem,
)
from vitkit.errors import DataError, MissingExtraError, VitkitError
from vitkit.run_folder import make_parent_folder


class _HFColumn(Sequence[Any]):
    """Lazy view of the image column of a `datasets.Dataset` (decoding happens on access)."""

    def __init__(self, dataset: Any, column: str) -> None:
        self.dataset, self.column = dataset, column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: Any) -> Any:
        return self.dataset[int(i)][self.column]


def _require_datasets(purpose: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise MissingExtraError("datasets", "hf", purpose) from None
    return datasets


def _column(names: list[str], chosen: str | None, candidates: tuple[str, ...], kind: str, where: str) -> str:
    if chosen is not None:
        if chosen not in names:
            raise DataError(f"{where}: no column '{chosen}' (data.{kind}_column); the columns are {names}.")
        return chosen
    found = next((c for c in candidates if c in names), None)
    if found is None:
        raise DataError(f"{where}: no {kind} column found among {names}; name it with --set data.{kind}_column=COLUMN.")
    return found


@contextmanager
def _hub_off(datasets: Any) -> Iterator[None]:
    """Read only the local cache: no network call, so an uncached name fails at once."""
    saved = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = saved


def _load(path: str, datasets: Any) -> Any:
    root = Path(path).expanduser()
    if root.exists():
        try:
            return datasets.load_from_disk(str(root))
        except FileNotFoundError:
            pass  # not a save_to_disk folder: an image folder, read by the datasets library's imagefolder builder
        try:
            return datasets.load_dataset("imagefolder", data_dir=str(root))
        except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
            raise DataError(
                f"hf:{path} holds neither a dataset written by save_to_disk nor image files in class folders "
                f"({type(exc).__name__}: {exc}). Pass the folder that save_to_disk wrote, or an image folder."
            ) from None
    if path.count("/") > 1 or path.startswith((".", "/", "~")):
        raise DataError(f"hf:{path}: the folder does not exist. Give a folder written by save_to_disk, or ORG/NAME.")
    try:
        with _hub_off(datasets):
            return datasets.load_dataset(path)
    except (ConnectionError, FileNotFoundError, ValueError) as exc:
        raise DataError(
            f"hf:{path} is neither a folder nor a dataset in the local datasets cache "
            f"({datasets.config.HF_DATASETS_CACHE}). Where there is network, load it once "
            f"(python -c \"import datasets; datasets.load_dataset('{path}')\"), or save it with save_to_disk and "
            f"pass that folder. ({type(exc).__name__})"
        ) from None


def load_hf(path: str, val_fraction: float, seed: int, columns: HFColumns) -> DataSplits:
    """A dataset from a folder or the local cache as train/val splits (the split names and columns as asked)."""
    datasets = _require_datasets("--data hf:PATH")
    where = f"hf:{path}"
    loaded = _load(path, datasets)
    if isinstance(loaded, datasets.DatasetDict):
        if columns.train_split not in loaded:
            raise DataError(f"{where}: no '{columns.train_split}' split (found {list(loaded)}); set data.hf_splits.")
        train_ds = loaded[columns.train_split]
        if columns.val_split is not None and columns.val_split not in loaded:
            raise DataError(f"{where}: no '{columns.val_split}' split (found {list(loaded)}); set data.hf_splits.")
        val_names = (columns.val_split,) if columns.val_split else VAL_FOLDER_NAMES
        val_ds = next((loaded[n] for n in val_names if n in loaded), None)
    else:
        train_ds, val_ds = loaded, None
    names = list(train_ds.column_names)
    image_col = _column(names, columns.image, ("image", "img", "pixel_values"), "image", where)
    label_col = _column(names, columns.label, ("label", "labels", "fine_label"), "label", where)
    feature = train_ds.features[label_col]
    labels = np.asarray(train_ds[label_col], dtype=np.int64)
    classes = list(feature.names) if hasattr(feature, "names") else [str(i) for i in range(int(labels.max()) + 1)]
    groups = list(train_ds["group"]) if "group" in names else None
    train = ImageSet(_HFColumn(train_ds, image_col), labels, groups)
    description = f"Hugging Face dataset {path}"
    if val_ds is None:
        return _split(train, classes, val_fraction, seed, description)
    val_groups = list(val_ds["group"]) if "group" in val_ds.column_names else None
    val = ImageSet(_HFColumn(val_ds, image_col), np.asarray(val_ds[label_col], dtype=np.int64), val_groups)
    return DataSplits(train, val, classes, description)


# --- out ---------------------------------------------------------------------------------------------------


def _encoded(item: Any) -> dict[str, Any]:
    """An image as datasets' Image feature stores it: the file's own bytes, or a PNG of in-memory pixels."""
    if isinstance(item, str | Path):
        return {"bytes": Path(item).read_bytes(), "path": Path(item).name}
    image = Image.fromarray(item) if isinstance(item, np.ndarray) else item
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _dataset(images: ImageSet, classes: list[str], datasets: Any) -> tuple[Any, list[str]]:
    """A `datasets.Dataset` of the readable images of a set, and the files left out."""
    keep: list[int] = []
    skipped: list[str] = []
    for i, item in enumerate(images.items):
        problem = image_problem(item) if isinstance(item, str | Path) else None
        if problem:
            skipped.append(f"{item}: {problem}")
        else:
            keep.append(i)
    columns: dict[str, list[Any]] = {
        "image": [_encoded(images.items[i]) for i in keep],
        "label": [int(images.labels[i]) for i in keep],
    }
    features: dict[str, Any] = {"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)}
    if images.groups is not None:
        columns["group"] = [images.groups[i] for i in keep]
        features["group"] = datasets.Value("string")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features)), skipped


def export_hf_dataset(splits: DataSplits, out: Path) -> dict[str, Any]:
    """Write `splits` to `out` with `save_to_disk` (train and validation); `--data hf:OUT` reads it back."""
    datasets = _require_datasets("vitkit data export --format hf")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise VitkitError(f"--out {out} exists and is not an empty folder; name a new folder for the dataset.")
    datasets.utils.logging.disable_progress_bar()
    train, skipped_train = _dataset(splits.train, splits.classes, datasets)
    val, skipped_val = _dataset(splits.val, splits.classes, datasets)
    if len(train) == 0 and skipped_train:  # a dataset nothing can train on: say so rather than write an empty one
        raise VitkitError(
            f"none of the {len(skipped_train)} training images could be read (e.g. {skipped_train[0]}); "
            "nothing was written. Check that the data holds image files."
        )
    make_parent_folder(out)
    # written beside OUT and renamed into place: a failure leaves no half-written dataset behind
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))  # new: vitkit's own
    try:
        datasets.DatasetDict({"train": train, "validation": val}).save_to_disk(str(stage))
        if out.exists():
            out.rmdir()
        os.replace(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {
        "train": len(train),
        "validation": len(val),
        "classes": splits.classes,
        "skipped": skipped_train + skipped_val,
    }
