"""Parity gates: an export must compute what the checkpoint computes before anyone serves it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from vitkit.errors import VitkitError

FP32_MAX_ABS_DIFF = 1e-4  # logits; fp32 exports differ from eager only by kernel order
SAME_FRAMEWORK_MAX_ABS_DIFF = 1e-5  # logits of the same model in another PyTorch library (transformers, timm)


@dataclass
class Parity:
    images: int
    max_abs_diff: float
    top1_agreement: float  # share of images on which both give the same top class
    limit: float = FP32_MAX_ABS_DIFF

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.limit and self.top1_agreement == 1.0

    def to_dict(self) -> dict[str, Any]:
        fields = asdict(self)
        limit = fields.pop("limit")
        return {**fields, "limit_max_abs_diff": limit, "passed": self.passed}


class ParityError(VitkitError):
    """The export does not compute what the checkpoint computes; it was not kept."""


def compare(reference: np.ndarray, exported: np.ndarray, limit: float = FP32_MAX_ABS_DIFF) -> Parity:
    """Max |logit difference| and top-1 agreement of `exported` against `reference` (same images, same order)."""
    if reference.shape != exported.shape:
        raise ParityError(f"the export gives logits of shape {exported.shape}, the checkpoint {reference.shape}")
    diff = float(np.nanmax(np.abs(reference - exported))) if np.isfinite(exported).all() else float("inf")
    agreement = float((reference.argmax(1) == exported.argmax(1)).mean())
    return Parity(len(reference), diff, agreement, limit)


def require_parity(
    parity: Parity, what: str, hint: str = "exporting with --format pt2 may work where ONNX does not."
) -> None:
    if not parity.passed:
        raise ParityError(
            f"{what} does not compute what the checkpoint computes on {parity.images} validation images: max |logit "
            f"difference| {parity.max_abs_diff:.3g} (limit {parity.limit:g}), top-1 agreement "
            f"{parity.top1_agreement:.2%} (needs 100%). It was not kept. Report this with the model's name; {hint}"
        )


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean()) if len(labels) else float("nan")
