"""Batch prediction from a run or an export (folders, globs, CSV/JSONL, unreadable files reported), and the
runtime table of vitkit bench."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import PLAIN, tiny_recipe, write_image_folder
from tests.faults.test_writes import file_size_limit
from vitkit.deploy.bench import benchmark
from vitkit.deploy.export import export_run
from vitkit.deploy.predict import expand_inputs, load_classifier, predict
from vitkit.train.loop import train

CLASSES = ("red", "green", "blue")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(run, export, images): a tiny ViT on colour-coded images, its ONNX export, and a folder of new images."""
    tmp = tmp_path_factory.mktemp("deploy")
    data = write_image_folder(tmp / "data", CLASSES, per_class=40)
    recipe = tiny_recipe(*PLAIN, f"data.source={data}", "schedule.epochs=4", "ema.enabled=false")
    train(recipe, tmp / "run", console=Console(quiet=True), evaluate=False)
    export_run(tmp / "run", tmp / "export")
    images = write_image_folder(tmp / "new", CLASSES, per_class=3)
    (images / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return tmp / "run", tmp / "export", images


def vitkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vitkit", *args], capture_output=True, text=True, timeout=300)


def test_a_run_and_its_export_predict_the_same(exported):
    run, export, images = exported
    paths, missing = expand_inputs([str(images)])
    assert len(paths) == 10 and not missing  # 9 images and the broken file, found recursively
    from_run = {p.path: p for p in predict(load_classifier(run), paths)}
    from_export = {p.path: p for p in predict(load_classifier(export), paths)}
    assert from_run.keys() == from_export.keys()
    for path, p in from_run.items():
        if p.error:
            assert from_export[path].error == p.error and path.endswith("broken.png")
            continue
        assert [c for c, _ in p.top] == [c for c, _ in from_export[path].top]
        assert [v for _, v in p.top] == pytest.approx([v for _, v in from_export[path].top], abs=1e-5)
        assert sum(v for _, v in p.top) == pytest.approx(1.0, abs=1e-5)  # top 3 of 3 classes: all the mass


def test_predict_writes_csv_and_reports_the_unreadable_file_without_stopping(exported, tmp_path: Path):
    _, export, images = exported
    out = tmp_path / "predictions.csv"
    result = vitkit("predict", str(export), str(images), "--out", str(out), "--top", "2")
    assert result.returncode == 0, result.stderr
    assert "broken.png" in result.stdout and "cannot read" in result.stdout
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 10 and list(rows[0]) == [
        "path",
        "label_1",
        "prob_1",
        "label_2",
        "prob_2",
        "low_confidence",
        "error",
    ]
    good = [r for r in rows if not r["error"]]
    assert len(good) == 9 and all(
        r["label_1"] in CLASSES and 0 < float(r["prob_2"]) <= float(r["prob_1"]) for r in good
    )
    right = sum(Path(r["path"]).parent.name == r["label_1"] for r in good)
    assert right >= 7  # colour-coded classes the model has learnt


def test_predict_takes_globs_writes_jsonl_and_flags_low_confidence(exported, tmp_path: Path):
    _, export, images = exported
    out = tmp_path / "predictions.jsonl"
    result = vitkit("predict", str(export), str(images / "*" / "[0-9].png"), "--out", str(out), "--threshold", "1.0")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 9 and all(r["low_confidence"] and r["error"] is None for r in rows)  # nothing reaches 100%
    nothing = vitkit("predict", str(export), str(tmp_path / "missing.png"))
    assert nothing.returncode == 2 and "cannot classify" in nothing.stderr and "missing" in nothing.stderr


def test_bench_table_has_every_runtime_and_consistent_figures(exported):
    _, export, _ = exported
    table = benchmark(export, [1, 4], repeats=5, val_images=8, compile=False)
    rows = {r["runtime"]: r for r in table["rows"]}
    assert {"eager fp32", "ORT fp32"} <= set(rows)
    for r in rows.values():
        latency = r["latency_ms"]
        assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
        assert set(r["images_per_s"]) == {1, 4} and all(v > 0 for v in r["images_per_s"].values())
    assert rows["ORT fp32"]["val_top1"] == rows["eager fp32"]["val_top1"]  # the parity-checked export
    assert rows["ORT fp32"]["file_mb"] == pytest.approx((export / "model.onnx").stat().st_size / 2**20)
    assert table["validation_images"] == 8  # of the 12 validation images


def test_predict_writes_again_over_its_own_file_and_never_over_a_users(exported, tmp_path: Path):
    _, export, images = exported
    for name in ("again.csv", "again.jsonl"):
        first = vitkit("predict", str(export), str(images / "red"), "--out", str(tmp_path / name))
        second = vitkit("predict", str(export), str(images / "green"), "--out", str(tmp_path / name))
        assert first.returncode == 0 and second.returncode == 0, second.stderr
        assert "green" in (tmp_path / name).read_text() and "/red/" not in (tmp_path / name).read_text()
    mine = tmp_path / "mine.csv"
    mine.write_text("path,label\nphoto.jpg,cat\n")
    refused = vitkit("predict", str(export), str(images / "red"), "--out", str(mine))
    assert refused.returncode == 2 and "was not written by vitkit" in refused.stderr
    assert mine.read_text() == "path,label\nphoto.jpg,cat\n"


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`vitkit ARGS` in this process, so a test can make the system refuse a file: (exit status, stdout, stderr)."""
    from vitkit.cli import main

    monkeypatch.setattr(sys, "argv", ["vitkit", *args])
    monkeypatch.setenv("COLUMNS", "300")  # one line per message
    with pytest.raises(SystemExit) as stopped:
        main()
    out, err = capsys.readouterr()
    return int(stopped.value.code or 0), out, err


def test_predictions_that_cannot_be_written_are_printed_instead(exported, tmp_path: Path, monkeypatch, capsys):
    import errno

    import vitkit.deploy.predict

    _, export, images = exported
    out = tmp_path / "predictions.csv"

    def disk_full(predictions, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(vitkit.deploy.predict, "write_predictions", disk_full)
    status, shown, err = run_cli(monkeypatch, capsys, "predict", str(export), str(images / "red"), "--out", str(out))
    assert status == 2 and "Traceback" not in err
    assert f"--out {out} could not be written (No space left on device)" in " ".join(err.split())
    for image in sorted((images / "red").glob("*.png")):  # every prediction is still on the screen
        assert str(image) in shown
    assert shown.count("red ") >= 3  # the three readable red images, each with its classes


def test_predictions_cut_short_by_a_full_disk_keep_the_earlier_file_whole(exported, tmp_path: Path):
    _, export, images = exported
    out = tmp_path / "predictions.csv"
    assert vitkit("predict", str(export), str(images / "red"), "--out", str(out)).returncode == 0
    earlier = out.read_bytes()
    again = subprocess.run(  # all the images this time: a longer file, which the "disk" cuts short
        [sys.executable, "-m", "vitkit", "predict", str(export), str(images), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=file_size_limit(len(earlier) + 10),
        env={**os.environ, "COLUMNS": "300"},
    )
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert f"--out {out} could not be written (File too large)" in again.stderr
    assert all(str(image) in again.stdout for image in images.rglob("*.png"))  # the new predictions are shown
    assert out.read_bytes() == earlier  # and the earlier file is whole
    assert os.listdir(tmp_path) == ["predictions.csv"]


def test_a_file_the_system_refuses_is_named_without_a_traceback(tmp_path: Path, monkeypatch, capsys):
    import vitkit.serve.log

    log = tmp_path / "predictions.jsonl"

    def refused(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(vitkit.serve.log, "load_log", refused)
    status, _, err = run_cli(monkeypatch, capsys, "compare", str(log), "--a", "1", "--b", "2")
    assert status == 2 and "Traceback" not in err
    assert f"error: {log}: Permission denied. Check the path, its permissions and the free space." in " ".join(
        err.split()
    )
