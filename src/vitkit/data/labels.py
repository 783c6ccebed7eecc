"""Multi-label manifests: what each image shows, read from the layouts medical datasets come in.

A multi-label set keeps its labels as a float32 (N, C) array: 1 for a finding present, 0 for absent and NaN for
"not known" (a CheXpert uncertain label under the `ignore` policy). NaN survives label smoothing and Mixup (any
mix with an unknown is unknown), and the loss and the metrics leave those entries out.

Layouts read directly:
- a `labels` column of findings separated by `|` (`Effusion|Mass`; empty or `No Finding` is none), the NIH
  ChestX-ray14 `Data_Entry_2017.csv` (`Image Index`, `Finding Labels`, `Patient ID`),
- one 0/1 column per finding (named by data.label_columns, or every column holding only 0, 1, -1 or blanks),
- the CheXpert `train.csv`/`valid.csv` (`Path` plus 14 observation columns of 1, 0, -1 or blank; the patient is
  the `patientNNNNN` part of the path).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vitkit.errors import DataError

NO_FINDING = "No Finding"
PATIENT_COLUMNS = ("patient", "patient_id", "Patient ID", "PatientID")
# columns a manifest may have that are never findings
META_COLUMNS = {"path", "label", "labels", "split", "group", *PATIENT_COLUMNS}
CHEXPERT_META = {"Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"}
UNCERTAIN_POLICIES = ("ones", "zeros", "ignore")


@dataclass(frozen=True)
class LabelSpec:
    """How a manifest's labels are read (the recipe's data.label_columns, data.uncertain_labels and
    data.patient_column)."""

    columns: tuple[str, ...] | None = None  # 0/1 finding columns; None: found
    uncertain: str = "ignore"  # CheXpert -1: ones (U-Ones), zeros (U-Zeros) or ignore (left out of loss/metrics)
    patient_column: str | None = None  # None: patient, patient_id or Patient ID when there is one


@dataclass
class ManifestTable:
    """What a manifest's rows say: one path, one label row and (maybe) one patient per image."""

    paths: list[Path]
    labels: np.ndarray  # (N,) class indices, or (N, C) float32 with NaN for unknown
    classes: list[str]
    patients: list[str] | None
    layout: str


def split_findings(value: str, sep: str = "|") -> list[str]:
    """`Effusion|Mass` -> [Effusion, Mass]; empty and `No Finding` -> []."""
    names = [v.strip() for v in value.split(sep)]
    return [n for n in names if n and n != NO_FINDING]


def findings_matrix(rows: list[list[str]], classes: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """A (N, C) 0/1 float32 matrix from each row's list of findings; classes sorted unless given."""
    classes = classes or sorted({name for row in rows for name in row})
    index = {name: i for i, name in enumerate(classes)}
    matrix = np.zeros((len(rows), len(classes)), dtype=np.float32)
    for r, names in enumerate(rows):
        for name in names:
            if name in index:
                matrix[r, index[name]] = 1.0
    return matrix, classes


def uncertain_value(policy: str) -> float:
    """What a CheXpert -1 ("uncertain") becomes: 1, 0 or NaN (left out)."""
    if policy not in UNCERTAIN_POLICIES:
        raise DataError(f"data.uncertain_labels={policy!r}: use one of {', '.join(UNCERTAIN_POLICIES)}.")
    return {"ones": 1.0, "zeros": 0.0, "ignore": float("nan")}[policy]


def column_value(text: str, uncertain: float, where: str) -> float:
    """A 0/1 finding column's cell: 1, 0, -1 (uncertain, per policy) or blank (not mentioned: absent)."""
    text = text.strip()
    if text == "":
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = 0.5  # not a number: refused below with the same message
    if value == -1.0:
        return uncertain
    if value not in (0.0, 1.0):
        raise DataError(f"{where}: {text!r} is not a finding value; use 1, 0, -1 (uncertain) or leave it blank.")
    return value


def _is_flag_column(rows: list[dict[str, str]], name: str) -> bool:
    return all(r.get(name, "").strip() in {"", "0", "1", "-1", "0.0", "1.0", "-1.0"} for r in rows)


def flag_columns(rows: list[dict[str, str]], columns: list[str], spec: LabelSpec, meta: set[str]) -> list[str]:
    """The finding columns: the ones named, or every non-meta column holding only 0/1/-1/blank."""
    if spec.columns:
        missing = [c for c in spec.columns if c not in columns]
        if missing:
            raise DataError(f"data.label_columns names columns the manifest lacks: {missing} (it has {columns}).")
        return list(spec.columns)
    return [c for c in columns if c not in meta and _is_flag_column(rows, c)]


def patient_column(columns: list[str], spec: LabelSpec) -> str | None:
    if spec.patient_column is not None:
        if spec.patient_column not in columns:
            raise DataError(f"data.patient_column={spec.patient_column!r} is not a manifest column ({columns}).")
        return spec.patient_column
    return next((c for c in PATIENT_COLUMNS if c in columns), None)


def _resolve(csv_path: Path, name: str, folders: tuple[str, ...] = ("",)) -> Path:
    """A manifest path: absolute, or relative to the CSV's folder (or one of `folders` in it, or its parent: the
    CheXpert CSV lists paths from the folder above it). The first that exists wins; else the first candidate."""
    path = Path(name)
    if path.is_absolute():
        return path
    candidates = [csv_path.parent / f / name for f in folders] + [csv_path.parent.parent / name]
    return next((c for c in candidates if c.exists()), candidates[0])


def read_table(
    csv_path: Path, rows: list[dict[str, str]], columns: list[str], spec: LabelSpec, lines: list[int] | None = None
) -> ManifestTable:
    """Paths, labels, classes and patients of a manifest in any of the layouts above; `lines` (each row's line in
    the file) names the rows a message is about."""
    if "Image Index" in columns and "Finding Labels" in columns:  # NIH ChestX-ray14
        paths = [_resolve(csv_path, r["Image Index"], ("images", "")) for r in rows]
        labels, classes = findings_matrix([split_findings(r["Finding Labels"]) for r in rows])
        return ManifestTable(paths, labels, classes, [r["Patient ID"] for r in rows], "NIH ChestX-ray14")
    if "Path" in columns and "path" not in columns:  # CheXpert
        return _chexpert(csv_path, rows, columns, spec)
    if "path" not in columns:
        raise DataError(
            f"{csv_path}: a manifest needs a 'path' column and labels: 'label' (one class), 'labels' (findings "
            f"separated by |) or one 0/1 column per finding (found columns: {sorted(columns)})."
        )
    _refuse_empty(csv_path, rows, "path", "a path", lines)
    paths = [_resolve(csv_path, r["path"]) for r in rows]
    patient = patient_column(columns, spec)
    patients = [r[patient] for r in rows] if patient else None
    if "label" in columns and "labels" not in columns and not spec.columns:
        _refuse_empty(csv_path, rows, "label", "a label", lines)
        classes = sorted({r["label"] for r in rows})
        index = {c: i for i, c in enumerate(classes)}
        labels = np.asarray([index[r["label"]] for r in rows], dtype=np.int64)
        return ManifestTable(paths, labels, classes, patients, "manifest")
    if "labels" in columns and not spec.columns:
        labels, classes = findings_matrix([split_findings(r["labels"]) for r in rows])
        return ManifestTable(paths, labels, classes, patients, "multi-label manifest")
    names = flag_columns(rows, columns, spec, META_COLUMNS | ({patient} if patient else set()))
    if not names:
        raise DataError(
            f"{csv_path}: no label column. Give 'label' (one class per image), 'labels' (findings separated by |) "
            "or one 0/1 column per finding (data.label_columns names them)."
        )
    return ManifestTable(paths, _flag_matrix(csv_path, rows, names, spec), names, patients, "0/1 finding columns")


def _refuse_empty(
    csv_path: Path, rows: list[dict[str, str]], column: str, what: str, lines: list[int] | None = None
) -> None:
    """Rows without `what` are named by their line in the file (the header is line 1), not guessed at."""
    numbers = lines or [i + 2 for i in range(len(rows))]
    empty = [n for n, r in zip(numbers, rows, strict=True) if not (r.get(column) or "").strip()]
    if empty:
        more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
        raise DataError(
            f"{csv_path}: lines {empty[:10]}{more} have no {column!r}. Give each row {what}, or remove those rows."
        )


def _flag_matrix(csv_path: Path, rows: list[dict[str, str]], names: list[str], spec: LabelSpec) -> np.ndarray:
    unknown = uncertain_value(spec.uncertain)
    cells = [
        [column_value(r.get(n, ""), unknown, f"{csv_path} row {i + 2}, {n}") for n in names] for i, r in enumerate(rows)
    ]
    return np.asarray(cells, dtype=np.float32)


_CHEXPERT_PATIENT = re.compile(r"(patient\d+)")


def _chexpert(csv_path: Path, rows: list[dict[str, str]], columns: list[str], spec: LabelSpec) -> ManifestTable:
    names = flag_columns(rows, columns, spec, CHEXPERT_META)
    if not names:
        raise DataError(f"{csv_path}: a CheXpert-style CSV ('Path' column) needs observation columns of 1/0/-1.")
    patients = []
    for r in rows:
        found = _CHEXPERT_PATIENT.search(r["Path"])
        patients.append(found.group(1) if found else r["Path"])
    paths = [_resolve(csv_path, r["Path"]) for r in rows]
    layout = f"CheXpert (uncertain labels: {spec.uncertain})"
    return ManifestTable(paths, _flag_matrix(csv_path, rows, names, spec), names, patients, layout)


def keep_labels(labels: np.ndarray, classes: list[str], wanted: list[str], where: str) -> np.ndarray:
    """The columns of a multi-label matrix named by `wanted` (data.classes), in its order."""
    missing = [c for c in wanted if c not in classes]
    if missing:
        raise DataError(f"data.classes names labels {missing} that {where} does not have; its labels: {classes}.")
    return labels[:, [classes.index(c) for c in wanted]]
