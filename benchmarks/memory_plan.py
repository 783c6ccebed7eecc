"""The memory planner's saved-activation prediction against a real forward pass on CPU.

    .venv/bin/python benchmarks/memory_plan.py

For three timm families, the four fine-tuning strategies and both attention paths, batch 2 at 224 px in fp32:
the activations `vitkit plan memory` predicts (traced on the meta device) against the distinct storages autograd
keeps in a real forward pass on this CPU (parameters excluded; fused attention is PyTorch's CPU flash kernel).
Prints a Markdown table and appends each row to benchmarks/results/memory_plan.jsonl.
"""

from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.plan.test_memory_plan import FAMILIES, measured_saved_bytes  # noqa: E402

from vitkit.config import load_recipe  # noqa: E402
from vitkit.models.build import build_model, set_attention  # noqa: E402
from vitkit.models.finetune import apply_strategy  # noqa: E402
from vitkit.plan.memory import plan_memory  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "memory_plan.jsonl"


def main() -> None:
    print("| model | strategy | attention | predicted MiB | measured MiB | predicted / measured |")
    print("|---|---|---|---|---|---|")
    for name in FAMILIES:
        for strategy in ("full", "partial", "head", "lora"):
            for attn in ("math", "fused"):
                overrides = [f"model.name={name}", "train.precision=fp32", f"model.attn_impl={attn}"]
                overrides += [f"finetune.strategy={strategy}", "finetune.freeze_blocks=1", "model.drop_path_rate=0"]
                cfg = load_recipe("deit-small", overrides)
                predicted = plan_memory(cfg, 2, 10).activations
                torch.manual_seed(0)
                model = apply_strategy(build_model(cfg.model, 10), cfg.finetune)
                set_attention(model, attn)
                measured = measured_saved_bytes(model.train(), torch.randn(2, 3, 224, 224))
                row = {"model": name, "strategy": strategy, "attention": attn, "predicted": predicted}
                row |= {"measured": measured, "date": str(date.today())}
                with RESULTS.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(
                    f"| {name} | {strategy} | {attn} | {predicted / 2**20:.2f} | {measured / 2**20:.2f} | "
                    f"{predicted / measured:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
