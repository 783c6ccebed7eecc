"""Multi-label targets, losses and imbalance handling against hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitkit.config.schema import AugmentConfig
from vitkit.data.pipeline import BatchAugment, WeightedOrder, balancing_weights, multilabel_targets
from vitkit.train.losses import (
    class_weights_from_labels,
    make_criterion,
    multilabel_loss,
    pos_weight_from_labels,
    weighted_soft_cross_entropy,
)

NAN = float("nan")


def assert_targets(a: torch.Tensor, b: list[list[float]]) -> None:
    torch.testing.assert_close(a, torch.tensor(b), equal_nan=True, rtol=0, atol=1e-6)


def test_multilabel_targets_smooth_towards_one_half_and_mix():
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert_targets(multilabel_targets(labels, 1.0, 0.2), [[0.9, 0.1], [0.1, 0.9]])
    assert_targets(multilabel_targets(labels, 0.7, 0.0), [[0.7, 0.3], [0.3, 0.7]])
    per_image = torch.tensor([[1.0], [0.25]])
    assert_targets(multilabel_targets(labels, per_image, 0.0), [[1.0, 0.0], [0.75, 0.25]])


def test_unknown_labels_stay_unknown_only_where_they_weigh():
    labels = torch.tensor([[NAN, 1.0], [0.0, 0.0]])
    assert_targets(multilabel_targets(labels, 1.0, 0.0), [[NAN, 1.0], [0.0, 0.0]])  # not mixed: the partner never leaks
    assert_targets(multilabel_targets(labels, 0.6, 0.0), [[NAN, 0.6], [NAN, 0.4]])
    assert_targets(multilabel_targets(labels, torch.tensor([[1.0], [1.0]]), 0.0), [[NAN, 1.0], [0.0, 0.0]])


def test_multilabel_mixup_mixes_targets_like_the_pixels():
    torch.manual_seed(0)
    aug = AugmentConfig(mixup=0.8, cutmix=0.0, mix_prob=1.0, random_erasing=0.0)
    batch = BatchAugment(aug, (0.0,) * 3, (1.0 / 255,) * 3, 3, 0.0, torch.device("cpu"), multilabel=True)
    images = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    images[0] = 200  # only image 0 is bright: its partner (the reversed batch) is image 3
    labels = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 1.0, 1.0]])
    x, targets = batch(images, labels)
    lam = float(x[0, 0, 0, 0]) / 200  # image 0 kept lam of itself
    expected = lam * labels + (1 - lam) * labels.flip(0)
    torch.testing.assert_close(targets, expected)
    assert 0 < lam < 1


def test_multilabel_loss_against_hand_values():
    logits, targets = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 0.0]])
    by_hand = (math.log(2) + math.log(1 + math.exp(2))) / 2
    assert multilabel_loss(logits, targets).item() == pytest.approx(by_hand, rel=1e-6)
    weighted = (3 * math.log(2) + math.log(1 + math.exp(2))) / 2  # pos_weight 3 on the positive term
    assert multilabel_loss(logits, targets, torch.tensor([3.0, 3.0])).item() == pytest.approx(weighted, rel=1e-6)
    unknown = torch.tensor([[1.0, NAN]])  # the unknown entry counts nowhere, not even in the mean
    assert multilabel_loss(logits, unknown).item() == pytest.approx(math.log(2), rel=1e-6)


def test_focal_loss_against_hand_values():
    x, gamma = 0.5, 2.0
    p = 1 / (1 + math.exp(-x))
    positive = -((1 - p) ** gamma) * math.log(p)
    negative = -(p**gamma) * math.log(1 - p)
    loss = multilabel_loss(torch.tensor([[x, x]]), torch.tensor([[1.0, 0.0]]), gamma=gamma)
    assert loss.item() == pytest.approx((positive + negative) / 2, rel=1e-6)
    logits = torch.tensor([[1.0, -1.0, 0.5]])
    probs = torch.softmax(logits, -1)[0]
    single = weighted_soft_cross_entropy(logits, torch.tensor([[0.0, 1.0, 0.0]]), gamma=gamma)
    assert single.item() == pytest.approx(float(-((1 - probs[1]) ** gamma) * probs[1].log()), rel=1e-6)


def test_weighted_cross_entropy_matches_hand_and_plain_cross_entropy():
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    one_hot = F.one_hot(labels, 2).float()
    plain = weighted_soft_cross_entropy(logits, one_hot)
    torch.testing.assert_close(plain, F.cross_entropy(logits, labels))
    w = torch.tensor([1.0, 4.0])
    by_hand = (-math.log(math.exp(2) / (math.exp(2) + 1)) + 4 * -math.log(math.e / (1 + math.e))) / 2
    assert weighted_soft_cross_entropy(logits, one_hot, w).item() == pytest.approx(by_hand, rel=1e-6)


def test_weights_from_label_frequencies():
    labels = np.asarray([[1, 0], [0, 0], [0, 1], [0, NAN]], dtype=np.float32)
    torch.testing.assert_close(pos_weight_from_labels(labels), torch.tensor([3.0, 2.0]))
    weights = class_weights_from_labels(np.asarray([0, 0, 0, 1]), 2)
    torch.testing.assert_close(weights, torch.tensor([4 / 6, 2.0]))
    assert weights[1] / weights[0] == pytest.approx(3.0)  # n_neg / n_pos, as pos_weight


def test_make_criterion_picks_the_loss():
    labels = np.asarray([[1, 0], [0, 0], [0, 1], [0, 0]], dtype=np.float32)
    logits, targets = torch.tensor([[0.3, -0.2]]), torch.tensor([[1.0, 0.0]])
    weighted = make_criterion("multilabel", "pos_weight", labels, 2)(logits, targets)
    assert weighted == multilabel_loss(logits, targets, torch.tensor([3.0, 3.0]))
    assert make_criterion("multilabel", "sampler", labels, 2)(logits, targets) == multilabel_loss(logits, targets)


def test_balancing_weights_and_the_weighted_order():
    np.testing.assert_allclose(balancing_weights(np.asarray([0, 0, 1])), [0.5, 0.5, 1.0])
    multi = np.asarray([[1, 0], [1, 1], [0, 0], [0, 0]], dtype=np.float32)
    np.testing.assert_allclose(balancing_weights(multi), [0.5, 1.0, 0.5, 0.5])
    labels = np.asarray([0] * 90 + [1] * 10)
    order = WeightedOrder(balancing_weights(labels), seed=0)
    drawn = []
    for epoch in range(20):
        order.set_epoch(epoch)
        drawn += list(order)
    assert len(drawn) == 2000
    assert 0.45 < np.mean(labels[drawn]) < 0.55  # the rare class drawn about half the time
    order.set_epoch(3)
    assert list(order) == list(order)  # one epoch, one order


def test_a_weighted_order_is_dealt_out_over_processes_like_the_shuffle():
    from vitkit.data.pipeline import train_sampler

    weights = balancing_weights(np.asarray([0] * 30 + [1] * 10))
    one = train_sampler(40, 1, seed=3, weights=weights)
    two = [train_sampler(40, 1, seed=3, rank=r, world=2, weights=weights) for r in (0, 1)]
    for sampler in (one, *two):
        sampler.set_epoch(2)
    merged = [pair for both in zip(*(list(s) for s in two), strict=True) for pair in both]
    assert merged == list(one)  # the same global order and per-position seeds on 1 or 2 processes
    assert isinstance(one.order, WeightedOrder)
