"""Findings: each problem of an evaluation named, with the change to try; hand-made documents as references."""

from __future__ import annotations

import math

from vitkit.evaluate.findings import findings
from vitkit.evaluate.report import format_value, render_report

CLASSES = ["cat", "dog", "fox"]


def doc_with(results: dict | None = None, training: dict | None = None, classes: list[str] = CLASSES) -> dict:
    return {
        "run": "r",
        "data": "d",
        "images": 30,
        "classes": classes,
        "task": "multiclass",
        "results": results or {},
    } | ({"training": training} if training else {})


def problems(doc: dict) -> list[str]:
    return [f["problem"] for f in findings(doc)]


def test_a_class_never_predicted_is_named_with_what_it_is_taken_for():
    matrix = [[5, 0, 0], [0, 5, 0], [3, 2, 0]]  # rows: true class; nothing is ever predicted as fox
    found = findings(doc_with({"accuracy": {"confusion_matrix": matrix}}))
    assert [(f["level"], f["problem"]) for f in found] == [
        ("act", "class 'fox' is never predicted (5 images); it is mostly predicted as 'cat'.")
    ]
    assert "oversampling" in found[0]["action"]


def test_a_class_whose_recall_is_far_below_the_rest_is_named():
    low = [[10, 0, 0], [0, 10, 0], [6, 0, 4]]  # recalls 1, 1, 0.4: mean 0.8, fox 40 points below
    assert problems(doc_with({"accuracy": {"confusion_matrix": low}})) == [
        "class 'fox' has recall 40% against 80% on average; it is mostly predicted as 'cat'."
    ]
    fine = [[10, 0, 0], [0, 9, 1], [1, 0, 9]]
    assert problems(doc_with({"accuracy": {"confusion_matrix": fine}})) == []


def test_miscalibration_says_whether_the_temperature_fixes_it():
    base = {"ece": 0.2, "mean_confidence": 0.95, "ece_before_scaling": 0.21, "ece_after_scaling": 0.04}
    kept = findings(doc_with({"calibration": {**base, "temperature": 2.5, "temperature_fitted": 2.5}}))
    assert (
        kept[0]["problem"] == "ECE is 20.0%: the model's confidence is off by that much on average (it looks "
        "over-confident)."
    )
    assert "T = 2.500" in kept[0]["action"] and "from 21.0% to 4.0%" in kept[0]["action"]
    rejected = findings(doc_with({"calibration": {**base, "temperature_fitted": 0.1}}))
    assert "did not help" in rejected[0]["action"]
    too_few = findings(doc_with({"calibration": {"ece": 0.3, "mean_confidence": 0.4}}))
    assert "under-confident" in too_few[0]["problem"] and "at least 100 validation images" in too_few[0]["action"]
    calm = findings(doc_with({"calibration": {"ece": 0.03, "mean_confidence": 0.8, "temperature_fitted": 0.9}}))
    assert [f["level"] for f in calm] == ["check"]  # a rejected temperature with a low ECE: worth a look only


def test_overfitting_and_underfitting_are_read_from_the_training_history():
    rising = [{"epoch": i + 1, "val_loss": v, "val_top1": 0.9} for i, v in enumerate([1.0, 0.6, 0.8, 0.9])]
    assert problems(doc_with(training={"history": rising})) == [
        "validation loss rose from 0.600 (epoch 2) to 0.900 by epoch 4: the model overfits."
    ]
    falling = [{"epoch": i + 1, "val_loss": v, "val_top1": 0.9} for i, v in enumerate([1.0, 0.8, 0.7])]
    assert problems(doc_with(training={"history": falling})) == []
    ten = [str(i) for i in range(10)]
    poor = [{"epoch": 1, "val_loss": 2.2, "val_top1": 0.2}]  # log 10 = 2.30: barely better than chance
    assert problems(doc_with(training={"history": poor}, classes=ten)) == [
        "validation top-1 reached only 20.0% (chance is 10.0%) and the validation loss is still 2.200: the model "
        "underfits."
    ]
    good = [{"epoch": 1, "val_loss": 0.5 * math.log(10) - 0.1, "val_top1": 0.2, "ema_val_top1": 0.7}]
    assert problems(doc_with(training={"history": good}, classes=ten)) == []


def test_problems_to_act_on_come_before_things_to_check():
    doc = doc_with(
        {
            "fairness": {"flags": ["group 'x' has 3 images, fewer than 30: too small to judge"]},
            "robustness": {"flags": ["jpeg: top-1 drops 23.0 points already at severity 1"]},
        },
        training={"bad_images": 4},
    )
    found = findings(doc)
    assert [f["level"] for f in found] == ["act", "check", "check"]
    assert found[0]["area"] == "Robustness" and found[1]["area"] == "Training"


def test_the_report_leads_with_the_findings_or_says_there_are_none():
    bad = doc_with({"accuracy": {"confusion_matrix": [[5, 0, 0], [0, 5, 0], [3, 2, 0]], "top1": 0.67}})
    html = render_report(bad)
    assert "Findings: what to act on" in html and "class &#39;fox&#39; is never predicted" in html
    assert html.index('id="findings"') < html.index("<h2>Accuracy")
    good = doc_with({"accuracy": {"confusion_matrix": [[5, 0, 0], [0, 5, 0], [0, 0, 5]], "top1": 1.0}})
    assert "Nothing to act on" in render_report(good)


def test_short_lists_read_as_values_not_json():
    assert format_value("input_shape", [3, 16, 16]) == "3 × 16 × 16"
    assert format_value("collapsed", [1, 2]) == "1, 2"
