import pytest
import torch

from vitkit.config.schema import ScheduleConfig
from vitkit.train.optim import build_scheduler, warmup_cosine_lr


def test_scheduler_follows_closed_form_warmup_then_cosine():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    cfg = ScheduleConfig(epochs=10, warmup_epochs=2, warmup_lr=1e-6, min_lr=1e-5)
    scheduler = build_scheduler(optimizer, cfg, updates_per_epoch=5, peak_lr=1e-3)
    seen = {}
    for update in range(50):
        seen[update] = optimizer.param_groups[0]["lr"]  # lr used by this update
        scheduler.step_update(update + 1)
    for step in (0, 1, 5, 9, 10, 11, 25, 40, 49):
        assert seen[step] == pytest.approx(warmup_cosine_lr(step, 50, 10, 1e-3, 1e-6, 1e-5), rel=1e-9), step
    assert seen[0] == pytest.approx(1e-6)
    assert seen[10] == pytest.approx(1e-3)  # peak right after warmup
    assert seen[49] < 2e-5  # near the floor at the end


def test_closed_form_reference_values():
    assert warmup_cosine_lr(5, 100, 10, 1.0, 0.0, 0.0) == pytest.approx(0.5)
    assert warmup_cosine_lr(55, 100, 10, 1.0, 0.0, 0.0) == pytest.approx(0.5)  # half-way through the cosine
    assert warmup_cosine_lr(100, 100, 10, 1.0, 0.0, 0.1) == pytest.approx(0.1)
