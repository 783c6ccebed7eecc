"""Patient-disjoint splits: no patient's images on both sides.

Images of one patient look alike (same anatomy, often the same finding), so an image-level split lets a model
score on validation by recognising patients; published chest X-ray results are hard to compare for exactly this
reason. When a source knows its patients, every split vitkit makes keeps each patient on one side, and a split
given by the data that breaks this is refused.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from vitkit.errors import DataError


def patient_split(patients: list[str], val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) image indices: whole patients, in a seeded order, go to val until it holds `val_fraction` of
    the images (at least one patient, and at least one left for training)."""
    counts = Counter(patients)
    if len(counts) < 2:
        raise DataError(
            f"every image belongs to one patient ({next(iter(counts), '?')}): a patient-disjoint split needs at "
            "least two patients. Check the patient column (data.patient_column)."
        )
    order = sorted(counts)  # sorted first: the seeded shuffle then depends only on the patient names
    np.random.default_rng(seed).shuffle(order)
    target, taken, val = val_fraction * len(patients), 0, set[str]()
    for patient in order[:-1]:
        if taken >= target and val:
            break
        val.add(patient)
        taken += counts[patient]
    in_val = np.asarray([p in val for p in patients])
    return np.flatnonzero(~in_val), np.flatnonzero(in_val)


def shared_patients(train: list[str], val: list[str]) -> list[str]:
    """Patients with images on both sides, sorted."""
    return sorted(set(train) & set(val))


def check_disjoint(train: list[str], val: list[str], where: str) -> None:
    """Refuse a given split that puts a patient on both sides, naming a few and the fix."""
    both = shared_patients(train, val)
    if both:
        raise DataError(
            f"{where}: {len(both)} patients have images in both train and val (e.g. {', '.join(both[:5])}), so "
            "validation would reward recognising patients. Put each patient's images on one side, or drop the "
            "split column and vitkit splits by patient (seeded by train.seed)."
        )


def random_split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded image-level split for multi-label sets without patients (classes cannot be stratified)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(round(n * val_fraction), 1), n - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
