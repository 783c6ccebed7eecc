"""Drift statistics, each a pure function of a reference sample and a window of traffic.

- confidence: two-sample Kolmogorov-Smirnov test on top-1 probabilities (asymptotic p-value);
- embeddings: maximum mean discrepancy with a Gaussian kernel (bandwidth: median pairwise distance of the pooled
  sample) and a permutation test, as in Gretton et al. (2012); the statistic is the unbiased MMD²;
- attention: per-layer mean entropy of the window against the reference, as z-scores of the window mean.
"""

from __future__ import annotations

import math

import numpy as np


def ks_two_sample(reference: np.ndarray, window: np.ndarray) -> tuple[float, float]:
    """(D, p): the largest gap between the two empirical CDFs, and its asymptotic two-sided p-value
    (Kolmogorov's distribution with Stephens' small-sample correction)."""
    a, b = np.sort(reference), np.sort(window)
    values = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, values, "right") / len(a)
    cdf_b = np.searchsorted(b, values, "right") / len(b)
    d = float(np.max(np.abs(cdf_a - cdf_b)))
    en = math.sqrt(len(a) * len(b) / (len(a) + len(b)))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 1e-3:
        return d, 1.0
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return d, float(min(1.0, max(0.0, p)))


def _unbiased_mmd2(kernel: np.ndarray, n: int) -> float:
    kxx, kyy, kxy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    m = kernel.shape[0] - n
    xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(xx + yy - 2 * kxy.mean())


def mmd_permutation(
    reference: np.ndarray, window: np.ndarray, permutations: int = 200, seed: int = 0
) -> tuple[float, float]:
    """(MMD², p): the p-value is the share of label permutations of the pooled sample whose MMD² is at least the
    observed one (with the observed split counted, so p > 0)."""
    pooled = np.concatenate([reference, window]).astype(np.float64)
    squared = np.maximum(((pooled[:, None, :] - pooled[None, :, :]) ** 2).sum(-1), 0)
    upper = squared[np.triu_indices(len(pooled), 1)]
    bandwidth = float(np.median(upper[upper > 0])) if np.any(upper > 0) else 1.0
    kernel = np.exp(-squared / bandwidth)
    n = len(reference)
    observed = _unbiased_mmd2(kernel, n)
    rng = np.random.default_rng(seed)
    exceed = 0
    for _ in range(permutations):
        order = rng.permutation(len(pooled))
        exceed += _unbiased_mmd2(kernel[np.ix_(order, order)], n) >= observed
    return observed, (1 + exceed) / (1 + permutations)


def entropy_shift(reference: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Per layer: (window mean - reference mean) / (reference std / sqrt(window size)). (images, layers) inputs."""
    if reference.shape[1] == 0 or len(window) == 0:
        return np.zeros(reference.shape[1])
    spread = reference.std(axis=0, ddof=1) / math.sqrt(len(window))
    return (window.mean(axis=0) - reference.mean(axis=0)) / np.maximum(spread, 1e-6)
