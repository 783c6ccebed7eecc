"""Checks made on a dataset before any compute: unreadable image files and inconsistent classes.

Every image file is opened and decoded once, in threads. A bad file is either skipped (and listed) or stops
the run before training, per `data.bad_images`; class problems always stop it, with a message saying which
classes and where.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitkit.config.schema import DataConfig
from vitkit.data.labels import keep_labels
from vitkit.data.sources import MISSING, DataSplits, ImageSet, image_problem
from vitkit.errors import DataError


@dataclass(frozen=True)
class BadImage:
    path: str
    split: str
    reason: str
    label: int = -1  # the class index the file was listed under


def _is_file_list(images: ImageSet) -> bool:
    return not isinstance(images.items, np.ndarray) and len(images) > 0 and isinstance(images.items[0], (str, Path))


def find_bad_images(images: ImageSet, split: str, max_pixels: int, threads: int | None = None) -> list[BadImage]:
    """Every file of `images` that cannot be decoded to RGB; arrays and in-memory images need no check."""
    if not _is_file_list(images):
        return []
    workers = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL releases the GIL while decoding
        problems = list(pool.map(lambda path: image_problem(path, max_pixels), images.items))
    labels = images.labels if not images.multilabel else np.full(len(images), -1)
    found = zip(images.items, labels, problems, strict=True)
    return [BadImage(str(p), split, why, int(label)) for p, label, why in found if why is not None]


def _without(images: ImageSet, bad: list[BadImage]) -> ImageSet:
    drop = {b.path for b in bad}
    keep = np.asarray([i for i, item in enumerate(images.items) if str(item) not in drop], dtype=np.int64)
    return images.subset(keep)


def apply_class_list(splits: DataSplits, classes: list[str]) -> DataSplits:
    """Relabel both splits to `classes` (data.classes): its order gives the label numbers; a label not in it is
    an error that names the label and an example image. A multi-label set keeps just the labels named."""
    if splits.multilabel:
        train = splits.train.with_labels(keep_labels(splits.train.labels, splits.classes, classes, splits.description))
        val = splits.val.with_labels(keep_labels(splits.val.labels, splits.classes, classes, splits.description))
        return DataSplits(train, val, list(classes), splits.description, splits.notes, splits.split)
    index = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in splits.classes if name not in index]
    for split, images in (("train", splits.train), ("val", splits.val)):
        for name in unknown:
            where = np.flatnonzero(images.labels == splits.classes.index(name))
            if len(where):
                example = images.items[int(where[0])] if _is_file_list(images) else f"item {int(where[0])}"
                raise DataError(
                    f"label '{name}' ({len(where)} {split} images, e.g. {example}) is not in data.classes {classes}. "
                    "Add it to data.classes, or remove or relabel those images."
                )
    mapping = np.asarray([index.get(name, -1) for name in splits.classes], dtype=np.int64)

    def relabel(images: ImageSet) -> ImageSet:
        return images.with_labels(mapping[images.labels])

    return DataSplits(
        relabel(splits.train), relabel(splits.val), list(classes), splits.description, splits.notes, splits.split
    )


def check_label_sets(splits: DataSplits) -> None:
    """Multi-label: every label has positive training images (else nothing can be learnt for it); a label with no
    positive validation image gets a note (its AUROC is undefined there)."""
    positives = np.nansum(splits.train.labels, axis=0)
    empty = [c for c, k in zip(splits.classes, positives, strict=True) if k == 0]
    if empty:
        raise DataError(
            f"labels with no positive training image: {empty}. Add images showing them, or leave them out with "
            "data.classes (the labels to keep)."
        )
    val_positives = np.nansum(splits.val.labels, axis=0)
    missing = [c for c, k in zip(splits.classes, val_positives, strict=True) if k == 0]
    if missing and len(splits.val):
        splits.notes.append(f"no positive validation image for {missing}: their AUROC cannot be measured")


def check_class_sets(splits: DataSplits, skipped: list[BadImage] | None = None) -> None:
    """At least two classes, every class has training images, labels fit the class list, and train and val cover
    the same classes. `skipped` (unreadable files left out) is named when it is why a class is empty."""
    if splits.multilabel:
        check_label_sets(splits)
        return
    n = splits.num_classes
    if n < 2:
        raise DataError(
            f"{splits.description} has {n} class ({', '.join(splits.classes) or 'none'}): a classifier needs at least "
            "2. Put each class's images in a sub-folder of its own (DIR/<class>/*), or give a label column with 2 "
            "or more values."
        )
    for split, images in (("train", splits.train), ("val", splits.val)):
        outside = sorted({int(v) for v in images.labels if v < 0 or v >= n})
        if outside:
            raise DataError(
                f"{split} labels {outside[:10]} are outside the {n} classes {splits.classes[:10]}. Give the full "
                "class list (data.classes, or an .npz 'classes' array) or fix the labels."
            )
    train_counts = np.bincount(splits.train.labels, minlength=n)
    val_counts = np.bincount(splits.val.labels, minlength=n)
    empty = [c for c, k in zip(splits.classes, train_counts, strict=True) if k == 0]
    if empty:
        because = _skipped_because(skipped, "train", empty, splits.classes)
        raise DataError(
            f"classes with no training images: {empty}.{because or ' '}Add images, or remove them from the class list."
        )
    if not len(splits.val):
        because = _skipped_because(skipped, "val", list(splits.classes), splits.classes)
        raise DataError(
            f"{splits.description} has no validation images (the automatic split holds out data.val_fraction of "
            f"each class that has 2 images or more).{because or ' '}Give each class at least 2 readable images, or "
            "a validation split of your own (DIR/val/<class>/*, or a manifest's 'split' column)."
        )
    no_val = [c for c, k in zip(splits.classes, val_counts, strict=True) if k == 0]
    if no_val:
        because = _skipped_because(skipped, "val", no_val, splits.classes)
        raise DataError(
            f"train and val have different class sets: val has no images of {no_val}.{because or ' '}Add val "
            "images of those classes (or give each class at least 2 readable images, so the automatic split holds "
            "one out)."
        )


def _skipped_because(skipped: list[BadImage] | None, split: str, empty: list[str], classes: list[str]) -> str:
    """Where the unreadable files left out of `split` are why its `empty` classes have no images: the listing."""
    lost = [b for b in skipped or [] if b.split == split and 0 <= b.label < len(classes) and classes[b.label] in empty]
    if not lost:
        return ""
    listing = "".join(f"\n  {b.path}: {b.reason}" for b in lost[:10])
    return f" Every one of their images was unreadable and skipped:{listing}\n"


def _none_readable(bad: list[BadImage], description: str) -> str:
    """The message for a training split of which no file could be read: most often paths that point elsewhere."""
    listing = "".join(f"\n  {b.path}: {b.reason}" for b in bad[:5])
    more = f"\n  ... and {len(bad) - 5} more" if len(bad) > 5 else ""
    if all(b.reason == MISSING for b in bad):
        fix = (
            "Check where the images are: a manifest's paths are read relative to the manifest's folder (NIH's Image "
            "Index from images/ next to the CSV)."
        )
    else:
        fix = "Check that the files are images (PNG, JPEG, ...) that open in an image viewer."
    return f"none of the {len(bad)} training images of {description} can be read:{listing}{more}\n{fix}"


def screen_data(splits: DataSplits, cfg: DataConfig) -> tuple[DataSplits, list[BadImage]]:
    """The checks before training: class list, unreadable files (skipped or fatal per data.bad_images), classes."""
    if cfg.classes:
        splits = apply_class_list(splits, cfg.classes)
    bad = find_bad_images(splits.train, "train", cfg.max_image_pixels)
    bad += find_bad_images(splits.val, "val", cfg.max_image_pixels)
    if bad and cfg.bad_images == "fail":
        listing = "\n".join(f"  {b.path}: {b.reason}" for b in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DataError(
            f"{len(bad)} image files cannot be used (data.bad_images=fail):\n{listing}{more}\nRemove or replace "
            "them, or set data.bad_images=skip to train without them."
        )
    if bad:
        train_bad = [b for b in bad if b.split == "train"]
        if len(train_bad) == len(splits.train):
            raise DataError(_none_readable(train_bad, splits.description))
        splits = DataSplits(
            _without(splits.train, train_bad),
            _without(splits.val, [b for b in bad if b.split == "val"]),
            splits.classes,
            splits.description,
            splits.notes,
            splits.split,
        )
    check_class_sets(splits, bad)
    return splits, bad
