"""The prediction log never writes into what is not its own: a user's file, a folder, a path it cannot write."""

from __future__ import annotations

from pathlib import Path

import pytest

from vitkit.errors import VitkitError
from vitkit.serve.log import PredictionLog, load_log, read_log


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


def test_compare_and_monitor_name_a_file_that_is_not_a_prediction_log(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("my notes\n[1, 2]\n")
    (tmp_path / "program").write_bytes(b"\x7fELF\x02\x01\x01\x00\xd0\xff binary")
    with pytest.raises(VitkitError, match=r"notes\.txt is not a prediction log written by vitkit serve --log"):
        load_log(tmp_path / "notes.txt")
    with pytest.raises(VitkitError, match=r"program: not a prediction log \(invalid"):
        load_log(tmp_path / "program")
    with pytest.raises(VitkitError, match="no such file"):
        load_log(tmp_path / "missing.jsonl")
    with pytest.raises(VitkitError, match=r": a folder\. Give the file passed to vitkit serve --log"):
        load_log(tmp_path)
    with pytest.raises(VitkitError, match=r"/dev/null: not a regular file\."):
        load_log(Path("/dev/null"))
    log = PredictionLog(tmp_path / "predictions.jsonl")
    log.write({"kind": "prediction", "version": "1"})
    log.close()
    with (tmp_path / "predictions.jsonl").open("a") as fh:
        fh.write('7\n{"kind": "predic')  # a stray number, and a line cut short by a crash
    assert [r["kind"] for r in load_log(tmp_path / "predictions.jsonl")] == ["prediction", "damaged", "damaged"]
