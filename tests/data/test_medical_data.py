"""Multi-label and medical data sources: label layouts, uncertainty policies, patient-disjoint splits, MedMNIST
files and builtin:xray."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitkit.config.schema import DataConfig
from vitkit.data.check import screen_data
from vitkit.data.labels import LabelSpec, split_findings
from vitkit.data.patients import patient_split
from vitkit.data.sources import load_source
from vitkit.data.xray import PREVALENCE, XRAY_FINDINGS, make_xray
from vitkit.errors import DataError


def _png(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)


def _csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_split_findings_reads_pipe_lists_and_no_finding():
    assert split_findings("Effusion|Mass") == ["Effusion", "Mass"]
    assert split_findings("No Finding") == []
    assert split_findings("") == []


def test_labels_column_becomes_a_matrix_in_sorted_label_order(tmp_path: Path):
    rows = [["a.png", "Effusion|Mass", "p1"], ["b.png", "No Finding", "p2"], ["c.png", "Mass", "p3"]]
    for r in rows:
        _png(tmp_path / str(r[0]))
    manifest = _csv(
        tmp_path / "m.csv",
        ["path", "labels", "patient"],
        [
            [
                *r[:2],
                r[2],
            ]
            for r in rows
        ],
    )
    splits = load_source(str(manifest), val_fraction=0.34, seed=0)
    assert splits.classes == ["Effusion", "Mass"]
    everything = {
        Path(p).name: tuple(row) for s in (splits.train, splits.val) for p, row in zip(s.items, s.labels, strict=True)
    }
    assert everything == {"a.png": (1.0, 1.0), "b.png": (0.0, 0.0), "c.png": (0.0, 1.0)}


def test_zero_one_columns_are_found_or_named(tmp_path: Path):
    rows = [[f"{i}.png", i % 2, 1 - i % 2, "F" if i % 3 else "M", f"p{i}"] for i in range(6)]
    manifest = _csv(tmp_path / "m.csv", ["path", "Edema", "Nodule", "sex", "patient"], rows)
    found = load_source(str(manifest), val_fraction=0.34, seed=0)
    assert found.classes == ["Edema", "Nodule"]  # 'sex' holds letters, 'patient' is the patient column
    named = load_source(str(manifest), val_fraction=0.34, seed=0, labels=LabelSpec(columns=("Nodule",)))
    assert named.classes == ["Nodule"]
    assert named.train.labels.shape[1] == 1
    with pytest.raises(DataError, match=r"data\.label_columns names columns the manifest lacks"):
        load_source(str(manifest), labels=LabelSpec(columns=("Hernia",)))


def _chexpert(tmp_path: Path) -> Path:
    root = tmp_path / "CheXpert-v1.0-small"
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "Edema", "Pleural Effusion"]
    rows = []
    for i in range(8):
        rel = f"CheXpert-v1.0-small/train/patient{i // 2:05d}/study1/view{i % 2 + 1}_frontal.jpg"
        _png(tmp_path / rel)
        edema = ["1.0", "-1.0", "", "0.0"][i % 4]
        rows.append([rel, "Female", 50, "Frontal", "AP", edema, "1.0" if i < 4 else ""])
    root.mkdir(exist_ok=True)
    return _csv(root / "train.csv", header, rows)


@pytest.mark.parametrize(("policy", "expected"), [("ones", 1.0), ("zeros", 0.0), ("ignore", np.nan)])
def test_chexpert_uncertain_labels_follow_the_policy(tmp_path: Path, policy: str, expected: float):
    manifest = _chexpert(tmp_path)
    splits = load_source(str(manifest), val_fraction=0.25, seed=0, labels=LabelSpec(uncertain=policy))
    assert splits.classes == ["Edema", "Pleural Effusion"]
    values = {}
    for s in (splits.train, splits.val):
        for path, row in zip(s.items, s.labels, strict=True):
            values[str(path).split("train/")[1]] = row
    assert values["patient00000/study1/view1_frontal.jpg"][0] == 1.0
    uncertain = values["patient00000/study1/view2_frontal.jpg"][0]
    assert np.isnan(uncertain) if np.isnan(expected) else uncertain == expected
    assert values["patient00001/study1/view1_frontal.jpg"][0] == 0.0  # blank: not mentioned, absent
    assert values["patient00002/study1/view1_frontal.jpg"][1] == 0.0
    assert all(Path(p).exists() for p in splits.train.items)  # paths resolved from the folder above the CSV
    assert set(splits.train.patients) & set(splits.val.patients) == set()


def test_nih_layout_reads_findings_patients_and_the_images_folder(tmp_path: Path):
    names = [f"{i:08d}_000.png" for i in range(10)]
    for n in names:
        _png(tmp_path / "images" / n)
    findings = ["Cardiomegaly", "No Finding", "Effusion|Infiltration", "No Finding", "Cardiomegaly|Effusion"] * 2
    rows = [[n, f, i // 3, 50, "M" if i % 2 else "F"] for i, (n, f) in enumerate(zip(names, findings, strict=True))]
    header = ["Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender"]
    manifest = _csv(tmp_path / "Data_Entry_2017.csv", header, rows)
    splits = load_source(str(manifest), val_fraction=0.3, seed=1, group_column="Patient Gender")
    assert splits.classes == ["Cardiomegaly", "Effusion", "Infiltration"]
    assert "NIH ChestX-ray14" in splits.description
    assert splits.split["method"] == "patient-disjoint"
    assert not set(splits.train.patients) & set(splits.val.patients)
    assert all(Path(p).parent.name == "images" and Path(p).exists() for p in splits.train.items)
    assert set(splits.train.groups) <= {"M", "F"}


def test_a_given_split_that_shares_a_patient_is_refused(tmp_path: Path):
    rows = [["a.png", "x", "train", "p1"], ["b.png", "y", "val", "p1"], ["c.png", "y", "train", "p2"]]
    manifest = _csv(tmp_path / "m.csv", ["path", "label", "split", "patient"], rows)
    with pytest.raises(DataError, match=r"1 patients have images in both train and val \(e\.g\. p1\)"):
        load_source(str(manifest))


def test_patient_split_keeps_patients_whole_and_is_seeded():
    rng = np.random.default_rng(0)
    patients = [f"p{int(i)}" for i in rng.integers(0, 80, size=400)]
    train, val = patient_split(patients, 0.2, seed=5)
    assert not {patients[i] for i in train} & {patients[i] for i in val}
    assert len(train) + len(val) == 400
    assert 0.17 <= len(val) / 400 <= 0.3
    again = patient_split(patients, 0.2, seed=5)
    assert np.array_equal(again[1], val)
    assert not np.array_equal(patient_split(patients, 0.2, seed=6)[1], val)
    with pytest.raises(DataError, match="at least two patients"):
        patient_split(["p"] * 5, 0.2, 0)


def test_medmnist_files_read_directly(tmp_path: Path):
    rng = np.random.default_rng(0)
    chest = {
        f"{s}_images": rng.integers(0, 255, size=(n, 28, 28), dtype=np.uint8) for s, n in (("train", 20), ("val", 6))
    }
    chest |= {f"{s}_labels": rng.integers(0, 2, size=(n, 14)) for s, n in (("train", 20), ("val", 6))}
    chest |= {"test_images": chest["val_images"], "test_labels": chest["val_labels"]}
    np.savez(tmp_path / "chestmnist.npz", **chest)
    splits = load_source(str(tmp_path / "chestmnist.npz"))
    assert splits.multilabel and splits.classes[:3] == ["atelectasis", "cardiomegaly", "effusion"]
    assert splits.train.items.shape == (20, 28, 28, 3)  # grayscale replicated to RGB
    assert np.array_equal(splits.val.labels, chest["val_labels"].astype(np.float32))
    pneumonia = {"train_images": chest["train_images"], "train_labels": rng.integers(0, 2, size=(20, 1))}
    pneumonia |= {"val_images": chest["val_images"], "val_labels": rng.integers(0, 2, size=(6, 1))}
    np.savez(tmp_path / "pneumoniamnist_64.npz", **pneumonia)
    binary = load_source(str(tmp_path / "pneumoniamnist_64.npz"))
    assert not binary.multilabel and binary.classes == ["normal", "pneumonia"]
    assert np.array_equal(binary.train.labels, pneumonia["train_labels"].reshape(-1))


def test_builtin_xray_has_its_prevalences_patients_and_sites():
    made = make_xray(3000, size=32, seed=3)
    observed = made.labels.mean(axis=0)
    for name, share in zip(XRAY_FINDINGS, observed, strict=True):
        low = PREVALENCE[name] * 0.6
        assert low < share < PREVALENCE[name] * 1.6 + 0.03, name
    assert observed[XRAY_FINDINGS.index("Mass")] < 0.06  # a rare finding
    assert 3000 / len(set(made.patients)) > 2  # several images per patient
    by_patient: dict[str, set[tuple[float, ...]]] = {}
    for p, row in zip(made.patients, made.labels, strict=True):
        by_patient.setdefault(p, set()).add(tuple(row))
    assert all(len(rows) == 1 for rows in by_patient.values())  # a patient's findings stay with their images
    splits = load_source("builtin:xray", synthetic_sizes=(300, 100), img_size=32, seed=0)
    assert not set(splits.train.patients) & set(splits.val.patients)
    assert set(splits.val.groups) == {"site-A", "site-B"}


def test_data_classes_keeps_the_named_labels_in_order():
    splits = load_source("builtin:xray", synthetic_sizes=(300, 100), img_size=32, seed=0)
    kept, _ = screen_data(splits, DataConfig(classes=["Nodule", "Cardiomegaly"]))
    assert kept.classes == ["Nodule", "Cardiomegaly"]
    assert np.array_equal(kept.train.labels[:, 1], splits.train.labels[:, XRAY_FINDINGS.index("Cardiomegaly")])
    with pytest.raises(DataError, match="does not have"):
        screen_data(splits, DataConfig(classes=["Hernia"]))


def test_a_numeric_group_column_becomes_age_bands():
    from vitkit.data.sources import numeric_bands

    ages = [str(a) for a in range(5, 95, 3)]
    assert numeric_bands(ages)[:3] == ["0-19", "0-19", "0-19"]
    assert set(numeric_bands(ages)) == {"0-19", "20-39", "40-59", "60-79", "80+"}
    assert numeric_bands(["1", "2", "1"]) == ["1", "2", "1"]  # a few codes stay codes
    assert numeric_bands(["F", "M"]) == ["F", "M"]
