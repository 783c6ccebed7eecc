"""Per-finding AUROC/AP with bootstrap intervals and operating points at fixed specificity, against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vitkit.evaluate.clinical import (
    ClinicalEvaluator,
    at_threshold,
    bootstrap_samples,
    fit_thresholds,
    ranking,
    ranking_intervals,
)
from vitkit.evaluate.context import EvalContext, EvalSettings


def _col(values: list[float], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype).view(-1, 1)


def mann_whitney(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + half the ties, over every pair (the AUROC's definition)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum(float(p > n) + 0.5 * float(p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_auroc_and_ap_against_closed_forms():
    auroc, ap, _ = ranking(_col([0.1, 0.4, 0.35, 0.8]), _col([0, 0, 1, 1], torch.long))
    assert auroc[0] == pytest.approx(0.75)  # 3 of the 4 positive-negative pairs ordered right
    ties, _, _ = ranking(_col([0.5, 0.5, 0.2, 0.9]), _col([1, 0, 0, 1], torch.long))
    assert ties[0] == pytest.approx(0.875)  # one tied pair counts a half
    _, ap, _ = ranking(_col([0.9, 0.8, 0.7, 0.6]), _col([1, 0, 1, 0], torch.long))
    assert ap[0] == pytest.approx((1 / 1 + 2 / 3) / 2)  # precision at each positive, averaged
    rng = np.random.default_rng(0)
    scores, labels = rng.random((40, 3)), (rng.random((40, 3)) < 0.3).astype(np.int64)
    labels[0, 1] = -1  # unknown: left out
    got, _, _ = ranking(torch.from_numpy(scores).float(), torch.from_numpy(labels))
    for j in range(3):
        known = labels[:, j] >= 0
        assert got[j] == pytest.approx(mann_whitney(scores[known, j].astype(np.float32), labels[known, j]), abs=1e-6)


def test_a_label_without_positives_has_no_auroc():
    auroc, ap, _ = ranking(torch.rand(5, 2), torch.tensor([[0, 1], [0, 0], [0, 1], [0, 0], [0, 0]]))
    assert math.isnan(auroc[0]) and math.isnan(ap[0]) and not math.isnan(auroc[1])


def test_sensitivity_at_specificity_against_a_hand_count():
    negatives = [0.02 + 0.1 * i for i in range(10)]
    positives = [0.88, 0.97, 0.5, 0.3]
    scores, targets = _col(negatives + positives), _col([0] * 10 + [1] * 4, torch.long)
    # at most 1 of 10 negatives may score >= t: t = 0.88 lets only 0.92 through, and catches 0.88 and 0.97
    (threshold,) = fit_thresholds(scores, targets, 0.9)
    assert threshold == pytest.approx(0.88)
    sens, spec, pos, neg = at_threshold(scores[:, 0], targets[:, 0], threshold)
    assert (sens, spec, pos, neg) == (0.5, pytest.approx(0.9), 4, 10)
    (strict,) = fit_thresholds(scores, targets, 0.95)  # no negative may pass: only 0.97 is caught
    assert at_threshold(scores[:, 0], targets[:, 0], strict)[:2] == (0.25, 1.0)


def test_the_bootstrap_interval_covers_the_true_auroc_at_about_its_level():
    """Binormal scores (positives N(1, 1), negatives N(0, 1)) have AUROC Phi(1 / sqrt 2) = 0.7602."""
    truth = 0.5 * (1 + math.erf(1 / math.sqrt(2) / math.sqrt(2)))
    rng = np.random.default_rng(1)
    covered, trials = 0, 100
    for trial in range(trials):
        scores = np.r_[rng.normal(1, 1, 60), rng.normal(0, 1, 140)]
        targets = np.r_[np.ones(60), np.zeros(140)]
        iv = ranking_intervals(_col(scores.tolist()), _col(targets.tolist(), torch.long), None, 150, trial)
        covered += iv.low["auroc"][0] <= truth <= iv.high["auroc"][0]
    assert 0.88 <= covered / trials <= 0.99


def test_patient_bootstrap_draws_whole_patients():
    patients = ["a", "a", "b", "c", "c", "c"]
    for idx in bootstrap_samples(6, patients, 20, seed=0):
        drawn = [patients[i] for i in idx]
        for p in set(drawn):
            assert drawn.count(p) % patients.count(p) == 0  # every draw of a patient brings all their images


def _ctx(**kwargs: object) -> EvalContext:
    rng = np.random.default_rng(0)
    labels = torch.from_numpy((rng.random((80, 2)) < 0.4).astype(np.float32))
    logits = torch.from_numpy(rng.normal(size=(80, 2))).float() + 2 * labels
    return EvalContext(
        logits=logits, labels=labels, classes=["Edema", "Mass"], settings=EvalSettings(bootstrap_resamples=50), **kwargs
    )  # type: ignore[arg-type]


def test_thresholds_fitted_on_validation_are_the_ones_applied_to_test():
    fitted = dict(ClinicalEvaluator()(_ctx(is_validation_split=True)))
    assert "validation split" in fitted["threshold_source"]
    saved = fitted["fitted_thresholds"]
    frozen = {**saved, "fitted_on": "builtin:xray, validation split"}
    test = dict(ClinicalEvaluator()(_ctx(frozen_thresholds=frozen)))
    assert "fitted_thresholds" not in test  # nothing is refitted on the test set
    assert test["threshold_source"] == "frozen: fitted on builtin:xray, validation split"
    used = {(p["label"], p["target_specificity"]): p["threshold"] for p in test["operating_points"]}
    for spec, values in saved["thresholds"].items():
        for name, value in zip(saved["labels"], values, strict=True):
            assert used[(name, float(spec))] == value


def test_a_multiclass_task_is_skipped_and_binary_is_one_label():
    multiclass = EvalContext(logits=torch.randn(10, 3), labels=torch.randint(0, 3, (10,)))
    assert "skipped" in dict(ClinicalEvaluator()(multiclass))
    labels = torch.tensor([0, 1] * 10)
    binary = EvalContext(
        logits=torch.randn(20, 2),
        labels=labels,
        classes=["normal", "pneumonia"],
        settings=EvalSettings(bootstrap_resamples=20),
    )
    out = dict(ClinicalEvaluator()(binary))
    assert [r["label"] for r in out["per_label"]] == ["pneumonia"]
    scores = binary.logits.softmax(1)[:, 1].numpy()
    assert out["per_label"][0]["auroc"] == pytest.approx(mann_whitney(scores, labels.numpy()), abs=1e-5)
