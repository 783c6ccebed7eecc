"""Calibration functions against torchmetrics and hand-computed cases."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_calibration_error

from vitkit.evaluate.calibration import (
    coverage_at_thresholds,
    fit_temperature,
    prediction_entropy,
    reliability_bins,
)


def _calibrated_set(n: int = 20_000, classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from the predicted distribution itself: calibrated by construction."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, classes, generator=g) * 2, dim=1)
    labels = torch.multinomial(probs, 1, generator=g).squeeze(1)
    return probs, labels


def test_entropy_is_zero_for_one_hot_and_log_c_for_uniform():
    probs = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    torch.testing.assert_close(prediction_entropy(probs), torch.tensor([0.0, math.log(4)]))


def test_ece_and_mce_match_torchmetrics():
    probs, labels = _calibrated_set(2000)
    probs = probs**2 / (probs**2).sum(dim=1, keepdim=True)  # sharpen: overconfident
    bins = reliability_bins(probs, labels, bins=15)
    for norm, ours in (("l1", bins.ece), ("max", bins.mce)):
        reference = float(multiclass_calibration_error(probs, labels, 4, n_bins=15, norm=norm))
        assert ours == pytest.approx(reference, abs=1e-6)
    assert sum(bins.count) == 2000 and len(bins.edges) == 16


def test_a_calibrated_set_has_ece_near_zero():
    probs, labels = _calibrated_set()
    assert reliability_bins(probs, labels).ece < 0.02


def test_a_known_miscalibration_has_the_closed_form_ece():
    # every prediction 90% confident, 60% right: one bin with a gap of 0.3, so ECE = MCE = 0.3
    probs = torch.tensor([[0.9, 0.1]]).repeat(10, 1)
    labels = torch.tensor([0] * 6 + [1] * 4)
    bins = reliability_bins(probs, labels)
    assert bins.ece == pytest.approx(0.3) and bins.mce == pytest.approx(0.3)


def test_temperature_scaling_lowers_the_nll_of_an_overconfident_model():
    probs, labels = _calibrated_set(8000, seed=1)
    logits = probs.log() * 3  # the same ranking, three times too sure: the best temperature is 3
    fit_logits, fit_labels, test_logits, test_labels = logits[:4000], labels[:4000], logits[4000:], labels[4000:]
    t = fit_temperature(fit_logits, fit_labels)
    assert t == pytest.approx(3.0, rel=0.1)
    before, after = F.cross_entropy(test_logits, test_labels), F.cross_entropy(test_logits / t, test_labels)
    assert after < before - 0.1
    assert (
        reliability_bins((test_logits / t).softmax(1), test_labels).ece
        < reliability_bins(test_logits.softmax(1), test_labels).ece
    )


def test_coverage_at_thresholds_by_hand():
    probs = torch.tensor([[0.95, 0.05], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7]])
    labels = torch.tensor([0, 1, 0, 1])  # right, wrong, right, right
    points = coverage_at_thresholds(probs, labels, [0.5, 0.7, 0.9, 0.99])
    assert [p.coverage for p in points[:3]] == [1.0, 0.75, 0.25]
    assert [p.accuracy for p in points[:3]] == pytest.approx([0.75, 2 / 3, 1.0])
    assert points[3].coverage == 0.0 and math.isnan(points[3].accuracy)


def test_the_reported_ece_is_the_one_the_reliability_diagram_draws():
    """Confidence exactly 1.0 (softmax of [20, 0] in float32) belongs to the last bin of the diagram and of the ECE
    alike: all four predictions fall in (14/15, 1], with mean confidence (1 + 1 + 2 * 0.94784) / 4 and accuracy 3/4."""
    from vitkit.evaluate.calibration import CalibrationEvaluator
    from vitkit.evaluate.context import EvalContext, run_evaluator

    logits = torch.tensor([[20.0, 0.0], [20.0, 0.0], [2.9, 0.0], [2.9, 0.0]])
    labels = torch.tensor([1, 0, 0, 0])
    out = run_evaluator(CalibrationEvaluator(), EvalContext(logits, labels))
    high = 1 / (1 + math.exp(-2.9))
    by_hand = (1 + 1 + 2 * high) / 4 - 0.75
    assert out["ece"] == pytest.approx(by_hand, abs=1e-6) and out["mce"] == pytest.approx(by_hand, abs=1e-6)
    drawn = out["reliability"]
    assert drawn["count"][-1] == 4 and sum(drawn["count"]) == 4
    gaps = [abs(a - c) * n for a, c, n in zip(drawn["accuracy"], drawn["confidence"], drawn["count"], strict=True)]
    assert out["ece"] == pytest.approx(sum(gaps) / 4, abs=1e-9)
