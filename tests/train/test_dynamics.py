"""Training-dynamics monitors: per-block gradient norms and update ratios against hand computations, attention
health, the progress-line warnings and the over/underfitting findings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_recipe, tiny_vit
from vitkit.evaluate.findings import findings
from vitkit.train.dynamics import block_grad_norms, snapshot, update_ratios
from vitkit.train.logging import read_metrics
from vitkit.train.loop import dynamics_warnings, train


def _backward(model: torch.nn.Module) -> None:
    torch.manual_seed(0)
    model(torch.randn(4, 3, 16, 16)).logsumexp(dim=1).sum().backward()


def test_block_gradient_norms_against_concatenated_gradients():
    model = tiny_vit()
    _backward(model)
    norms = block_grad_norms(model)
    for i, block in enumerate(model.blocks):
        for part in ("attn", "mlp"):
            flat = torch.cat([p.grad.flatten() for p in getattr(block, part).parameters()])
            assert norms[part][i] == pytest.approx(float(flat.norm()), rel=1e-5)


def test_update_ratio_of_a_plain_sgd_step_is_lr_times_gradient_over_weight():
    model, lr = tiny_vit(), 0.1
    _backward(model)
    before = snapshot(model)
    expected = []
    for block in model.blocks:
        params = list(block.attn.parameters())
        grad = torch.cat([p.grad.flatten() for p in params]).norm()
        weight = torch.cat([p.detach().flatten() for p in params]).norm()
        expected.append(float(lr * grad / weight))
    torch.optim.SGD(model.parameters(), lr=lr).step()
    assert update_ratios(model, before)["attn"] == pytest.approx(expected, rel=1e-4)


def test_frozen_parts_read_as_nan():
    model = tiny_vit()
    for p in model.blocks[0].attn.parameters():
        p.requires_grad_(False)
    _backward(model)
    norms = block_grad_norms(model)
    assert math.isnan(norms["attn"][0]) and not math.isnan(norms["mlp"][0])


def test_warnings_name_the_collapsed_layers_and_uniform_attention():
    collapsed = dynamics_warnings({"epoch": 2, "attn_collapsed": [1, 3], "attn_entropy": [0.9, 0.01, 0.8, 0.02]})
    assert len(collapsed) == 1 and "layer 1, 3" in collapsed[0] and "optim.lr" in collapsed[0]
    uniform = {"attn_uniform": [0, 1], "attn_entropy": [0.99, 0.99]}
    assert dynamics_warnings({**uniform, "epoch": 1}) == []  # early on, uniform attention is expected
    assert "still uniform" in dynamics_warnings({**uniform, "epoch": 5})[0]


def _doc(history: list[dict]) -> dict:
    return {"classes": ["a", "b"], "task": "multiclass", "results": {}, "training": {"history": history}}


def test_findings_diagnose_overfitting_and_a_run_still_learning():
    overfit = [{"epoch": e, "val_loss": 0.5, "val_top1": 0.7, "train_eval_top1": 0.7 + 0.1 * e} for e in (1, 2, 3)]
    text = " ".join(f["problem"] + f["action"] for f in findings(_doc(overfit)))
    assert "overfits" in text and "drop_path_rate" in text and "augment.mixup" in text
    rising = [
        {"epoch": e, "val_loss": 0.5, "val_top1": 0.6 + 0.1 * e, "train_eval_top1": 0.62 + 0.1 * e} for e in (1, 2, 3)
    ]
    text = " ".join(f["problem"] + f["action"] for f in findings(_doc(rising)))
    assert "still learning" in text and "schedule.epochs" in text and "overfits" not in text


def test_a_run_logs_its_dynamics(tmp_path: Path):
    one_epoch = ["schedule.epochs=1", "schedule.warmup_epochs=0"]
    train(tiny_recipe(*one_epoch, "train.log_every=2"), tmp_path / "run", evaluate=False)
    steps = read_metrics(tmp_path / "run" / "metrics.jsonl", "step")
    assert steps and all(len(s["grad_norm_attn"]) == 2 and len(s["update_ratio_mlp"]) == 2 for s in steps)
    assert all(s["attn_mlp_grad_ratio"] > 0 for s in steps)
    (epoch,) = read_metrics(tmp_path / "run" / "metrics.jsonl", "epoch")
    assert 0 <= epoch["train_eval_top1"] <= 1 and len(epoch["attn_entropy"]) == 2
    assert all(0 < h <= 1.0 + 1e-6 for h in epoch["attn_entropy"])
    off = tmp_path / "off"
    train(tiny_recipe(*one_epoch, "train.monitor_dynamics=false"), off, evaluate=False)
    assert "grad_norm_attn" not in read_metrics(off / "metrics.jsonl", "step")[0]
