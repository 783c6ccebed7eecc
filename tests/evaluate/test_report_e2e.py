"""`vitkit evaluate` end to end on a manifest with groups and a shifted dataset, `vitkit report`, `vitkit predict`
with the fitted temperature, and the report opened in headless Chromium."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import tiny_recipe, write_image_folder
from tests.e2e.test_cli import vitkit
from vitkit.evaluate.report import render_report
from vitkit.train.loop import train

CLASSES = ("cat", "dog", "fox")


def _manifest(root: Path) -> Path:
    """60 images; 30 for validation, from two sites of 12 and 15 images and a third of 3."""
    write_image_folder(root / "images", CLASSES, per_class=20)
    rows = []
    for name in CLASSES:
        for j in range(20):
            split = "val" if j % 2 else "train"
            site = "north" if j < 8 else "south" if j < 18 else "island"
            rows.append({"path": f"images/{name}/{j}.png", "label": name, "split": split, "site": site})
    path = root / "manifest.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "split", "site"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("evaluate")
    manifest = _manifest(root)
    shifted = write_image_folder(root / "shifted", CLASSES, per_class=4)
    run = root / "run"
    train(
        tiny_recipe(f"data.source={manifest}", "schedule.epochs=1", "schedule.warmup_epochs=0", "train.batch_size=10"),
        run,
    )
    out = root / "report"
    result = vitkit(
        "evaluate",
        str(run),
        "--data",
        str(manifest),
        "--groups",
        "site",
        "--shift-data",
        str(shifted),
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    return run, out, json.loads((out / "metrics.json").read_text())


def test_evaluate_runs_all_six_evaluators_and_writes_metrics_and_report(evaluated):
    run, out, doc = evaluated
    results = doc["results"]
    assert list(results) == ["accuracy", "calibration", "attention", "robustness", "fairness", "efficiency"]
    assert doc["images"] == 30 and doc["classes"] == list(CLASSES) and doc["task"] == "multiclass"
    assert len(results["accuracy"]["confusion_matrix"]) == 3
    assert results["attention"]["layers"] == 2 and len(results["attention"]["rollout"]) == 4
    assert results["robustness"]["shift"]["images"] == 12
    assert set(results["robustness"]["corruptions"]) == {"gaussian_noise", "jpeg", "blur", "brightness", "contrast"}
    groups = {g["group"]: g for g in results["fairness"]["groups"]}
    assert {k: g["count"] for k, g in groups.items()} == {"north": 12, "south": 15, "island": 3}
    assert groups["island"]["too_small"]  # under 30 images: every group here is too small to judge
    assert results["efficiency"]["flops_per_image"] > 0
    html = (out / "report.html").read_text()
    for title in (
        "Accuracy",
        "Confidence and calibration",
        "Attention quality",
        "Robustness",
        "Fairness",
        "Efficiency",
    ):
        assert f"<h2>{title}" in html
    assert "http://" not in html and "https://" not in html and "<script" not in html  # opens offline
    # the temperature is saved for later inference of this checkpoint
    saved = json.loads((run / "calibration.json").read_text())
    assert saved["temperature"] == results["calibration"]["temperature"]


def test_report_renders_only_what_evaluators_produced(evaluated):
    _, _, doc = evaluated
    subset = {**doc, "results": {"calibration": doc["results"]["calibration"]}}
    html = render_report(subset)
    assert "<h2>Confidence and calibration" in html and "reliability diagram" in html
    assert "<h2>Accuracy" not in html and "<h2>Attention" not in html and "confusion matrix" not in html


def test_report_command_rerenders_without_recomputing(evaluated, tmp_path: Path):
    _, out, doc = evaluated
    copy = tmp_path / "metrics.json"
    shutil.copy(out / "metrics.json", copy)
    result = vitkit("report", str(copy))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "report.html").read_text() == render_report(doc)
    missing = vitkit("report", str(tmp_path / "nope.json"))
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr


def test_only_runs_a_subset_and_predict_uses_the_fitted_temperature(evaluated, tmp_path: Path):
    run, _, _ = evaluated
    result = vitkit("evaluate", str(run), "--only", "calibration,attention", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert list(doc["results"]) == ["calibration", "attention"]
    temperature = doc["results"]["calibration"]["temperature"]
    image = next((run.parent / "shifted" / "cat").iterdir())
    predicted = vitkit("predict", str(run), str(image), "--top", "2")
    assert predicted.returncode == 0, predicted.stderr
    assert f"temperature {temperature:.3f}" in predicted.stdout and str(image) in predicted.stdout
    missing = vitkit("predict", str(run), str(tmp_path / "missing.png"))
    assert missing.returncode == 2 and f"cannot classify {tmp_path / 'missing.png'}: missing" in missing.stderr
    typo = vitkit("evaluate", str(run), "--only", "calibraton")
    assert typo.returncode == 2 and "Choose from accuracy, calibration" in " ".join(typo.stderr.split())


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def _open_in_chromium(page: Path) -> tuple[list[list], list[dict]]:
    """(complete, naturalWidth, src head) of every image, and the browser console's log entries."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingOptions", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get(page.resolve().as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.src.slice(0, 30)])"
        )
        return images, driver.get_log("browser")
    finally:
        driver.quit()


@pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)",
)
def test_report_opens_in_headless_chromium_with_every_image_loaded_and_no_console_errors(evaluated, tmp_path: Path):
    _, out, _ = evaluated
    images, logs = _open_in_chromium(out / "report.html")
    assert len(images) >= 15  # figures, thumbnails and rollout overlays
    assert all(complete and width > 0 for complete, width, _ in images), images
    assert [entry for entry in logs if entry["level"] == "SEVERE"] == []
    # the check itself catches a broken image and a console error
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><img src='data:image/png;base64,AAAA'><script>console.error('x')</script></body>")
    images, logs = _open_in_chromium(broken)
    assert images[0][1] == 0 and any(entry["level"] == "SEVERE" for entry in logs)
