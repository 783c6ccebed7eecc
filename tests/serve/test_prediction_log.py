"""The prediction log never writes into what is not its own: a user's file, a folder, a path it cannot write."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitkit.errors import VitkitError
from vitkit.serve.log import PredictionLog, read_log


def test_a_log_appends_records_and_reopens_its_own_file(tmp_path: Path):
    log = PredictionLog(tmp_path / "logs" / "predictions.jsonl")
    log.write({"kind": "prediction", "version": "1"})
    log.close()
    again = PredictionLog(tmp_path / "logs" / "predictions.jsonl")
    again.write({"kind": "feedback", "label": "cat"})
    again.close()
    assert [r["kind"] for r in read_log(tmp_path / "logs" / "predictions.jsonl")] == ["prediction", "feedback"]


def test_a_users_file_a_folder_and_an_unwritable_path_are_refused_and_left_as_they_were(tmp_path: Path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    with pytest.raises(VitkitError, match="is a file vitkit did not write; it is left alone"):
        PredictionLog(notes)
    assert notes.read_text() == "my notes\n"
    with pytest.raises(VitkitError, match=r"is a folder; name a file in it, e\.g\. --log .*predictions\.jsonl"):
        PredictionLog(tmp_path)
    with pytest.raises(VitkitError, match=r"notes\.txt/predictions\.jsonl: cannot write it"):
        PredictionLog(notes / "predictions.jsonl")  # its parent is a file
    assert notes.read_text() == "my notes\n"
