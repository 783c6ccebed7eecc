import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from vitkit.config.schema import AugmentConfig
from vitkit.data.pipeline import (
    BatchAugment,
    EpochShuffleSampler,
    RepeatedAugSampler,
    decode_all,
    eval_transform,
    normalize_batch,
    smooth_targets,
    train_transform,
)
from vitkit.data.sources import ImageSet

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_normalize_batch_matches_torchvision():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    reference = v2.Normalize(MEAN, STD)(images.float() / 255)
    torch.testing.assert_close(normalize_batch(images, MEAN, STD), reference)


def test_smooth_targets_closed_form():
    t = smooth_targets(torch.tensor([2, 0]), num_classes=4, smoothing=0.1)
    assert t[0, 2].item() == pytest.approx(1 - 0.1 + 0.1 / 4)
    assert t[0, 0].item() == pytest.approx(0.1 / 4)
    torch.testing.assert_close(t.sum(1), torch.ones(2))


def test_mixup_soft_targets_sum_to_one_and_match_lambda():
    aug = AugmentConfig(mixup=0.8, cutmix=0.0, mix_prob=1.0, random_erasing=0.0)
    batch = BatchAugment(aug, MEAN, STD, num_classes=5, label_smoothing=0.1, device=torch.device("cpu"))
    torch.manual_seed(0)
    np.random.seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    clean = normalize_batch(images, MEAN, STD)
    mixed, targets = batch(images, labels)
    # Mixup in batch mode: x = lam * x + (1 - lam) * x.flip(0); recover lam from the pixels.
    diff = clean - clean.flip(0)
    lam = float(((mixed - clean.flip(0)) * diff).sum() / (diff * diff).sum())
    assert 0.0 <= lam <= 1.0
    expected = lam * smooth_targets(labels, 5, 0.1) + (1 - lam) * smooth_targets(labels.flip(0), 5, 0.1)
    torch.testing.assert_close(targets, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(targets.sum(1), torch.ones(6))


def test_cutmix_targets_match_the_pasted_area():
    aug = AugmentConfig(mixup=0.0, cutmix=1.0, mix_prob=1.0, random_erasing=0.0)
    batch = BatchAugment(aug, MEAN, STD, num_classes=2, label_smoothing=0.0, device=torch.device("cpu"))
    np.random.seed(3)
    images = torch.cat([torch.zeros(1, 3, 16, 16), torch.full((1, 3, 16, 16), 255.0)]).to(torch.uint8)
    mixed, targets = batch(images, torch.tensor([0, 1]))
    kept = (mixed[0, 0] == mixed[0, 0].min()).float().mean().item()  # share of image 0 left in place
    assert targets[0, 0].item() == pytest.approx(kept, abs=1e-6)


def test_random_erasing_changes_pixels_when_on():
    aug = AugmentConfig(mixup=0.0, cutmix=0.0, random_erasing=1.0)
    batch = BatchAugment(aug, MEAN, STD, num_classes=2, label_smoothing=0.0, device=torch.device("cpu"))
    images = torch.full((4, 3, 16, 16), 128, dtype=torch.uint8)
    x, _ = batch(images, torch.zeros(4, dtype=torch.long))
    assert not torch.equal(x, normalize_batch(images, MEAN, STD))


def test_train_transform_yields_uint8_at_size_and_uses_randaugment():
    aug = AugmentConfig()
    t = train_transform(aug, 16)
    names = [type(s).__name__ for s in t.transforms]
    assert names[:3] == ["RandomResizedCropAndInterpolation", "RandomHorizontalFlip", "RandAugment"]
    assert t.transforms[0].scale == (0.08, 1.0)
    out = t(Image.fromarray(np.zeros((20, 24, 3), dtype=np.uint8)))
    assert out.dtype == torch.uint8 and tuple(out.shape) == (3, 16, 16)


def test_color_jitter_is_used_without_randaugment():
    aug = AugmentConfig(randaugment=None, color_jitter=0.4)
    names = [type(s).__name__ for s in train_transform(aug, 16).transforms]
    assert "ColorJitter" in names and "RandAugment" not in names


def test_eval_transform_resizes_then_center_crops():
    t = eval_transform(AugmentConfig(crop_pct=0.5, interpolation="nearest"), 8)
    img = np.zeros((16, 16, 3), dtype=np.uint8)
    img[4:12, 4:12] = 255  # centre square: after resize to 16 and 8-px centre crop it fills the image
    out = t(Image.fromarray(img))
    assert tuple(out.shape) == (3, 8, 8) and int(out.min()) == 255


def test_epoch_sampler_is_a_seeded_permutation_per_epoch():
    s = EpochShuffleSampler(10, seed=1)
    first = list(s)
    assert sorted(first) == list(range(10)) and list(s) == first
    s.set_epoch(1)
    assert list(s) != first


def test_repeated_aug_sampler_repeats_each_image():
    s = RepeatedAugSampler(12, repeats=3, seed=0)
    order = list(s)
    assert len(order) == 12
    # consecutive triples are the same image (DeiT sends them to different processes)
    assert all(order[i] == order[i + 1] == order[i + 2] for i in range(0, 12, 3))


def test_decode_all_caps_the_shorter_side(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((100, 60, 3), dtype=np.uint8)).save(path)
    decoded = decode_all(ImageSet([path], np.array([0])), max_side=30)
    assert decoded.items[0].shape == (50, 30, 3)


def _epoch_batches(images: ImageSet, start: int, workers: int) -> list[torch.Tensor]:
    from vitkit.data.pipeline import ImageDataset, make_loader, train_sampler

    aug = AugmentConfig(randaugment="rand-m9-mstd0.5", color_jitter=0.4)
    sampler = train_sampler(len(images), repeats=1, seed=3)
    sampler.set_epoch(1, start=start)
    loader = make_loader(ImageDataset(images, train_transform(aug, 16)), 4, sampler=sampler, workers=workers)
    return [x for x, _ in loader]


def test_augmentations_depend_on_the_position_alone_so_a_loader_can_start_mid_epoch():
    rng = np.random.default_rng(0)
    images = ImageSet(rng.integers(0, 256, (24, 20, 20, 3), dtype=np.uint8), np.arange(24) % 3)
    whole = _epoch_batches(images, start=0, workers=0)
    torch.manual_seed(123)  # the caller's RNG state must not matter ...
    tail = _epoch_batches(images, start=8, workers=0)
    in_workers = _epoch_batches(images, start=8, workers=2)  # ... nor which process runs the transform
    assert len(whole) == 6 and len(tail) == 4
    for a, b, c in zip(whole[2:], tail, in_workers, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_per_image_seeding_leaves_the_callers_rngs_untouched():
    import random

    from vitkit.data.pipeline import preserved_rngs, seed_rngs

    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    with preserved_rngs():
        seed_rngs(99)
        inside = (random.random(), np.random.rand(), torch.rand(1))
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    seed_rngs(99)
    assert (random.random(), np.random.rand(), torch.rand(1)) == inside


def test_sample_seeds_are_distinct_across_positions_epochs_and_runs():
    from vitkit.data.pipeline import sample_seed

    seeds = {sample_seed(s, e, p) for s in range(3) for e in range(4) for p in range(500)}
    assert len(seeds) == 3 * 4 * 500
    assert all(0 <= x < 2**63 for x in seeds)
    low_bits = np.asarray([x & 1 for x in seeds])
    assert 0.45 < low_bits.mean() < 0.55  # well mixed, not counting up
