"""The prediction log: one JSON line per answer a version gave (returned or shadow), and per label a client sent
back (POST /feedback). `vitkit compare` reads it to judge a candidate against the stable version."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from vitkit.errors import VitkitError


class PredictionLog:
    """Appends records to a JSONL file, one write per record, flushed, safe across threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.is_dir():
            raise VitkitError(f"--log {path} is a folder; name a file in it, e.g. --log {path / 'predictions.jsonl'}.")
        if path.exists() and path.stat().st_size and not _is_prediction_log(path):
            raise VitkitError(f"--log {path} is a file vitkit did not write; it is left alone. Name a new file.")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("a", encoding="utf-8")
        except OSError as exc:  # a parent that is a file, no permission, a read-only disk
            raise VitkitError(
                f"--log {path}: cannot write it ({exc.strerror or exc}). Name a file you can write."
            ) from None
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({"time": round(time.time(), 3), **record}) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


def _is_prediction_log(path: Path) -> bool:
    with path.open(encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    try:
        return "kind" in json.loads(first)
    except (json.JSONDecodeError, TypeError):
        return False


def read_log(path: Path) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            # a line cut off by a crash mid-write is the only damage an append-only log can take
            records.append(record if isinstance(record, dict) else {"kind": "damaged", "line": number})
    return records


def load_log(path: Path) -> list[dict[str, Any]]:
    """The records of the prediction log `vitkit compare` and `vitkit monitor` are given, or a message saying why
    the file is not one."""
    if not path.is_file():
        what = "a folder" if path.is_dir() else "not a regular file" if path.exists() else "no such file"
        raise VitkitError(f"{path}: {what}. Give the file passed to vitkit serve --log.")
    try:
        records = read_log(path)
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.reason if isinstance(exc, UnicodeDecodeError) else exc.strerror or str(exc)
        raise VitkitError(f"{path}: not a prediction log ({why}). Give the file passed to serve --log.") from None
    if not any(r.get("kind") not in (None, "damaged") for r in records):
        raise VitkitError(
            f"{path} is not a prediction log written by vitkit serve --log (no line of it is a record vitkit writes)."
        )
    return records
