"""The chest X-ray walkthrough end to end on builtin:xray: train the chest-xray recipe, evaluate on the run's
validation split (thresholds fitted and saved) and on a test manifest (thresholds frozen), predict, and the
report's new sections in headless Chromium."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.e2e.test_cli import vitkit
from tests.evaluate.test_report_e2e import CHROMEDRIVER, CHROMIUM, _read_in_chromium
from vitkit.data.sources import load_source
from vitkit.data.xray import XRAY_FINDINGS, make_xray

TINY = [
    "model.img_size=32",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "data.synthetic_train_size=240",
    "data.synthetic_val_size=120",
    "schedule.epochs=2",
    "train.batch_size=24",
    "train.precision=fp32",
    "train.log_every=5",
]


def _test_manifest(root: Path) -> Path:
    """Images of other patients (another seed), as PNG files with a `labels` and a `patient` column."""
    made = make_xray(60, size=32, seed=11)
    rows = []
    for i, (image, labels, patient) in enumerate(zip(made.images, made.labels, made.patients, strict=True)):
        Image.fromarray(image).save(root / f"{i}.png")
        found = "|".join(name for name, on in zip(XRAY_FINDINGS, labels, strict=True) if on) or "No Finding"
        rows.append([f"{i}.png", found, f"T{patient}"])
    manifest = root / "test.csv"
    with manifest.open("w", newline="") as fh:
        csv.writer(fh).writerows([["path", "labels", "patient"], *rows])
    return manifest


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("xray")
    run = root / "run"
    sets = [x for o in TINY for x in ("--set", o)]
    trained = vitkit("train", "--recipe", "chest-xray-demo", "--out", str(run), *sets)
    assert trained.returncode == 0, trained.stderr[-3000:]
    test_dir = root / "test"
    test_dir.mkdir()
    manifest = _test_manifest(test_dir)
    tested = vitkit("evaluate", str(run), "--data", str(manifest), "--out", str(root / "test-eval"))
    assert tested.returncode == 0, tested.stderr[-3000:]
    return {"run": run, "test_eval": root / "test-eval", "test_dir": test_dir}


def test_training_is_multilabel_with_a_saved_patient_disjoint_split(walkthrough):
    run = walkthrough["run"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "multilabel" and summary["best"]["metric"] == "val_auroc"
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["val_auroc"] <= 1.0 for r in epochs if r.get("kind") == "epoch")
    split = json.loads((run / "data_split.json").read_text())
    assert split["method"] == "patient-disjoint" and split["seed"] == 0
    data = load_source("builtin:xray", synthetic_sizes=(240, 120), img_size=32, seed=0)
    assert sorted(set(data.val.patients)) == split["val_patient_ids"]
    assert not set(data.train.patients) & set(split["val_patient_ids"])


def test_thresholds_fitted_on_validation_are_frozen_for_the_test_set(walkthrough):
    run, test_eval = walkthrough["run"], walkthrough["test_eval"]
    saved = json.loads((run / "thresholds.json").read_text())
    assert saved["labels"] == list(XRAY_FINDINGS) and "validation split" in saved["fitted_on"]
    own = json.loads((run / "eval" / "metrics.json").read_text())["results"]["clinical"]
    assert own["threshold_source"].startswith("fitted on this set, the run's validation split")
    test_doc = json.loads((test_eval / "metrics.json").read_text())
    assert test_doc["images"] == 60  # other data is a test set: evaluated whole
    test = test_doc["results"]["clinical"]
    assert test["threshold_source"].startswith("frozen: fitted on builtin:xray")
    for point in test["operating_points"]:
        index = saved["labels"].index(point["label"])
        assert point["threshold"] == saved["thresholds"][str(point["target_specificity"])][index]
    assert json.loads((run / "thresholds.json").read_text()) == saved  # the test set never refits them
    rows = {r["label"]: r for r in test["per_label"]}
    assert set(rows) == set(XRAY_FINDINGS)
    for r in rows.values():
        if r["auroc"] is not None:
            assert r["auroc_low"] <= r["auroc"] <= r["auroc_high"]


def test_predict_names_the_findings_at_the_saved_thresholds(walkthrough):
    run, test_dir = walkthrough["run"], walkthrough["test_dir"]
    out = test_dir / "predictions.csv"
    result = vitkit("predict", str(run), str(test_dir / "0.png"), str(test_dir / "1.png"), "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(out.open()))
    assert "findings" in rows[0] and "low_confidence" not in rows[0]
    thresholds = json.loads((run / "thresholds.json").read_text())["thresholds"]["0.9"]
    for row in rows:
        probs = {row[f"label_{i}"]: float(row[f"prob_{i}"]) for i in (1, 2, 3)}
        named = set(filter(None, row["findings"].split("|")))
        for label, p in probs.items():
            cut = thresholds[XRAY_FINDINGS.index(label)]
            assert (label in named) == (p >= (0.5 if cut is None else cut))
    for suffix in (".csv", ".jsonl"):  # vitkit's own findings file, written again (CSV or JSONL)
        again = out.with_suffix(suffix)
        for image in ("0.png", "1.png"):
            written = vitkit("predict", str(run), str(test_dir / image), "--out", str(again))
            assert written.returncode == 0, written.stderr[-2000:]
        assert str(test_dir / "1.png") in again.read_text() and str(test_dir / "0.png") not in again.read_text()


def test_the_report_shows_the_findings_sections(walkthrough):
    page = (walkthrough["test_eval"] / "report.html").read_text()
    for text in ("Findings: ranking and operating points", "AUROC (95% CI)", "Operating points", "frozen: fitted on"):
        assert text in page
    assert "calibration per label" in page


@pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)",
)
def test_the_report_renders_in_headless_chromium(walkthrough):
    from selenium import webdriver  # noqa: F401  (the helper imports it; a missing package fails here clearly)

    images, logs, _ = _read_in_chromium(walkthrough["run"] / "eval" / "report.html")
    assert images and all(complete and width > 0 for complete, width, _, _ in images), images
    alts = [alt for *_, alt in images]
    assert any("AUROC per finding" in alt for alt in alts)
    assert any("true positive" in alt or "false positive" in alt for alt in alts)
    assert [entry for entry in logs if entry["level"] == "SEVERE"] == []
    assert np.all([alt.strip() for alt in alts])


def test_an_export_serves_findings_at_the_saved_thresholds(walkthrough, tmp_path: Path):
    """The served findings, their log line, true findings sent back to /feedback, and `vitkit compare` judging
    exact-match accuracy from them."""
    from tests.serve.client import Server

    run = walkthrough["run"]
    exported = vitkit("export", str(run), "--format", "onnx", "--out", str(tmp_path / "export"))
    assert exported.returncode == 0, exported.stderr[-3000:]
    model = json.loads((tmp_path / "export" / "model.json").read_text())
    saved = json.loads((run / "thresholds.json").read_text())
    assert model["task"] == "multilabel" and model["output"]["activation"].startswith("sigmoid")
    assert model["thresholds"] == {"specificity": 0.9, "values": saved["thresholds"]["0.9"]}
    log = tmp_path / "predictions.jsonl"
    server = Server(str(tmp_path / "export"), "--log", str(log))
    try:
        image = (walkthrough["test_dir"] / "0.png").read_bytes()
        reply = server.post_files("/predict?top_k=5", [("files", image)])
        assert reply.status == 200, reply.body
        (prediction,) = reply.json()["predictions"]
        refusals = [
            server.post_json("/feedback", {"id": prediction["id"], "label": XRAY_FINDINGS[0]}),  # one class: no
            server.post_json("/feedback", {"id": prediction["id"], "labels": ["Cardiomegaly", "Nodule!"]}),
        ]
        truth = sorted(set(XRAY_FINDINGS) - set(prediction["findings"]))[:1]  # a finding the model did not name
        taken = server.post_json("/feedback", {"id": prediction["id"], "labels": truth})
    finally:
        server.close()
    cuts = dict(zip(saved["labels"], saved["thresholds"]["0.9"], strict=True))
    expected = {t["label"] for t in prediction["top"] if t["probability"] >= (cuts[t["label"]] or 0.5)}
    assert set(prediction["findings"]) == expected and prediction["low_confidence"] is None
    assert len(prediction["top"]) == 5 and all(0 <= t["probability"] <= 1 for t in prediction["top"])
    assert [r.status for r in refusals] == [422, 422]
    assert '"labels"' in refusals[0].json()["error"] and "[] when there is none" in refusals[0].json()["error"]
    assert refusals[1].json()["error"].startswith("label 'Nodule!' is not a class of the served models")
    assert taken.status == 200 and taken.json()["labels"] == truth
    records = [json.loads(line) for line in log.read_text().splitlines()]
    (logged,) = [r for r in records if r["kind"] == "prediction"]
    assert logged["findings"] == prediction["findings"]
    assert [r | {"time": 0} for r in records if r["kind"] == "feedback"] == [taken.json() | {"time": 0}]
    version = logged["version"]  # a version against itself: the measure and the counts, not a verdict
    compared = vitkit("compare", str(log), "--a", version, "--b", version)
    assert compared.returncode == 0, compared.stderr
    assert f"exact-match accuracy: {version} 0.0000 (n=1)" in compared.stdout
