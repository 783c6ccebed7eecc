"""Efficiency: exact FLOPs and parameters of a known model, ordered latency percentiles."""

import numpy as np
import pytest
import torch
from torch import nn

from vitkit.data.sources import ImageSet
from vitkit.evaluate.context import EvalContext, EvalSettings, ModelRunner, run_evaluator
from vitkit.evaluate.efficiency import EfficiencyEvaluator, count_flops


def _runner() -> ModelRunner:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    transform = lambda img: torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()  # noqa: E731
    return ModelRunner(model, torch.device("cpu"), (0.5,) * 3, (0.25,) * 3, transform, batch_size=4)


def test_flops_of_a_linear_model_are_two_per_multiply_add():
    assert count_flops(_runner(), torch.zeros(5, 3, 8, 8, dtype=torch.uint8)) == 2 * 192 * 10


def test_efficiency_evaluator_reports_parameters_flops_latency_and_throughput():
    images = ImageSet(np.zeros((3, 8, 8, 3), dtype=np.uint8), np.zeros(3, dtype=np.int64))
    settings = EvalSettings(latency_repeats=20, warmup=2, throughput_batch=8)
    ctx = EvalContext(
        torch.zeros(3, 10), torch.zeros(3, dtype=torch.long), images=images, runner=_runner(), settings=settings
    )
    out = run_evaluator(EfficiencyEvaluator(), ctx)
    assert out["parameters"] == 192 * 10 + 10 and out["flops_per_image"] == 3840 and out["input_shape"] == [3, 8, 8]
    latency = out["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] and out["latency_repeats"] == 20
    assert out["throughput_batch"] == 8 and out["throughput_images_per_s"] > 0
    assert out["peak_memory_mb"] > 0 and out["device"].startswith("cpu")
    assert run_evaluator(EfficiencyEvaluator(), EvalContext(torch.zeros(1, 2), torch.zeros(1))) == {
        "skipped": pytest.approx("needs the model and the evaluation images")
    }
