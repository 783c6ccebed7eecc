"""Label names of the MedMNIST chest and breast sets (from MedMNIST's own INFO table), so a downloaded .npz file
trains with readable names without the medmnist package. Other files get 0..K-1."""

from __future__ import annotations

import re

MEDMNIST_LABELS = {
    "chestmnist": [
        "atelectasis",
        "cardiomegaly",
        "effusion",
        "infiltration",
        "mass",
        "nodule",
        "pneumonia",
        "pneumothorax",
        "consolidation",
        "edema",
        "emphysema",
        "fibrosis",
        "pleural",
        "hernia",
    ],
    "pneumoniamnist": ["normal", "pneumonia"],
    "breastmnist": ["malignant", "normal, benign"],
}


def medmnist_classes(stem: str, width: int) -> list[str]:
    """Names for a MedMNIST file `stem` (chestmnist, chestmnist_64, ...) with `width` labels or classes."""
    names = MEDMNIST_LABELS.get(re.sub(r"_\d+$", "", stem.lower()))
    return list(names) if names and len(names) == width else [str(i) for i in range(width)]
