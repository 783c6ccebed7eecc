"""Drift statistics against independent references: scipy's KS test, MMD² computed by hand on a tiny sample, and
the false/true alarm behaviour on samples drawn from the same or a shifted distribution."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from vitkit.serve.drift import entropy_shift, ks_two_sample, mmd_permutation


@pytest.mark.parametrize("shift", [0.0, 0.3, 1.0])
def test_ks_statistic_equals_scipys_and_its_p_value_is_close(shift: float):
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=300), rng.normal(shift, size=150)
    d, p = ks_two_sample(a, b)
    expected = stats.ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(expected.statistic, abs=1e-12)
    assert p == pytest.approx(expected.pvalue, abs=0.03)  # Stephens' correction moves it slightly


def test_unbiased_mmd2_equals_the_definition_on_a_tiny_sample():
    x = np.array([[0.0], [1.0], [2.0]])
    y = np.array([[0.5], [3.0]])
    pooled = np.concatenate([x, y])
    distances = [float((a - b) @ (a - b)) for a, b in itertools.combinations(pooled, 2)]
    h = float(np.median(distances))

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return math.exp(-float((a - b) @ (a - b)) / h)

    xx = sum(k(a, b) for i, a in enumerate(x) for j, b in enumerate(x) if i != j) / 6
    yy = sum(k(a, b) for i, a in enumerate(y) for j, b in enumerate(y) if i != j) / 2
    xy = sum(k(a, b) for a in x for b in y) / 6
    observed, _ = mmd_permutation(x, y, permutations=10)
    assert observed == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_mmd_raises_no_alarm_on_the_same_distribution_and_one_on_a_shift():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(150, 8))
    same = rng.normal(size=(100, 8))
    shifted = rng.normal(size=(100, 8)) + np.array([0.6] + [0.0] * 7)
    assert mmd_permutation(reference, same)[1] > 0.05
    assert mmd_permutation(reference, shifted)[1] < 0.01


def test_entropy_shift_is_the_z_score_of_the_window_mean():
    reference = np.array([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])
    window = np.array([[2.0, 3.0], [4.0, 3.0], [3.0, 3.0], [3.0, 3.0]])
    z = entropy_shift(reference, window)
    assert z[0] == pytest.approx((3.0 - 2.0) / (1.0 / 2.0))  # std 1, sqrt(4) = 2
    assert z[1] == pytest.approx((3.0 - 3.0) / (math.sqrt(3.0) / 2.0))
