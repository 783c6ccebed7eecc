"""Data sources: image folders, CSV manifests (incl. multi-label and the NIH/CheXpert layouts), .npz arrays (incl.
MedMNIST), Hugging Face datasets, torchvision datasets, builtin:shapes and builtin:xray.

Every source becomes a `DataSplits`: a train and a val `ImageSet` plus the class names. An `ImageSet` holds
items that are file paths, decoded uint8 arrays or PIL images, so the same dataset code serves all sources; its
labels are class indices (N,) or, for a multi-label set, a float32 (N, C) matrix (see data/labels.py).
"""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from vitkit.data.labels import LabelSpec, read_table
from vitkit.data.patients import check_disjoint, patient_split, random_split
from vitkit.data.synthetic import SHAPE_CLASSES, make_shapes
from vitkit.errors import DataError
from vitkit.run_folder import is_run_folder

if TYPE_CHECKING:
    from vitkit.config.schema import Recipe

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VAL_FOLDER_NAMES = ("val", "validation", "valid", "test")


DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own decompression-bomb threshold
MISSING = "missing"  # image_problem's answer for a path with no file


def image_problem(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """Why the file at `path` cannot be used as an image (missing, empty, not an image, damaged, too large)."""
    path = Path(path)
    if not path.is_file():
        return MISSING
    if path.stat().st_size == 0:
        return "empty file (0 bytes)"
    try:
        with Image.open(path) as img:
            if img.width * img.height > max_pixels:
                return (
                    f"too large: {img.width}x{img.height} = {img.width * img.height:,} pixels, over "
                    f"data.max_image_pixels={max_pixels:,} (a decompression-bomb guard)"
                )
            img.load()  # decodes every byte: a truncated file fails here, not at Image.open
            to_rgb(img)
    except Image.DecompressionBombError as exc:
        return f"too large ({exc})"
    except Image.UnidentifiedImageError:
        return "not an image (no known image format, whatever the extension says)"
    except (OSError, ValueError, SyntaxError) as exc:
        return f"damaged or truncated ({exc})"
    return None


def open_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB (see `to_rgb`), upright per its EXIF orientation; errors name the file."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))
    except FileNotFoundError:
        raise DataError(
            f"image file {path} does not exist. Check the path (manifest paths are relative to it)."
        ) from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"image file {path} could not be read ({exc}). Remove or replace it.") from exc


_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode, converted the way a person would expect to see it.

    Grayscale and palette images are expanded; CMYK and other colour spaces converted; transparency is composited
    over white (dropping alpha would show whatever colour hides under transparent pixels, often black); 16-bit
    and 32-bit images are scaled to 8 bits (PIL's own conversion clips them, turning most of the image white).
    """
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_MODES:
        values = np.asarray(img, dtype=np.float64)
        top = values.max(initial=0.0)
        if img.mode.startswith("I;16"):
            full = 65535.0
        elif img.mode == "F":
            full = 1.0 if top <= 1.0 else 255.0
        else:  # 32-bit integers: 8- or 16-bit data stored wide (PNG gray 16 may open as "I")
            full = 255.0 if top <= 255 else 65535.0 if top <= 65535 else top
        scaled = np.clip(np.round(values * (255.0 / full)), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled).convert("RGB")
    if "A" in img.mode or "a" in img.mode or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def to_pil(item: Any) -> Image.Image:
    """Turn a path, a uint8 array (H, W[, C]) or a PIL image into an RGB PIL image."""
    if isinstance(item, np.ndarray):
        return to_rgb(Image.fromarray(item))
    if isinstance(item, Image.Image):
        return to_rgb(item)
    return open_image(item)


@dataclass
class ImageSet:
    """Images (paths, arrays or PIL images) with labels (class indices, or a multi-label 0/1/NaN matrix) and
    optional group names and patient ids."""

    items: Sequence[Any] | np.ndarray
    labels: np.ndarray
    groups: list[str] | None = None
    patients: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def multilabel(self) -> bool:
        return self.labels.ndim == 2

    def subset(self, indices: np.ndarray) -> ImageSet:
        items = self.items[indices] if isinstance(self.items, np.ndarray) else [self.items[int(i)] for i in indices]
        groups = [self.groups[int(i)] for i in indices] if self.groups is not None else None
        patients = [self.patients[int(i)] for i in indices] if self.patients is not None else None
        return ImageSet(items, self.labels[indices], groups, patients)

    def with_labels(self, labels: np.ndarray) -> ImageSet:
        return ImageSet(self.items, labels, self.groups, self.patients)


def images_sha256(images: ImageSet) -> str:
    """A SHA-256 of a set's images (file bytes, or pixels for in-memory images) and labels, in order: it names
    exactly the data a metric was computed on."""
    digest = hashlib.sha256()
    for item, label in zip(images.items, images.labels, strict=True):
        if isinstance(item, np.ndarray):
            digest.update(repr(item.shape).encode() + np.ascontiguousarray(item).tobytes())
        elif isinstance(item, Image.Image):
            digest.update(repr((item.mode, item.size)).encode() + item.tobytes())
        else:
            try:
                digest.update(Path(item).read_bytes())
            except OSError:  # an unreadable file is skipped by evaluation; its name still counts
                digest.update(str(item).encode())
        if np.ndim(label):  # a multi-label row
            digest.update(np.asarray(label, dtype=np.float32).tobytes())
        else:
            digest.update(int(label).to_bytes(8, "little", signed=True))
    return digest.hexdigest()


@dataclass(frozen=True)
class HFColumns:
    """Which splits and columns of a Hugging Face dataset hold the images and labels (None: found by name)."""

    train_split: str = "train"
    val_split: str | None = None
    image: str | None = None
    label: str | None = None


@dataclass
class DataSplits:
    train: ImageSet
    val: ImageSet
    classes: list[str]
    description: str = ""
    notes: list[str] = field(default_factory=list)
    split: dict[str, Any] = field(default_factory=lambda: {"method": "given by the data"})  # how val was chosen

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multilabel(self) -> bool:
        return self.train.multilabel


def split_files(images: ImageSet) -> list[str] | None:
    """The file paths of a split's images for the run's split record (None for in-memory images)."""
    if isinstance(images.items, np.ndarray) or not len(images) or not isinstance(images.items[0], (str, Path)):
        return None
    return [str(p) for p in images.items]


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split that keeps each class's share: about val_fraction of every class (at least one if it has 2+)."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_val = round(len(idx) * val_fraction)
        n_val = min(max(n_val, 1 if len(idx) > 1 else 0), len(idx) - 1)
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def _split(full: ImageSet, classes: list[str], val_fraction: float, seed: int, description: str) -> DataSplits:
    """Hold out `val_fraction`: whole patients when the images have patient ids, else stratified by class (a
    multi-label set: a seeded random split)."""
    if full.patients is not None:
        train_idx, val_idx = patient_split(full.patients, val_fraction, seed)
        method = "patient-disjoint"
    elif full.multilabel:
        train_idx, val_idx = random_split(len(full), val_fraction, seed)
        method = "random (images; no patient ids)"
    else:
        train_idx, val_idx = stratified_split(full.labels, val_fraction, seed)
        method = "stratified"
    note = f"no validation split found: held out {len(val_idx)} images ({val_fraction:.0%}, {method}, seed {seed})"
    split = {"method": method, "seed": seed, "val_fraction": val_fraction}
    return DataSplits(full.subset(train_idx), full.subset(val_idx), classes, description, [note], split)


def given_split(full: ImageSet, is_train: np.ndarray, classes: list[str], description: str) -> DataSplits:
    """The data's own train/val split; with patient ids it must keep each patient on one side."""
    train, val = full.subset(np.flatnonzero(is_train)), full.subset(np.flatnonzero(~is_train))
    if train.patients is not None and val.patients is not None:
        check_disjoint(train.patients, val.patients, description)
    return DataSplits(train, val, classes, description)


# --- image folders -----------------------------------------------------------------------------------------


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_folder(root: Path, classes: list[str]) -> ImageSet:
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        paths += files
        labels += [label] * len(files)
    return ImageSet(paths, np.asarray(labels, dtype=np.int64))


def _empty_classes(root: Path, classes: list[str], images: ImageSet) -> list[str]:
    counts = np.bincount(images.labels, minlength=len(classes))
    return [f"{root / c}" for c, n in zip(classes, counts, strict=True) if n == 0]


def load_folder(root: Path, val_fraction: float, seed: int) -> DataSplits:
    """`root/train/<class>/*` and `root/val/<class>/*`, or `root/<class>/*` split by `stratified_split`."""
    if is_run_folder(root):  # its checkpoints/ and eval/ would be read as empty class folders
        raise DataError(
            f"{root} is a vitkit run folder, not a dataset. Pass the images to train on (the run's recipe.yaml "
            "names its data under data.source); to rerun its recipe, pass the run folder as --recipe."
        )
    train_dir = root / "train"
    val_dir = next((root / n for n in VAL_FOLDER_NAMES if (root / n).is_dir()), None)
    if train_dir.is_dir() and val_dir is not None:
        classes = [p.name for p in _class_folders(train_dir)]
        val_classes = [p.name for p in _class_folders(val_dir)]
        if set(val_classes) - set(classes):
            raise DataError(
                f"{val_dir} has classes not in {train_dir}: {sorted(set(val_classes) - set(classes))}. "
                "Both folders must use the same class sub-folder names."
            )
        train, val = _scan_folder(train_dir, classes), _scan_folder(val_dir, classes)
        empty = _empty_classes(train_dir, classes, train)
        if empty:
            raise DataError(f"class folders with no images: {empty}. Add images or remove the folders.")
        return DataSplits(train, val, classes, f"image folder {root} (train/ and {val_dir.name}/)")
    classes = [p.name for p in _class_folders(root)]
    if not classes:
        raise DataError(
            f"{root} has no class sub-folders. Expected {root}/<class>/<image> or {root}/train/<class>/<image> "
            f"with {root}/val/<class>/<image>."
        )
    full = _scan_folder(root, classes)
    empty = _empty_classes(root, classes, full)
    if empty:
        raise DataError(f"class folders with no images: {empty}. Add images or remove the folders.")
    return _split(full, classes, val_fraction, seed, f"image folder {root}")


# --- CSV manifests -----------------------------------------------------------------------------------------


AGE_BAND = 20  # width of the bands a numeric group column (an age) is grouped into


def numeric_bands(values: list[str], width: int = AGE_BAND) -> list[str]:
    """A group column of many numbers (an age) as bands ("40-59", "80+" from 80), so each group has enough images
    to judge; other columns (site, sex, a few codes) stay as they are."""
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        return values
    if len(set(numbers)) <= 10:
        return values
    top = 4 * width

    def band(x: float) -> str:
        low = int(x // width) * width
        return f"{top}+" if x >= top else f"{low}-{low + width - 1}"

    return [band(x) for x in numbers]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]], list[int]]:
    """The columns, rows and each row's line in the file of a CSV as spreadsheets save it: a UTF-8 byte-order mark
    (Excel's "CSV UTF-8"), a ';' or tab separator (Excel in locales with a decimal comma), spaces around the column
    names; short rows read as empty cells, blank lines are skipped (and still counted in the line numbers)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}). Save it as CSV UTF-8.") from None
    header = text.split("\n", 1)[0]
    separator = next((s for s in (",", ";", "\t") if s in header), ",")
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=separator, restval="")  # skips blank lines
    reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
    rows, lines = [], []
    for row in reader:
        rows.append({k: v.strip() for k, v in row.items() if k is not None})  # None: cells past the header
        lines.append(reader.line_num)  # the row's last line: a quoted cell may hold line breaks
    return list(reader.fieldnames), rows, lines


def load_manifest(
    path: Path, val_fraction: float, seed: int, group_column: str | None = None, spec: LabelSpec | None = None
) -> DataSplits:
    """A CSV manifest (see data/labels.py for the label layouts) with an optional split column (train/val), group
    column (`group` unless named) and patient column; paths are relative to the CSV."""
    columns, rows, lines = read_csv(path)
    if not rows:
        raise DataError(f"{path}: the manifest has no rows.")
    table = read_table(path, rows, columns, spec or LabelSpec(), lines)
    if group_column is not None and group_column not in columns:
        raise DataError(f"{path}: no column '{group_column}' for the groups (columns: {sorted(columns)}).")
    group_column = group_column or "group"
    groups = numeric_bands([r.get(group_column, "") for r in rows]) if group_column in columns else None
    full = ImageSet(table.paths, table.labels, groups, table.patients)
    description = f"manifest {path}" if table.layout == "manifest" else f"manifest {path} ({table.layout})"
    if "split" in columns:
        splits = np.asarray([r["split"].strip().lower() for r in rows])
        unknown = sorted(set(splits) - {"train", *VAL_FOLDER_NAMES})
        if unknown:
            raise DataError(f"{path}: column 'split' has values {unknown}; use 'train' or 'val'.")
        return given_split(full, splits == "train", table.classes, description)
    return _split(full, table.classes, val_fraction, seed, description)


# --- torchvision datasets ----------------------------------------------------------------------------------


def _tv_arrays(ds: Any) -> ImageSet:
    """Use the dataset's in-memory arrays when it has them (CIFAR, MNIST family), else index it lazily."""
    targets = np.asarray(getattr(ds, "targets", getattr(ds, "labels", [])), dtype=np.int64)
    data = getattr(ds, "data", None)
    if data is not None and hasattr(data, "shape") and len(data.shape) in (3, 4):
        arr = np.asarray(data)
        if arr.ndim == 3:  # grayscale (N, H, W): repeat to RGB so RGB models apply
            arr = np.repeat(arr[..., None], 3, axis=-1)
        return ImageSet(arr.astype(np.uint8), targets)
    items = [ds[i][0] for i in range(len(ds))]
    return ImageSet(items, np.asarray([ds[i][1] for i in range(len(ds))], dtype=np.int64))


def load_torchvision(name: str, root: str | None, val_fraction: float, seed: int) -> DataSplits:
    """torchvision.datasets.NAME with train=True/False; uses files in `root`, downloading only if they are missing."""
    import torchvision

    cls = getattr(torchvision.datasets, name, None)
    if cls is None:
        raise DataError(f"torchvision has no dataset '{name}'. Examples: CIFAR10, CIFAR100, FashionMNIST, MNIST.")
    if root is None:
        raise DataError(f"--data torchvision:{name} needs --data-root DIR (where the files are or will be put).")

    def make(train: bool) -> Any:
        try:
            return cls(root, train=train, download=False)
        except RuntimeError:
            try:
                return cls(root, train=train, download=True)
            except Exception as exc:
                raise DataError(
                    f"torchvision:{name}: files not found in {root} and the download failed ({exc}). "
                    f"Put the dataset files in {root} or allow network access."
                ) from exc

    train, val = _tv_arrays(make(True)), _tv_arrays(make(False))
    ds_classes = getattr(cls, "classes", None)
    n = int(max(train.labels.max(), val.labels.max())) + 1
    classes = list(ds_classes) if isinstance(ds_classes, list) and len(ds_classes) == n else [str(i) for i in range(n)]
    return DataSplits(train, val, classes, f"torchvision {name} in {root}")


# --- arrays ------------------------------------------------------------------------------------------------


def load_arrays(path: Path, val_fraction: float, seed: int) -> DataSplits:
    """An .npz with x_train (N, H, W[, C]) uint8 and y_train, optionally x_val/y_val and classes; or a MedMNIST
    file (train_images/train_labels, val_images/val_labels; its test arrays are left for evaluation)."""
    data = _read_npz(path)
    if {"train_images", "train_labels"} <= data.keys():
        return load_medmnist(path, data, val_fraction, seed)
    if not {"x_train", "y_train"} <= data.keys():
        raise DataError(
            f"{path}: an .npz source needs arrays x_train and y_train, or MedMNIST's train_images and train_labels "
            f"(found {sorted(data)})."
        )
    train = _array_set(path, data, "x_train", "y_train")
    n = int(train.labels.max()) + 1
    classes = [str(c) for c in data["classes"]] if "classes" in data else [str(i) for i in range(n)]
    if "x_val" not in data:
        return _split(train, classes, val_fraction, seed, f"arrays {path}")
    val = _array_set(path, data, "x_val", "y_val")
    return DataSplits(train, val, classes, f"arrays {path} ({len(train)} train / {len(val)} val)")


NPZ_HINT = "Save it with numpy.savez(path, x_train=images, y_train=labels): uint8 images (N, H, W[, 3]), labels (N,)."


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, or a DataError that says what is wrong with it (never numpy's traceback)."""
    try:
        arrays = np.load(path, allow_pickle=False)
        if not isinstance(arrays, np.lib.npyio.NpzFile):  # a single .npy array named .npz
            raise DataError(f"--data {path}: one array, not an .npz of named arrays. {NPZ_HINT}")
        with arrays:
            return {k: arrays[k] for k in arrays.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # numpy's own message talks of pickles
        raise DataError(f"--data {path}: numpy cannot read it as an .npz of arrays. {NPZ_HINT}") from None


def _array_set(path: Path, data: dict[str, np.ndarray], images: str, labels: str) -> ImageSet:
    """Images and class indices from an .npz, checked: one label per image, whole non-negative classes."""
    x, y = data[images], data.get(labels)
    if y is None or x.ndim not in (3, 4) or y.ndim != 1 or len(x) != len(y):
        shapes = f"{images} {x.shape}, {labels} {None if y is None else y.shape}"
        raise DataError(f"--data {path}: {shapes}; give N images of (H, W) or (H, W, 3) and N labels. {NPZ_HINT}")
    whole = np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))
    if not whole:
        raise DataError(f"--data {path}: {labels} must be class indices 0, 1, 2, ... (got {y.dtype}). {NPZ_HINT}")
    if len(y) and y.min() < 0:
        raise DataError(f"--data {path}: {labels} must be class indices 0, 1, 2, ... (got {y.min()}). {NPZ_HINT}")
    return ImageSet(_rgb(x, path, images), y.astype(np.int64))


def _rgb(x: np.ndarray, path: Path, name: str) -> np.ndarray:
    """The array `name` of `path` as uint8 images (N, H, W, 3): grayscale (N, H, W) or (N, H, W, 1) is replicated
    to three channels so RGB models (and their pretrained patch embeddings) apply unchanged; pixels become 0-255
    (see `_uint8_pixels`). Channel-first and four-channel arrays are refused with the fix."""
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 4 and x.shape[-1] != 3:
        layout = "channel-first" if x.shape[1] in (1, 3) else f"{x.shape[-1]} channels"
        fix = "numpy.transpose(x, (0, 2, 3, 1))" if x.shape[1] in (1, 3) else "keep three colour channels"
        raise DataError(
            f"--data {path}: {name} has shape {x.shape} ({layout}); images must be (N, H, W) or (N, H, W, 3). "
            f"Save them as such ({fix})."
        )
    x = _uint8_pixels(x, path, name)
    return np.repeat(x[..., None], 3, axis=-1) if x.ndim == 3 else x


def _uint8_pixels(x: np.ndarray, path: Path, name: str) -> np.ndarray:
    """0-255 pixels as uint8: integers of 0-255 as they are, 16-bit integers and floats of 0-1 scaled (a plain cast
    would turn floats of 0-1 into black images and wrap 16-bit values around), floats of 0-255 rounded."""
    if x.dtype == np.uint8 or x.size == 0:  # an empty split is named later, with its own fix
        return x.astype(np.uint8)
    if x.dtype.kind not in "uif":
        raise DataError(f"--data {path}: {name} holds {x.dtype} values; images must be numbers. {NPZ_HINT}")
    low, high = float(x.min()), float(x.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise DataError(f"--data {path}: {name} holds NaN or infinite values. {NPZ_HINT}")
    if x.dtype == np.uint16 and high > 255:
        full = 65535.0
    elif x.dtype.kind == "f" and high <= 1.0:
        full = 1.0
    elif low >= 0 and high <= 255:
        full = 255.0
    else:
        raise DataError(
            f"--data {path}: {name} holds values from {low:g} to {high:g}; give pixels of 0-255 (or floats of "
            f"0-1), not normalised ones. {NPZ_HINT}"
        )
    if low < 0:
        raise DataError(f"--data {path}: {name} holds negative values ({low:g}); give pixels of 0-255. {NPZ_HINT}")
    return np.round(x.astype(np.float32) * np.float32(255.0 / full)).astype(np.uint8)


def medmnist_labels(labels: np.ndarray) -> np.ndarray:
    """MedMNIST keeps labels as (N, 1) class indices, or (N, C) 0/1 for its multi-label sets (ChestMNIST)."""
    if labels.ndim == 2 and labels.shape[1] > 1:
        return labels.astype(np.float32)
    return labels.reshape(-1).astype(np.int64)


def load_medmnist(path: Path, data: dict[str, np.ndarray], val_fraction: float, seed: int) -> DataSplits:
    from vitkit.data.medmnist_names import medmnist_classes

    train = ImageSet(_rgb(data["train_images"], path, "train_images"), medmnist_labels(data["train_labels"]))
    width = train.labels.shape[1] if train.multilabel else int(train.labels.max()) + 1
    classes = medmnist_classes(path.stem, width)
    description = f"MedMNIST {path.name}"
    if "val_images" not in data:
        return _split(train, classes, val_fraction, seed, description)
    val = ImageSet(_rgb(data["val_images"], path, "val_images"), medmnist_labels(data["val_labels"]))
    return DataSplits(train, val, classes, f"{description} ({len(train)} train / {len(val)} val)")


# --- dispatch ----------------------------------------------------------------------------------------------


def load_shapes(train_size: int, val_size: int, img_size: int) -> DataSplits:
    """The built-in dataset: fixed seeds, so every run and every recipe sees the same images."""
    train_x, train_y = make_shapes(train_size, size=img_size, seed=1)
    val_x, val_y = make_shapes(val_size, size=img_size, seed=2)
    return DataSplits(
        ImageSet(train_x, train_y),
        ImageSet(val_x, val_y),
        list(SHAPE_CLASSES),
        f"builtin:shapes ({train_size} train / {val_size} val, {img_size} px, {len(SHAPE_CLASSES)} classes)",
    )


def load_xray(train_size: int, val_size: int, img_size: int, seed: int) -> DataSplits:
    """builtin:xray (data/xray.py): one fixed set of patients, split patient-disjoint by the run's seed; the site
    of each image is its group (for the fairness check)."""
    from vitkit.data.xray import XRAY_FINDINGS, make_xray

    made = make_xray(train_size + val_size, size=img_size, seed=3)
    full = ImageSet(made.images, made.labels, made.sites, made.patients)
    description = (
        f"builtin:xray ({train_size + val_size} images of {len(set(made.patients))} patients, {img_size} px, "
        f"{len(XRAY_FINDINGS)} findings)"
    )
    return _split(full, list(XRAY_FINDINGS), val_size / (train_size + val_size), seed, description)


BUILTIN = ("builtin:shapes", "builtin:xray")


def same_source(a: str, b: str) -> bool:
    """Whether two data sources name the same data: equal strings, or paths to the same file or folder."""

    def norm(source: str) -> str:
        path = Path(source.removeprefix("hf:")).expanduser()
        return str(path.resolve()) if path.exists() else source

    return a == b or norm(a) == norm(b)


def recipe_splits(recipe: Recipe, source: str | None = None, group_column: str | None = None) -> DataSplits:
    """The train/val splits of the recipe's data, or of `source` split the same way (the split is seeded by
    train.seed, so training, evaluation and export all see the run's own validation images); with
    data.holdout, validation is that share of the training split and the data's validation split is left out."""
    d = recipe.data
    splits = _load_recipe_source(recipe, source, group_column)
    if d.holdout is None or source is not None:
        return splits
    held = _split(splits.train, splits.classes, d.holdout, recipe.train.seed, splits.description)
    held.description = f"{splits.description}, training split only ({d.holdout:.0%} held out for validation)"
    held.split = {**held.split, "holdout_of": "the training split"}
    return held


def _load_recipe_source(recipe: Recipe, source: str | None, group_column: str | None) -> DataSplits:
    d = recipe.data
    return load_source(
        source or d.source,
        root=d.root,
        val_fraction=d.val_fraction,
        seed=recipe.train.seed,
        img_size=recipe.model.img_size,
        synthetic_sizes=(d.synthetic_train_size, d.synthetic_val_size),
        group_column=group_column,
        hf=HFColumns(d.hf_splits[0], d.hf_splits[1], d.image_column, d.label_column),
        labels=LabelSpec(tuple(d.label_columns) if d.label_columns else None, d.uncertain_labels, d.patient_column),
    )


def load_source(
    source: str | None,
    *,
    root: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    img_size: int = 32,
    synthetic_sizes: tuple[int, int] = (6000, 1000),
    group_column: str | None = None,
    hf: HFColumns | None = None,
    labels: LabelSpec | None = None,
) -> DataSplits:
    """Turn a `--data` string into train/val splits (with group names from a manifest's `group_column`)."""
    if not source:
        raise DataError(
            "no data given. Pass --data DIR|manifest.csv|arrays.npz|hf:PATH|hf:ORG/NAME|torchvision:NAME|"
            "builtin:shapes|builtin:xray."
        )
    if group_column is not None and not source.lower().endswith(".csv"):
        raise DataError(f"groups come from a CSV manifest's column, and --data {source} is not a .csv manifest.")
    if source.startswith("builtin:"):
        if source not in BUILTIN:
            raise DataError(f"unknown built-in dataset '{source}'. Available: {', '.join(BUILTIN)}.")
        if source == "builtin:xray":
            return load_xray(*synthetic_sizes, img_size=img_size, seed=seed)
        return load_shapes(*synthetic_sizes, img_size=img_size)
    if source.startswith("hf:"):
        from vitkit.data.hf import load_hf

        return load_hf(source[3:], val_fraction, seed, hf or HFColumns())
    if source.startswith("torchvision:"):
        return load_torchvision(source.split(":", 1)[1], root, val_fraction, seed)
    path = Path(source)
    if not path.exists():
        raise DataError(f"--data {source}: no such file or folder. Check the path.")
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return load_arrays(path, val_fraction, seed)
        if path.suffix.lower() != ".csv":
            raise DataError(
                f"--data {source}: a file must be a CSV manifest (path,label|labels[,group][,patient][,split]) or .npz."
            )
        return load_manifest(path, val_fraction, seed, group_column, labels)
    return load_folder(path, val_fraction, seed)
