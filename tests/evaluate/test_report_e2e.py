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
    """210 images; 105 for validation (enough to fit a temperature), from sites of 36, 45 and 24 images."""
    write_image_folder(root / "images", CLASSES, per_class=70)
    rows = []
    for name in CLASSES:
        for j in range(70):
            split = "val" if j % 2 else "train"
            site = "north" if j < 24 else "south" if j < 54 else "island"
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
    assert doc["images"] == 105 and doc["classes"] == list(CLASSES) and doc["task"] == "multiclass"
    assert len(results["accuracy"]["confusion_matrix"]) == 3
    assert results["attention"]["layers"] == 2 and len(results["attention"]["rollout"]) == 4
    assert results["robustness"]["shift"]["images"] == 12
    assert set(results["robustness"]["corruptions"]) == {"gaussian_noise", "jpeg", "blur", "brightness", "contrast"}
    groups = {g["group"]: g for g in results["fairness"]["groups"]}
    assert {k: g["count"] for k, g in groups.items()} == {"north": 36, "south": 45, "island": 24}
    assert groups["island"]["too_small"] and not groups["north"]["too_small"]  # under 30 images: too small to judge
    assert results["efficiency"]["flops_per_image"] > 0
    html = (out / "report.html").read_text()
    for title in (
        "Accuracy",
        "Confidence and calibration",
        "Attention quality",
        "Robustness",
        "Fairness",
        "Efficiency",
        "Training",
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
    (tmp_path / "report.html").unlink()
    folder = vitkit("report", str(tmp_path))  # the folder evaluate --out wrote to, or a run folder with eval/
    assert folder.returncode == 0, folder.stderr
    assert (tmp_path / "report.html").read_text() == render_report(doc)
    run_eval = tmp_path / "run" / "eval"  # a run folder: its evaluation at the end of training
    run_eval.mkdir(parents=True)
    shutil.copy(out / "metrics.json", run_eval / "metrics.json")
    in_run = vitkit("report", str(tmp_path / "run"))
    assert in_run.returncode == 0, in_run.stderr
    assert (run_eval / "report.html").read_text() == render_report(doc)
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = vitkit("report", str(empty))
    assert nothing.returncode == 2 and "no metrics.json (nor eval/metrics.json)" in " ".join(nothing.stderr.split())


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
    assert typo.returncode == 2 and "Choose from accuracy, clinical, calibration" in " ".join(typo.stderr.split())


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def _open_in_chromium(page: Path) -> tuple[list[list], list[dict]]:
    """(complete, naturalWidth, src head, alt) of every image, and the browser console's log entries."""
    images, logs, _ = _read_in_chromium(page)
    return images, logs


def _read_in_chromium(page: Path) -> tuple[list[list], list[dict], str]:
    """`_open_in_chromium` and the text a reader sees in the findings section."""
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
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.src.slice(0, 30), i.alt])"
        )
        findings = driver.execute_script("return document.getElementById('findings')?.innerText || ''")
        return images, driver.get_log("browser"), findings
    finally:
        driver.quit()


@pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)",
)
def test_report_opens_in_headless_chromium_with_every_image_loaded_and_no_console_errors(evaluated, tmp_path: Path):
    _, out, doc = evaluated
    images, logs = _open_in_chromium(out / "report.html")
    # 8 figures (confusion, reliability, coverage, entropy, diversity, severities, groups, training curves),
    # 4 rollout overlays, and a thumbnail for each confidently wrong image
    wrong = len(doc["results"]["calibration"]["confidently_wrong"])
    assert len(images) == 12 + wrong
    assert all(complete and width > 0 for complete, width, _, _ in images), images
    assert all(alt.strip() for *_, alt in images)  # every figure and thumbnail says what it shows
    assert [entry for entry in logs if entry["level"] == "SEVERE"] == []
    # the check itself catches a broken image and a console error
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><img src='data:image/png;base64,AAAA'><script>console.error('x')</script></body>")
    images, logs = _open_in_chromium(broken)
    assert images[0][1] == 0 and any(entry["level"] == "SEVERE" for entry in logs)


def test_evaluating_other_data_does_not_replace_the_saved_temperature(evaluated, tmp_path: Path):
    run, _, _ = evaluated
    saved = (run / "calibration.json").read_text()
    other = _manifest(tmp_path)  # the same kind of images, in another place: other data
    result = vitkit("evaluate", str(run), "--data", str(other), "--only", "calibration", "--out", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    doc = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert doc["images"] >= 100 and "temperature_saved" not in doc
    assert (run / "calibration.json").read_text() == saved
    assert "temperature" in doc["results"]["calibration"]  # one was fitted and kept, and still not saved
    assert "was not saved for vitkit predict" in " ".join(result.stdout.split())
    asked = vitkit("evaluate", str(run), "--data", str(other), "--only", "calibration", "--save-temperature")
    assert asked.returncode == 0, asked.stderr
    assert json.loads((run / "calibration.json").read_text())["data"] == doc["data"]


@pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)",
)
def test_the_report_of_a_bad_model_leads_with_what_to_fix(tmp_path: Path):
    """A model that never predicts 'fox' and is far too sure of itself: the findings a reader sees name both
    problems, each with the change to try."""
    import torch

    from tests.conftest import tiny_vit
    from vitkit.config.schema import AugmentConfig
    from vitkit.data.pipeline import eval_transform
    from vitkit.data.sources import load_folder
    from vitkit.evaluate.context import ModelRunner
    from vitkit.evaluate.findings import findings
    from vitkit.evaluate.registry import select_evaluators
    from vitkit.evaluate.report import write_report
    from vitkit.evaluate.run import predict_context, run_all

    model = tiny_vit(num_classes=3)
    with torch.no_grad():
        model.head.weight.mul_(400)  # confident far beyond its accuracy
        model.head.bias[2] = -1e4  # 'fox' can never win
    splits = load_folder(write_image_folder(tmp_path / "data", CLASSES, per_class=40), val_fraction=0.9, seed=0)
    runner = ModelRunner(model, torch.device("cpu"), (0.5,) * 3, (0.5,) * 3, eval_transform(AugmentConfig(), 16))
    ctx = predict_context(runner, splits.val, list(CLASSES))
    results, seconds = run_all(ctx, select_evaluators("accuracy,calibration"))
    doc = {"run": "bad", "data": "folder", "images": len(ctx.labels), "classes": list(CLASSES), "task": ctx.task}
    doc |= {"results": results, "seconds": seconds, "findings": []}
    doc["findings"] = findings(doc)
    _, logs, seen = _read_in_chromium(write_report(doc, tmp_path / "report.html"))
    assert [entry for entry in logs if entry["level"] == "SEVERE"] == []
    text = " ".join(seen.split())
    assert "Findings: what to act on" in text
    assert "Act · Accuracy: class 'fox' is never predicted (" in text and "Try: Check the images and labels" in text
    assert "Act · Confidence and calibration: ECE is" in text and "over-confident" in text
    assert text.index("never predicted") < text.index("Try:")  # each problem comes with its change to try


def test_evaluate_and_report_never_write_over_a_users_files(evaluated, tmp_path: Path):
    run, out, _ = evaluated
    (tmp_path / "report.html").write_text("<html>my own report</html>")
    refused = vitkit("evaluate", str(run), "--only", "accuracy", "--out", str(tmp_path))
    assert refused.returncode == 2 and "was not written by vitkit" in refused.stderr
    assert (tmp_path / "report.html").read_text() == "<html>my own report</html>"
    assert not (tmp_path / "metrics.json").exists()
    again = vitkit("report", str(out / "metrics.json"), "--out", str(tmp_path / "report.html"))
    assert again.returncode == 2 and (tmp_path / "report.html").read_text() == "<html>my own report</html>"
    rewrite = vitkit("report", str(out / "metrics.json"))  # its own report.html: written again
    assert rewrite.returncode == 0, rewrite.stderr
