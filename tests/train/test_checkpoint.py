import random
from pathlib import Path

import numpy as np
import torch

from vitkit.checkpoint_files import load_weights
from vitkit.train.checkpoint import (
    Progress,
    load_training_state,
    progress_from_dict,
    progress_to_dict,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path: Path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state
    torch.save({"rng": rng_state()}, tmp_path / "s.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_checkpoint_folder_is_replaced_whole(tmp_path: Path):
    model = torch.nn.Linear(3, 2)
    progress = Progress(epoch=2, updates=10, history=[{"epoch": 1, "val_top1": 0.5}], last_grad_norm=1.5)
    folder = tmp_path / "last"
    save_checkpoint(folder, model, None, {"progress": progress_to_dict(progress)}, {"epoch": 2})
    with torch.no_grad():
        model.weight.add_(1.0)
    save_checkpoint(folder, model, model, {"progress": progress_to_dict(progress)}, {"epoch": 3})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]  # no temporary or old folders left
    torch.testing.assert_close(load_weights(folder / "model.safetensors")["weight"], model.weight.detach())
    assert (folder / "ema.safetensors").exists()
    restored = progress_from_dict(load_training_state(folder)["progress"])
    assert restored == progress
