"""The head on cached features: accumulation works as in the image loop."""

from __future__ import annotations

import torch
from torch import nn

from vitkit.train.probe import train_head_epoch


class Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(6, 3)

    def get_classifier(self) -> nn.Module:
        return self.head


def run(batch_size: int, accumulation_steps: int) -> tuple[torch.Tensor, int]:
    g = torch.Generator().manual_seed(1)
    features, labels = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    model = Head()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # SGD: the update is proportional to the gradient
    updates = []
    train_head_epoch(
        model,
        features,
        labels,
        batch_size=batch_size,
        smoothing=0.0,
        num_classes=3,
        optimizer=optimizer,
        on_update=lambda: updates.append(1),
        generator=torch.Generator().manual_seed(2),
        accumulation_steps=accumulation_steps,
    )
    return model.head.weight.detach().clone(), len(updates)


def test_accumulating_two_half_batches_is_one_full_batch():
    full, full_updates = run(16, 1)
    half, half_updates = run(8, 2)
    assert full_updates == half_updates == 4  # 64 images, 16 per update: as many updates as the schedule expects
    torch.testing.assert_close(half, full, atol=1e-6, rtol=1e-6)
    unaccumulated, _ = run(8, 1)
    assert not torch.allclose(unaccumulated, full, atol=1e-3)
