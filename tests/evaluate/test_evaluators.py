"""Accuracy, calibration and fairness evaluators against hand-computed cases and reference implementations."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitkit.data.sources import ImageSet
from vitkit.errors import DataError, VitkitError
from vitkit.evaluate.calibration import CalibrationEvaluator
from vitkit.evaluate.context import EvalContext, EvalSettings, run_evaluator
from vitkit.evaluate.fairness import FairnessEvaluator
from vitkit.evaluate.metrics import AccuracyEvaluator
from vitkit.evaluate.registry import EVALUATORS, select_evaluators
from vitkit.evaluate.run import load_shift, relabel, save_temperature, saved_temperature


def roc_auc_score(target: torch.Tensor, score: torch.Tensor) -> float:
    """Mann-Whitney: the chance that a random positive scores above a random negative (ties count half)."""
    pos, neg = score[target == 1], score[target == 0]
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


def average_precision_score(target: torch.Tensor, score: torch.Tensor) -> float:
    """Mean over positives of the precision among all images scored at least as high (no ties here)."""
    hits = target[score.argsort(descending=True)].float()
    precision_at = hits.cumsum(0) / torch.arange(1, len(hits) + 1)
    return float((precision_at * hits).sum() / hits.sum())


def _one_hot_logits(predicted: list[int], classes: int, scale: float = 5.0) -> torch.Tensor:
    return F.one_hot(torch.tensor(predicted), classes).float() * scale


def test_accuracy_per_class_and_confusion_matrix_by_hand():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    predicted = [0, 0, 1, 1, 2, 2]
    ctx = EvalContext(_one_hot_logits(predicted, 3), labels, classes=["a", "b", "c"])
    out = run_evaluator(AccuracyEvaluator(), ctx)
    assert out["top1"] == pytest.approx(4 / 6)
    assert "top5" not in out  # only 3 classes
    assert out["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    a, b, c = out["per_class"]
    assert (a["class"], a["precision"], a["recall"], a["support"]) == ("a", 1.0, pytest.approx(2 / 3), 3)
    assert b["precision"] == pytest.approx(1 / 2) and b["recall"] == pytest.approx(1 / 2)
    assert c["precision"] == pytest.approx(1 / 2) and c["recall"] == 1.0
    assert c["f1"] == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert out["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    # logits 5 on the predicted class, 0 elsewhere: a right answer costs log(1 + 2e^-5), a wrong one log(e^5 + 2)
    assert out["nll"] == pytest.approx((4 * math.log(1 + 2 * math.exp(-5)) + 2 * math.log(math.exp(5) + 2)) / 6)


def test_binary_task_gets_auroc_ap_and_sensitivity_specificity_at_the_threshold():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (200,), generator=g)
    logits = torch.randn(200, 2, generator=g) + F.one_hot(labels, 2) * 1.0
    ctx = EvalContext(logits, labels, classes=["healthy", "disease"], settings=EvalSettings(decision_threshold=0.3))
    out = run_evaluator(AccuracyEvaluator(), ctx)
    score = logits.softmax(dim=1)[:, 1]
    assert ctx.task == "binary" and out["positive_class"] == "disease"
    assert out["auroc"] == pytest.approx(roc_auc_score(labels, score), abs=1e-6)
    assert out["average_precision"] == pytest.approx(average_precision_score(labels, score), abs=1e-6)
    flagged = score >= 0.3
    assert out["sensitivity"] == pytest.approx(float(flagged[labels == 1].float().mean()))
    assert out["specificity"] == pytest.approx(float((~flagged[labels == 0]).float().mean()))
    assert out["roc_curve"]["fpr"][0] == 0.0 and out["roc_curve"]["tpr"][-1] == 1.0


def test_multilabel_task_gets_per_label_auroc_and_no_top_k():
    g = torch.Generator().manual_seed(1)
    targets = torch.randint(0, 2, (120, 3), generator=g)
    logits = torch.randn(120, 3, generator=g) + targets * 1.5
    out = run_evaluator(AccuracyEvaluator(), EvalContext(logits, targets, classes=["x", "y", "z"]))
    assert "top1" not in out and "confusion_matrix" not in out
    scores = logits.sigmoid()
    per_label = [roc_auc_score(targets[:, i], scores[:, i]) for i in range(3)]
    assert [r["auroc"] for r in out["per_class"]] == pytest.approx(per_label, abs=1e-6)
    assert out["auroc"] == pytest.approx(sum(per_label) / 3, abs=1e-6)
    assert out["exact_match"] == pytest.approx(float(((scores >= 0.5) == targets.bool()).all(dim=1).float().mean()))
    calibration = run_evaluator(CalibrationEvaluator(), EvalContext(logits, targets, classes=["x", "y", "z"]))
    for j, row in enumerate(calibration["per_label"]):  # each label as a two-class problem: top-label ECE by hand
        p, y = scores[:, j].numpy(), targets[:, j].numpy()
        confidence, correct = np.maximum(p, 1 - p), (p >= 0.5) == (y == 1)
        bins = np.minimum((confidence * 15).astype(int), 14)
        ece = sum(
            abs(confidence[bins == b].mean() - correct[bins == b].mean()) * (bins == b).mean()
            for b in range(15)
            if (bins == b).any()
        )
        assert row["label"] == "xyz"[j] and row["ece"] == pytest.approx(ece, abs=1e-5)
        assert row["prevalence"] == pytest.approx(y.mean())
    assert calibration["ece"] == pytest.approx(np.mean([r["ece"] for r in calibration["per_label"]]))


def test_calibration_evaluator_fits_temperature_on_one_part_and_lowers_nll_on_the_other():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (2000,), generator=g)
    logits = (torch.randn(2000, 5, generator=g) + F.one_hot(labels, 5) * 1.2) * 4  # 4x overconfident
    out = run_evaluator(CalibrationEvaluator(), EvalContext(logits, labels))
    assert out["temperature_fit_images"] == 1000
    # the calibrated logits are 1.2 * (noise + 1.2 * one-hot) (the Gaussian log posterior), so T = 4 / 1.2
    assert out["temperature"] == pytest.approx(4 / 1.2, rel=0.05)
    assert out["nll_after_scaling"] < out["nll_before_scaling"] and out["ece_after_scaling"] < out["ece_before_scaling"]
    assert out["ece"] > 0.1 and sum(out["reliability"]["count"]) == 2000
    coverage = {p["threshold"]: p for p in out["coverage"]}
    assert coverage[0.0]["coverage"] == 1.0
    assert [p["coverage"] for p in out["coverage"]] == sorted((p["coverage"] for p in out["coverage"]), reverse=True)


def test_a_temperature_that_does_not_lower_held_out_nll_is_not_kept():
    """Fit half and judge half disagree (the fit half is 8x overconfident, the judge half calibrated): the fitted
    temperature makes the judged NLL worse, so T = 1 is kept and the reason is given."""
    from vitkit.evaluate.calibration import _split_for_temperature

    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (200,), generator=g)
    logits = torch.randn(200, 4, generator=g) + F.one_hot(labels, 4) * 2.0
    fit, _ = _split_for_temperature(200, 0.5, 0)
    logits[fit] = logits[fit] * 8
    out = run_evaluator(CalibrationEvaluator(), EvalContext(logits, labels))
    assert out["temperature_fitted"] > 3
    assert out["nll_after_scaling"] >= out["nll_before_scaling"]
    assert (
        "temperature" not in out and "did not lower the NLL on the 100 held-out images" in out["temperature_rejected"]
    )


def test_most_confidently_wrong_are_the_wrong_ones_by_descending_confidence():
    labels = torch.tensor([0, 1, 2, 0, 1])
    logits = torch.tensor([[9.0, 0, 0], [0, 1, 3], [5, 0, 0], [1, 0, 0], [0, 0, 0.5]])
    out = run_evaluator(CalibrationEvaluator(), EvalContext(logits, labels, classes=["a", "b", "c"]))
    assert out["temperature_skipped"].startswith("needs at least 100 evaluation images")
    assert "temperature" not in out
    wrong = out["confidently_wrong"]
    assert [w["index"] for w in wrong] == [2, 1, 4]
    assert (wrong[0]["true"], wrong[0]["predicted"]) == ("c", "a")
    assert wrong[0]["confidence"] > wrong[1]["confidence"] > wrong[2]["confidence"]


def test_fairness_flags_gaps_over_five_points_and_reports_small_groups():
    labels = torch.zeros(83, dtype=torch.long)
    predicted = [0] * 40 + [0] * 20 + [1] * 20 + [1, 1, 1]  # group a all right, b half right, c all wrong
    groups = ["a"] * 40 + ["b"] * 40 + ["c"] * 3
    out = run_evaluator(FairnessEvaluator(), EvalContext(_one_hot_logits(predicted, 2), labels, groups=groups))
    rows = {r["group"]: r for r in out["groups"]}
    assert rows["a"]["top1"] == 1.0 and rows["b"]["top1"] == 0.5 and rows["c"]["count"] == 3
    assert rows["c"]["too_small"] and not rows["a"]["too_small"]
    assert out["top1_gap"] == pytest.approx(0.5)  # c is too small to count in the gap
    assert any("top-1 differs by 50.0 points" in f for f in out["flags"])
    assert any("'c' has 3 images" in f and "too small" in f for f in out["flags"])
    fair = run_evaluator(
        FairnessEvaluator(), EvalContext(_one_hot_logits([0] * 80, 2), labels[:80], groups=groups[:80])
    )
    assert fair["top1_gap"] == 0.0 and not any("differs" in f for f in fair["flags"])
    assert run_evaluator(FairnessEvaluator(), EvalContext(_one_hot_logits([0], 2), labels[:1])).keys() == {"skipped"}


def test_only_selects_evaluators_and_names_the_choices_on_a_typo():
    assert [e.name for e in select_evaluators("calibration,accuracy")] == ["accuracy", "calibration"]
    assert [e.name for e in select_evaluators()] == list(EVALUATORS)
    with pytest.raises(
        VitkitError, match=r"unknown evaluator \[.calibraton.\]\. Choose from accuracy, clinical, calibration"
    ):
        select_evaluators("calibraton")


def test_evaluation_data_is_relabelled_to_the_models_classes_by_name():
    images = ImageSet(["x.png", "y.png", "z.png"], np.array([0, 1, 0]), ["g1", "g2", "g1"])
    out = relabel(images, ["dog", "cat"], ["cat", "dog", "fox"], "--data other.csv")
    assert out.labels.tolist() == [1, 0, 1] and out.groups == images.groups
    with pytest.raises(DataError, match=r"--shift-data d has classes the model does not know: \['wolf'\]"):
        relabel(images, ["wolf", "cat"], ["cat", "dog", "fox"], "--shift-data d")


def test_a_wrong_shift_data_path_names_that_option(tmp_path):
    from vitkit.config import load_recipe

    missing = tmp_path / "other_site"
    with pytest.raises(DataError, match=rf"^--shift-data {missing}: no such file or folder"):
        load_shift(str(missing), ["cat", "dog"], load_recipe("quickstart"))


def test_saved_temperature_belongs_to_the_exact_weights_it_was_fitted_on(tmp_path):
    import json

    checkpoint = tmp_path / "checkpoints" / "best"
    checkpoint.mkdir(parents=True)
    (checkpoint / "checksums.json").write_text(json.dumps({"ema.safetensors": "aaa"}))
    info = {"checkpoint": str(checkpoint), "weights": "ema.safetensors"}
    save_temperature(tmp_path, 0.7, info, "val")
    assert saved_temperature(tmp_path, info) == 0.7
    assert saved_temperature(tmp_path, {**info, "weights": "model.safetensors"}) is None
    (checkpoint / "checksums.json").write_text(json.dumps({"ema.safetensors": "bbb"}))  # best was rewritten
    assert saved_temperature(tmp_path, info) is None
