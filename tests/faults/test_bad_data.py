"""Bad data: every kind of broken or unusual image file, skipped or fatal per data.bad_images, convertible modes
converted to the RGB a person would expect, and class problems stopped before any compute."""

import csv
import json
import re
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from tests.conftest import tiny_recipe
from tests.e2e.test_cli import vitkit
from vitkit.config.schema import DataConfig
from vitkit.data.check import BadImage, check_class_sets, find_bad_images, screen_data
from vitkit.data.sources import DataSplits, ImageSet, load_source, open_image
from vitkit.errors import DataError
from vitkit.train.loop import train

QUIET = Console(quiet=True)
SIZE = (12, 10)  # width, height


def write_png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit PNG (gray for (H, W), RGB for (H, W, 3)), written by hand: PIL cannot write 16-bit RGB."""
    height, width = pixels.shape[:2]
    colour_type = 2 if pixels.ndim == 3 else 0
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def _solid(mode: str, colour) -> Image.Image:
    return Image.new(mode, SIZE, colour)


def write_convertible(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Images of unusual modes, each with the RGB colour its first pixel must become."""
    folder.mkdir(parents=True, exist_ok=True)
    _solid("CMYK", (0, 255, 255, 0)).save(folder / "cmyk.jpg", quality=100)  # pure red in CMYK
    write_png16(folder / "gray16.png", np.full(SIZE[::-1], 32768, dtype=np.uint16))  # mid gray, 16 bits
    write_png16(folder / "rgb16.png", np.full((*SIZE[::-1], 3), [65535, 32768, 0], dtype=np.uint16))
    palette = _solid("P", 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 1 = blue
    palette.save(folder / "palette.png")
    see_through = _solid("P", 1)
    see_through.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    see_through.save(folder / "palette-transparent.png", transparency=1)  # blue, but fully transparent: white
    rgba = np.zeros((*SIZE[::-1], 4), dtype=np.uint8)
    rgba[...] = (255, 0, 0, 0)  # transparent red: must become white, not red or black
    rgba[0, 0] = (0, 0, 0, 255)  # opaque black
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    _solid("L", 77).save(folder / "gray.png")
    _solid("RGB", (10, 200, 30)).save(folder / "rgb.png")
    return {
        "cmyk.jpg": (255, 0, 0),
        "gray16.png": (128, 128, 128),
        "rgb16.png": (255, 128, 0),
        "palette.png": (0, 0, 255),
        "palette-transparent.png": (255, 255, 255),
        "rgba.png": (0, 0, 0),  # pixel (0, 0); the rest is checked below
        "gray.png": (77, 77, 77),
        "rgb.png": (10, 200, 30),
    }


def write_broken(folder: Path) -> dict[str, str]:
    """Files that cannot be used, each with the words its reason must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    _solid("RGB", (200, 10, 10)).resize((64, 64)).save(folder / "whole.jpg")
    data = (folder / "whole.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "whole.jpg").unlink()
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("these are my notes, not a picture")
    Image.new("L", (300, 300), 0).save(folder / "huge.png")  # over the limit the tests set: 50,000 pixels
    return {"truncated.jpg": "truncated", "empty.jpg": "empty", "notes.png": "not an image", "huge.png": "too large"}


def test_convertible_modes_become_the_expected_rgb(tmp_path: Path):
    expected = write_convertible(tmp_path)
    for name, colour in expected.items():
        img = open_image(tmp_path / name)
        assert img.mode == "RGB" and img.size == SIZE, name
        got = np.asarray(img)[0, 0]
        tolerance = 2 if name.endswith(".jpg") else 0  # JPEG is lossy
        assert np.abs(got.astype(int) - colour).max() <= tolerance, (name, got, colour)
    rgba = np.asarray(open_image(tmp_path / "rgba.png"))
    assert (rgba[1:, 1:] == 255).all()  # transparent pixels over white


def test_exif_orientation_is_applied(tmp_path: Path):
    pixels = np.zeros((10, 20, 3), dtype=np.uint8)  # landscape, stored with "rotate 90" orientation
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "rotated.jpg", exif=exif)
    assert open_image(tmp_path / "rotated.jpg").size == (10, 20)  # shown upright: portrait


def test_every_broken_file_is_found_with_its_reason(tmp_path: Path):
    reasons = write_broken(tmp_path)
    write_convertible(tmp_path)
    paths = [*sorted(tmp_path.iterdir()), tmp_path / "listed-but-missing.png"]
    bad = find_bad_images(ImageSet(paths, np.zeros(len(paths), dtype=np.int64)), "train", max_pixels=50_000)
    found = {Path(b.path).name: b.reason for b in bad}
    assert found.keys() == {*reasons, "listed-but-missing.png"}  # every convertible image passes
    for name, words in reasons.items():
        assert words in found[name], (name, found[name])
    assert found["listed-but-missing.png"] == "missing"


def _manifest_dataset(root: Path) -> Path:
    """A manifest of two classes: good images in each split, plus the broken files and a missing one in train."""
    write_broken(root / "broken")
    rows = [("broken/" + n, "cat", "train") for n in ("truncated.jpg", "empty.jpg", "notes.png", "huge.png")]
    rows.append(("broken/gone.png", "dog", "train"))
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("val", 4)):
        for i in range(n):
            label = ("cat", "dog")[i % 2]
            path = root / "good" / f"{split}{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
            rows.append((f"good/{split}{i}.png", label, split))
    manifest = root / "data.csv"
    with manifest.open("w", newline="") as fh:
        csv.writer(fh).writerows([("path", "label", "split"), *rows])
    return manifest


def test_skip_trains_without_the_bad_files_and_lists_them(tmp_path: Path):
    manifest = _manifest_dataset(tmp_path / "data")
    recipe = tiny_recipe(f"data.source={manifest}", "data.max_image_pixels=50000", "schedule.warmup_epochs=0")
    recipe.train.batch_size = 4
    result = train(recipe, tmp_path / "run", console=QUIET)
    assert result.summary["bad_images"] == {"skipped": 5, "train": 5, "val": 0, "list": "bad_images.jsonl"}
    listed = [json.loads(line) for line in (tmp_path / "run" / "bad_images.jsonl").read_text().splitlines()]
    assert sorted(Path(b["path"]).name for b in listed) == sorted(
        ["truncated.jpg", "empty.jpg", "notes.png", "huge.png", "gone.png"]
    )
    assert result.summary["updates"] == 2 * (10 // 4)  # 2 epochs of the 10 good training images only


def _train_on_bad_manifest(tmp_path: Path, setting: str) -> subprocess.CompletedProcess[str]:
    """`vitkit train` into tmp_path/run on a manifest with five unusable files, with one more `--set`."""
    manifest = _manifest_dataset(tmp_path / "data")
    run = str(tmp_path / "run")
    sets = ["--set", "data.max_image_pixels=50000", "--set", setting]
    return vitkit("train", "--recipe", "quickstart", "--data", str(manifest), "--out", run, *sets)


def test_fail_stops_before_training_and_lists_the_files(tmp_path: Path):
    out = _train_on_bad_manifest(tmp_path, "data.bad_images=fail")
    assert out.returncode == 2
    message = " ".join(out.stderr.split())
    assert "5 image files cannot be used" in message and "data.bad_images=skip" in message
    for name in ("truncated.jpg", "empty.jpg", "notes.png", "huge.png", "gone.png: missing"):
        assert name in message
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_run_stopped_before_training_says_its_list_of_skipped_files_went_with_it(tmp_path: Path):
    run = tmp_path / "run"
    out = _train_on_bad_manifest(tmp_path, "train.batch_size=64")  # more than the 10 readable training images
    assert out.returncode == 2 and "larger than the training set" in " ".join(out.stderr.split())
    said = " ".join(out.stdout.split())
    assert "skipping 5 unreadable image files" in said
    assert "bad_images.jsonl included" in said and "--set data.bad_images=fail" in said
    assert not run.exists()  # vitkit made the folder, and took it away again


def _splits(train_labels: list[int], val_labels: list[int], classes: list[str]) -> DataSplits:
    def images(labels: list[int]) -> ImageSet:
        return ImageSet(np.zeros((len(labels), 4, 4, 3), dtype=np.uint8), np.asarray(labels, dtype=np.int64))

    return DataSplits(images(train_labels), images(val_labels), classes)


def test_class_problems_are_errors_that_say_which_classes():
    with pytest.raises(DataError, match=r"no training images: \['fox'\]"):
        check_class_sets(_splits([0, 1, 0], [0, 1], ["cat", "dog", "fox"]))
    with pytest.raises(DataError, match=r"different class sets: val has no images of \['dog'\]"):
        check_class_sets(_splits([0, 1, 0], [0, 0], ["cat", "dog"]))
    with pytest.raises(DataError, match=r"val labels \[2\] are outside the 2 classes"):
        check_class_sets(_splits([0, 1], [0, 1, 2], ["cat", "dog"]))


def test_a_class_whose_only_val_image_was_unreadable_names_the_file():
    """The automatic split held out one 'dog' image and it was the corrupt one: the message says so."""
    skipped = [BadImage("two/dog/bad.jpg", "val", "not an image", label=1), BadImage("x.png", "train", "empty", 0)]
    with pytest.raises(DataError, match=r"val has no images of \['dog'\]") as err:
        check_class_sets(_splits([0, 1, 0], [0, 0], ["cat", "dog"]), skipped)
    assert "two/dog/bad.jpg: not an image" in str(err.value) and "x.png" not in str(err.value)


def test_a_training_split_with_no_readable_file_says_where_the_images_were_looked_for(tmp_path: Path):
    """An NIH manifest whose images lie in img/ instead of images/: every path is missing, so the message is about
    where the images are, not about labels without positives."""
    rows = ["Image Index,Finding Labels,Patient ID"]
    (tmp_path / "img").mkdir()
    for i in range(12):
        Image.new("L", (8, 8), i * 20).save(tmp_path / "img" / f"{i}.png")
        rows.append(f"{i}.png,{['Effusion', 'No Finding', 'Mass'][i % 3]},{i}")
    (tmp_path / "Data_Entry_2017.csv").write_text("\n".join(rows) + "\n")
    splits = load_source(str(tmp_path / "Data_Entry_2017.csv"))
    with pytest.raises(DataError, match=r"none of the \d+ training images .* can be read") as err:
        screen_data(splits, DataConfig())
    assert re.search(rf"{re.escape(str(tmp_path / 'images'))}/\d+\.png: missing", str(err.value))  # not in img/
    assert "images/ next to the CSV" in str(err.value)
    # a folder of files that are all damaged gets the other fix
    for i in range(4):
        for label in ("a", "b"):
            (tmp_path / "bad" / label).mkdir(parents=True, exist_ok=True)
            (tmp_path / "bad" / label / f"{i}.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"(?s)can be read:.*not an image.*open in an image viewer"):
        screen_data(load_source(str(tmp_path / "bad")), DataConfig())


def test_a_label_outside_data_classes_is_named_with_an_example(tmp_path: Path):
    manifest = _manifest_dataset(tmp_path)
    splits = load_source(str(manifest))
    with pytest.raises(DataError, match=r"label 'dog' \(\d+ train images, e\.g\. .*\) is not in data\.classes"):
        screen_data(splits, DataConfig(classes=["cat"], max_image_pixels=50_000))
    relabelled, bad = screen_data(splits, DataConfig(classes=["dog", "cat"], max_image_pixels=50_000))
    assert relabelled.classes == ["dog", "cat"] and len(bad) == 5
    cat = splits.classes.index("cat")
    assert (relabelled.train.labels == 1).sum() == (splits.train.labels == cat).sum() - 4  # 4 bad cat files left out
    # 'fox' is in the list but has no images: an empty class
    with pytest.raises(DataError, match=r"no training images: \['fox'\]"):
        screen_data(splits, DataConfig(classes=["dog", "cat", "fox"], max_image_pixels=50_000))


def test_train_and_val_folders_with_different_classes_stop_before_training(tmp_path: Path):
    from tests.conftest import write_image_folder

    write_image_folder(tmp_path / "data" / "train", ("cat", "dog", "fox"))
    write_image_folder(tmp_path / "data" / "val", ("cat", "dog"))
    with pytest.raises(DataError, match=r"val has no images of \['fox'\]"):
        train(tiny_recipe(f"data.source={tmp_path / 'data'}"), tmp_path / "run", console=QUIET)
    assert not (tmp_path / "run" / "checkpoints").exists()
