"""Corruptions are seeded and monotone in severity; the evaluator flags drops of more than 10 points."""

import numpy as np
import pytest
import torch
from skimage import data as skdata
from torch import nn

from vitkit.data.sources import ImageSet
from vitkit.evaluate.context import EvalContext, EvalSettings, ModelRunner, run_evaluator
from vitkit.evaluate.robustness import CORRUPTIONS, RobustnessEvaluator, corrupt, psnr


def _photo(size: int = 64) -> torch.Tensor:
    """A real photograph (scikit-image's astronaut), as a uint8 (1, 3, size, size) batch."""
    image = torch.from_numpy(skdata.astronaut()).permute(2, 0, 1)
    return torch.nn.functional.interpolate(image[None].float(), size=(size, size), mode="area").round().byte()


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruptions_are_deterministic_and_psnr_falls_with_severity(name):
    image = _photo()
    first = [corrupt(image, name, s, seed=7) for s in range(1, 6)]
    again = [corrupt(image, name, s, seed=7) for s in range(1, 6)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert all(c.dtype == torch.uint8 and c.shape == image.shape for c in first)
    quality = [psnr(image, c) for c in first]
    assert quality == sorted(quality, reverse=True) and len(set(quality)) == 5, quality
    assert quality[0] < float("inf")


def test_noise_depends_on_the_seed_only():
    image = _photo()
    assert not torch.equal(corrupt(image, "gaussian_noise", 3, seed=1), corrupt(image, "gaussian_noise", 3, seed=2))
    with pytest.raises(ValueError, match=r"severity must be 1\.\.5"):
        corrupt(image, "blur", 6, seed=0)


LEVELS = (0.10, 0.25, 0.40, 0.55)  # grey level of each class's images


class NearestGrey(nn.Module):
    """Classifies an image by its mean grey level: right on clean images, fooled by a brightness shift and not by
    contrast (which keeps the mean)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3))
        return -(mean[:, None] - torch.tensor(LEVELS)[None]).abs() * 100


def _grey_images(shift: float = 0.0) -> ImageSet:
    items = np.stack([np.full((8, 8, 3), round((v + shift) * 255), dtype=np.uint8) for v in LEVELS for _ in range(2)])
    return ImageSet(items, np.repeat(np.arange(4), 2))


def test_evaluator_flags_drops_over_ten_points_and_a_shifted_dataset():
    images = _grey_images()
    transform = lambda img: torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()  # noqa: E731
    runner = ModelRunner(NearestGrey(), torch.device("cpu"), (0.0,) * 3, (1.0,) * 3, transform, batch_size=4)
    labels = torch.from_numpy(images.labels)
    logits = torch.cat([runner.logits(x) for x, _ in runner.batches(images)])
    ctx = EvalContext(
        logits,
        labels,
        images=images,
        runner=runner,
        shift=("brighter scans", _grey_images(0.2)),
        settings=EvalSettings(severities=(1, 2, 3)),
    )
    out = run_evaluator(RobustnessEvaluator(), ctx)
    assert out["clean_top1"] == 1.0 and out["images"] == 8
    assert out["corruptions"]["brightness"] == [0.25, 0.25, 0.25]  # only the brightest class stays right
    assert out["corruptions"]["contrast"] == [1.0, 1.0, 1.0]
    assert out["shift"] == {"data": "brighter scans", "images": 8, "top1": 0.25, "reference_top1": 1.0}
    flags = " | ".join(out["flags"])
    assert "brightness: top-1 drops 75.0 points already at severity 1" in flags
    assert "contrast" not in flags and "blur" not in flags
    assert "shifted data (brighter scans): top-1 drops 75.0 points" in flags
