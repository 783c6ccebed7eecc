"""Hugging Face datasets in and out: a dataset from the local datasets cache by name, split and column mapping,
and `vitkit data export` written and read back with the same images, labels, classes and split."""

from __future__ import annotations

import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
from datasets.packaged_modules.parquet.parquet import Parquet
from PIL import Image

from tests.conftest import write_image_folder
from tests.e2e.test_cli import vitkit
from vitkit.data.hf import export_hf_dataset
from vitkit.data.sources import HFColumns, load_source, to_pil
from vitkit.errors import DataError, VitkitError

CLASSES = ["a", "b", "c"]


def small_dataset(image: str = "img", label: str = "fine_label", n: int = 6) -> datasets.Dataset:
    pictures = [Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)) for i in range(n)]
    features = datasets.Features({image: datasets.Image(), label: datasets.ClassLabel(names=CLASSES)})
    return datasets.Dataset.from_dict({image: pictures, label: [i % 3 for i in range(n)]}, features=features)


def cache_as_if_downloaded(name: str, cache: Path, tmp: Path) -> None:
    """Lay out `name` in a datasets cache as `load_dataset(name)` leaves a Hub dataset (train and test splits)."""
    for split in ("train", "test"):
        small_dataset().to_parquet(str(tmp / f"{split}.parquet"))
    files = {s: str(tmp / f"{s}.parquet") for s in ("train", "test")}
    org, short = name.split("/")
    builder = Parquet(data_files=files, dataset_name=short, hash="0123456789abcdef", cache_dir=str(cache))
    builder.download_and_prepare()
    config_dir = Path(builder.cache_dir).parent.parent  # cache/short/default-<hash>/0.0.0/<hash>
    (cache / f"{org}___{short}").mkdir()
    shutil.move(str(config_dir), str(cache / f"{org}___{short}" / "default"))


def test_a_dataset_in_the_local_cache_loads_by_name_without_network(monkeypatch, tmp_path: Path):
    cache = tmp_path / "cache"
    cache_as_if_downloaded("my-lab/tiny", cache, tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))
    splits = load_source("hf:my-lab/tiny")
    assert splits.classes == CLASSES and len(splits.train) == 6 and len(splits.val) == 6  # test is the val split
    assert np.asarray(to_pil(splits.train.items[2]))[0, 0, 0] == 40 and splits.train.labels[2] == 2
    with pytest.raises(DataError, match="neither a folder nor a dataset in the local datasets cache"):
        load_source("hf:my-lab/not-downloaded")


def test_a_folder_with_neither_a_saved_dataset_nor_images_is_named(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not a dataset")
    for given in ("empty", "notes.txt"):
        with pytest.raises(DataError, match=f"hf:{tmp_path / given} holds neither a dataset written by save_to_disk"):
            load_source(f"hf:{tmp_path / given}")


def test_splits_and_columns_are_mapped_and_a_missing_column_names_the_setting(tmp_path: Path):
    odd = datasets.DatasetDict({"trn": small_dataset("picture", "cls"), "dev": small_dataset("picture", "cls", 3)})
    odd.save_to_disk(str(tmp_path / "odd"))
    splits = load_source(f"hf:{tmp_path / 'odd'}", hf=HFColumns("trn", "dev", "picture", "cls"))
    assert (len(splits.train), len(splits.val)) == (6, 3) and splits.classes == CLASSES
    with pytest.raises(DataError, match=r"no image column found among.*data.image_column"):
        load_source(f"hf:{tmp_path / 'odd'}", hf=HFColumns("trn", "dev", None, "cls"))
    with pytest.raises(DataError, match=r"no 'train' split.*data.hf_splits"):
        load_source(f"hf:{tmp_path / 'odd'}")


def test_an_exported_folder_reads_back_with_the_same_split_images_and_labels(tmp_path: Path):
    images = write_image_folder(tmp_path / "images", ("cat", "dog", "fox"), per_class=5)
    original = load_source(str(images), val_fraction=0.4, seed=3)
    written = export_hf_dataset(original, tmp_path / "hf")
    assert (written["train"], written["validation"]) == (len(original.train), len(original.val))
    back = load_source(f"hf:{tmp_path / 'hf'}")
    assert back.classes == original.classes
    for ours, theirs in ((original.train, back.train), (original.val, back.val)):
        assert list(theirs.labels) == list(ours.labels)
        for a, b in zip(ours.items, theirs.items, strict=True):
            np.testing.assert_array_equal(np.asarray(to_pil(a)), np.asarray(to_pil(b)))
    with pytest.raises(VitkitError, match="not an empty folder"):
        export_hf_dataset(original, tmp_path / "hf")  # never written over


def test_cli_data_export_writes_a_dataset_and_never_into_a_users_folder(tmp_path: Path):
    images = write_image_folder(tmp_path / "images", ("red", "green"), per_class=6)
    out = vitkit("data", "export", str(images), "--out", str(tmp_path / "hf"), "--val-fraction", "0.5")
    assert out.returncode == 0, out.stderr
    assert "6 train and 6 validation images, 2 classes" in out.stdout
    assert datasets.load_from_disk(str(tmp_path / "hf"))["train"].features["label"].names == ["green", "red"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    refused = vitkit("data", "export", str(images), "--out", str(tmp_path / "mine"))
    assert refused.returncode == 2 and (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_cli_data_export_of_only_unreadable_images_writes_nothing_and_says_why(tmp_path: Path):
    for name in ("cat", "dog"):
        (tmp_path / "images" / name).mkdir(parents=True)
        (tmp_path / "images" / name / "a.png").write_text("not an image")
    out = vitkit("data", "export", str(tmp_path / "images"), "--out", str(tmp_path / "hf"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "none of the 2 training images could be read" in out.stderr and "not an image" in out.stderr
    assert not (tmp_path / "hf").exists()
