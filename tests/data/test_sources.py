import csv
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_image_folder
from vitkit.data.sources import load_source, stratified_split
from vitkit.errors import DataError
from vitkit.run_folder import MARKER


def test_stratified_split_is_seeded_and_keeps_class_shares():
    labels = np.repeat(np.arange(4), [50, 30, 20, 10])
    train, val = stratified_split(labels, 0.2, seed=1)
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == len(labels)
    assert np.bincount(labels[val]).tolist() == [10, 6, 4, 2]
    assert np.array_equal(val, stratified_split(labels, 0.2, seed=1)[1])
    assert not np.array_equal(val, stratified_split(labels, 0.2, seed=2)[1])


def test_single_folder_is_split(tmp_path: Path):
    root = write_image_folder(tmp_path / "pets", per_class=10)
    splits = load_source(str(root), val_fraction=0.2, seed=0)
    assert splits.classes == ["cat", "dog", "fox"]
    assert len(splits.train) == 24 and len(splits.val) == 6
    assert np.bincount(splits.val.labels).tolist() == [2, 2, 2]
    assert "held out" in splits.notes[0]


def test_train_val_folders_are_used_as_given(tmp_path: Path):
    write_image_folder(tmp_path / "d" / "train", per_class=4)
    write_image_folder(tmp_path / "d" / "val", per_class=2)
    splits = load_source(str(tmp_path / "d"))
    assert len(splits.train) == 12 and len(splits.val) == 6 and not splits.notes


def test_val_folder_with_unknown_class_is_an_error(tmp_path: Path):
    write_image_folder(tmp_path / "d" / "train", classes=("a", "b"))
    write_image_folder(tmp_path / "d" / "val", classes=("a", "c"))
    with pytest.raises(DataError, match=r"classes not in .*\['c'\]"):
        load_source(str(tmp_path / "d"))


def test_empty_class_folder_is_an_error(tmp_path: Path):
    write_image_folder(tmp_path / "d")
    (tmp_path / "d" / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_source(str(tmp_path / "d"))


def test_a_run_folder_given_as_data_is_named_as_one(tmp_path: Path):
    run = tmp_path / "runs" / "A"
    for folder in ("checkpoints", "eval", "tensorboard"):
        (run / folder).mkdir(parents=True)
    (run / MARKER).write_text("")
    with pytest.raises(DataError, match=r"is a vitkit run folder, not a dataset\..*pass the run folder as --recipe"):
        load_source(str(run))


def test_manifest_with_groups_and_split(tmp_path: Path):
    root = write_image_folder(tmp_path / "imgs")
    rows = [
        (f"imgs/{c}/{j}.png", c, "g1" if j % 2 else "g2", "val" if j == 0 else "train")
        for c in ("cat", "dog", "fox")
        for j in range(6)
    ]
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "group", "split"])
        writer.writerows(rows)
    splits = load_source(str(manifest))
    assert root.exists() and splits.classes == ["cat", "dog", "fox"]
    assert len(splits.train) == 15 and len(splits.val) == 3
    assert splits.train.groups is not None and set(splits.train.groups) == {"g1", "g2"}


def test_manifest_without_label_column_is_an_error(tmp_path: Path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,class\na.png,x\n")
    with pytest.raises(DataError, match="needs a 'path' column and labels: 'label'"):
        load_source(str(manifest))


@pytest.mark.parametrize(
    ("encoded", "how"),
    [
        (b"\xef\xbb\xbfpath,label\r\n", "Excel's CSV UTF-8: a byte-order mark and CRLF line ends"),
        (b"path;label\n", "Excel where the decimal mark is a comma: ';' between cells"),
        (b"path\tlabel\n", "tab-separated"),
        (b"path , label\n", "spaces around the column names"),
    ],
)
def test_a_manifest_saved_by_a_spreadsheet_reads_as_written(tmp_path: Path, encoded: bytes, how: str):
    write_image_folder(tmp_path / "imgs", per_class=4)
    separator = ";" if b";" in encoded else "\t" if b"\t" in encoded else ","
    end = "\r\n" if b"\r\n" in encoded else "\n"
    lines = [f"imgs/{c}/{j}.png{separator}{c}" for c in ("cat", "dog", "fox") for j in range(4)]
    manifest = tmp_path / "m.csv"
    manifest.write_bytes(encoded + (end.join(lines) + end + end).encode())  # and a blank line at the end
    splits = load_source(str(manifest))
    assert splits.classes == ["cat", "dog", "fox"], how
    assert len(splits.train) + len(splits.val) == 12


def test_manifest_rows_without_a_label_or_path_are_named_by_line(tmp_path: Path):
    write_image_folder(tmp_path / "imgs", per_class=2)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nimgs/cat/0.png,cat\nimgs/cat/1.png,\nimgs/dog/0.png\nimgs/dog/1.png,dog\n")
    with pytest.raises(DataError, match=r"m\.csv: lines \[3, 4\] have no 'label'\. Give each row a label"):
        load_source(str(manifest))  # before: a class named '' (and a TypeError for the short row)
    manifest.write_text("path,label\nimgs/cat/0.png,cat\n,dog\n")
    with pytest.raises(DataError, match=r"lines \[3\] have no 'path'"):
        load_source(str(manifest))
    # blank lines are skipped and still counted, and a quoted cell's line break moves the next row down by one
    manifest.write_text('path,label\n\nimgs/cat/0.png,"cat"\n\nimgs/dog/0.png,"do\ng"\nimgs/dog/1.png,\n')
    with pytest.raises(DataError, match=r"lines \[7\] have no 'label'"):
        load_source(str(manifest))
    manifest.write_bytes(b"path,label\nimgs/caf\xe9/0.png,cat\n")  # Latin-1, not UTF-8
    with pytest.raises(DataError, match=r"not UTF-8 text .*Save it as CSV UTF-8"):
        load_source(str(manifest))


def test_a_class_of_one_image_leaves_no_validation_images_and_says_so(tmp_path: Path):
    """Before, training started and crashed in its first validation on an empty list of batches."""
    from vitkit.config.schema import DataConfig
    from vitkit.data.check import screen_data

    write_image_folder(tmp_path / "imgs", per_class=1)
    with pytest.raises(DataError, match=r"has no validation images .*at least 2 readable images"):
        screen_data(load_source(str(tmp_path / "imgs")), DataConfig())


def test_hf_dataset_saved_to_disk(tmp_path: Path):
    import datasets

    images = [Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)) for i in range(6)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    ds = datasets.Dataset.from_dict({"image": images, "label": [0, 1] * 3}, features=features)
    datasets.DatasetDict({"train": ds, "test": ds.select(range(2))}).save_to_disk(str(tmp_path / "hf"))
    splits = load_source(f"hf:{tmp_path / 'hf'}")
    assert splits.classes == ["a", "b"] and len(splits.train) == 6 and len(splits.val) == 2
    assert np.asarray(splits.train.items[1].convert("RGB"))[0, 0, 0] == 40


def _write_idx(path: Path, array: np.ndarray) -> None:
    dims = array.shape
    code = 0x08  # unsigned byte
    header = struct.pack(">HBB", 0, code, len(dims)) + b"".join(struct.pack(">I", d) for d in dims)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(root: Path, n_train: int = 20, n_test: int = 10) -> Path:
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return root


def test_torchvision_dataset_from_local_files(tmp_path: Path):
    root = write_fashion_mnist(tmp_path)
    splits = load_source("torchvision:FashionMNIST", root=str(root))
    assert len(splits.train) == 20 and len(splits.val) == 10
    assert splits.classes[0] == "T-shirt/top" and len(splits.classes) == 10
    assert splits.train.items.shape == (20, 28, 28, 3)  # grayscale repeated to RGB


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("no/such/dir", "no such file or folder"),
        ("builtin:faces", "builtin:shapes"),
        ("torchvision:NoSuchSet", "no dataset 'NoSuchSet'"),
        (None, "no data given"),
    ],
)
def test_bad_sources_get_clear_messages(source, message):
    with pytest.raises(DataError, match=message):
        load_source(source)


def test_torchvision_needs_a_root():
    with pytest.raises(DataError, match="--data-root"):
        load_source("torchvision:FashionMNIST")


def test_npz_arrays_with_and_without_val(tmp_path: Path):
    x = np.random.default_rng(0).integers(0, 255, (30, 8, 8), dtype=np.uint8)
    y = np.arange(30) % 3
    np.savez(tmp_path / "a.npz", x_train=x, y_train=y, x_val=x[:6], y_val=y[:6], classes=np.array(["a", "b", "c"]))
    splits = load_source(str(tmp_path / "a.npz"))
    assert splits.classes == ["a", "b", "c"] and len(splits.val) == 6 and splits.train.items.shape == (30, 8, 8, 3)
    np.savez(tmp_path / "b.npz", x_train=x, y_train=y)
    assert len(load_source(str(tmp_path / "b.npz"), val_fraction=0.2).val) == 6
    np.savez(tmp_path / "c.npz", images=x)
    with pytest.raises(DataError, match="x_train and y_train"):
        load_source(str(tmp_path / "c.npz"))


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x_train": np.zeros((4, 8, 8)), "y_train": np.array([0, 1, 2])}, r"x_train \(4, 8, 8\), y_train \(3,\)"),
        (
            {"x_train": np.zeros((4, 8, 8)), "y_train": np.array([0, 1, -1, 2])},
            r"class indices .* \(got -1\)",
        ),
        ({"x_train": np.zeros((4, 8, 8)), "y_train": np.array([0, 0.5, 1, 1])}, r"class indices .* \(got float64\)"),
        ({"x_train": np.zeros((4, 8)), "y_train": np.array([0, 1, 1, 0])}, r"x_train \(4, 8\)"),
    ],
)
def test_npz_arrays_that_cannot_be_images_and_labels_are_named(tmp_path: Path, arrays: dict, message: str):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_source(str(tmp_path / "bad.npz"))


@pytest.mark.parametrize(
    ("pixels", "expected"),
    [
        (np.array([0.0, 0.5, 1.0], np.float32), [0, 128, 255]),  # floats of 0-1 (a plain cast: black images)
        (np.array([0.0, 127.6, 255.0]), [0, 128, 255]),  # floats of 0-255
        (np.array([0, 32768, 65535], np.uint16), [0, 128, 255]),  # 16-bit (a plain cast wraps around)
        (np.array([0, 100, 255], np.int64), [0, 100, 255]),  # 8-bit values in a wide integer type
        (np.array([0, 1, 200], np.uint16), [0, 1, 200]),  # 8-bit values in a 16-bit array: kept
    ],
)
def test_npz_pixels_of_other_types_become_the_expected_0_255(tmp_path: Path, pixels: np.ndarray, expected: list):
    x = np.zeros((4, 2, 3), pixels.dtype)
    x[:, 0, :] = pixels  # every image's first row holds the three values
    np.savez(tmp_path / "p.npz", x_train=x, y_train=np.array([0, 1, 0, 1]), x_val=x[:2], y_val=np.array([0, 1]))
    splits = load_source(str(tmp_path / "p.npz"))
    assert splits.train.items.dtype == np.uint8 and splits.train.items.shape == (4, 2, 3, 3)
    assert splits.train.items[0, 0, :, 0].tolist() == expected


def test_npz_images_with_one_channel_last_are_grayscale(tmp_path: Path):
    x = np.full((4, 5, 6, 1), 77, np.uint8)
    np.savez(tmp_path / "g.npz", x_train=x, y_train=np.array([0, 1, 0, 1]))
    items = load_source(str(tmp_path / "g.npz"), val_fraction=0.5).train.items
    assert items.shape == (2, 5, 6, 3) and (items == 77).all()


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.zeros((4, 3, 8, 8), np.uint8), r"\(4, 3, 8, 8\) \(channel-first\).*numpy.transpose\(x, \(0, 2, 3, 1\)\)"),
        (np.zeros((4, 8, 8, 4), np.uint8), r"\(4 channels\).*keep three colour channels"),
        (np.linspace(-2, 2, 4 * 64).reshape(4, 8, 8), r"values from -2 to 2; give pixels of 0-255 .*not normalised"),
        (np.full((4, 8, 8), 300, np.int32), r"values from 300 to 300"),
        (np.full((4, 8, 8), np.nan), r"NaN or infinite"),
        (np.full((4, 8, 8), -0.5, np.float32), r"negative values \(-0.5\)"),
    ],
)
def test_npz_pixels_that_are_not_images_are_refused_with_the_fix(tmp_path: Path, x: np.ndarray, message: str):
    np.savez(tmp_path / "x.npz", x_train=x, y_train=np.array([0, 1, 0, 1]))
    with pytest.raises(DataError, match=f"x.npz: x_train .*{message}"):
        load_source(str(tmp_path / "x.npz"))


def test_a_file_that_is_not_an_npz_of_arrays_gets_a_message_not_a_traceback(tmp_path: Path):
    (tmp_path / "text.npz").write_text("not arrays")
    np.savez(tmp_path / "good.npz", x_train=np.zeros((4, 8, 8), np.uint8), y_train=np.array([0.0, 1.0, 1.0, 0.0]))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "good.npz").read_bytes()[:100])
    np.save(tmp_path / "one.npy", np.zeros(3))
    (tmp_path / "one.npy").rename(tmp_path / "one.npz")
    for name in ("text", "cut"):
        with pytest.raises(DataError, match=f"{name}.npz: numpy cannot read it as an .npz of arrays. Save it with"):
            load_source(str(tmp_path / f"{name}.npz"))
    with pytest.raises(DataError, match=r"one array, not an \.npz of named arrays"):
        load_source(str(tmp_path / "one.npz"))
    assert load_source(str(tmp_path / "good.npz"), val_fraction=0.5).classes == ["0", "1"]  # whole floats are classes


def test_hf_imagefolder(tmp_path: Path):
    write_image_folder(tmp_path / "imgs" / "train", per_class=3)
    splits = load_source(f"hf:{tmp_path / 'imgs'}", val_fraction=0.34, seed=0)
    assert splits.classes == ["cat", "dog", "fox"] and len(splits.train) + len(splits.val) == 9
