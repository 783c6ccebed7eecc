"""Results written again over earlier ones are written whole or not at all (vitkit.files.write_atomically)."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from vitkit.files import write_atomically


def file_size_limit(limit: int) -> Callable[[], None]:
    """For a child process: no file may grow past `limit` bytes, so a longer write fails (EFBIG) part-way, the way a
    full disk fails it."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of the process being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return apply


def test_a_write_cut_short_by_the_system_keeps_the_earlier_file_and_leaves_nothing(tmp_path: Path):
    path = tmp_path / "metrics.json"
    path.write_text("earlier\n" * 10)
    code = (
        "import sys; from pathlib import Path; from vitkit.files import write_atomically\n"
        "try:\n"
        f"    write_atomically(Path({str(path)!r}), 'later\\n' * 1000)\n"
        "except OSError as e:\n"
        "    print(e.errno, e.filename)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, preexec_fn=file_size_limit(200)
    )
    assert result.returncode == 0, result.stderr
    import errno

    assert result.stdout.split() == [str(errno.EFBIG), str(path)]  # the file asked for, not the hidden one
    assert path.read_text() == "earlier\n" * 10
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_an_error_while_writing_keeps_the_earlier_file(tmp_path: Path):
    path = tmp_path / "report.html"
    path.write_text("earlier")
    with pytest.raises(UnicodeEncodeError):
        write_atomically(path, "a lone surrogate \udc80 cannot be encoded")
    assert path.read_text() == "earlier"
    assert os.listdir(tmp_path) == ["report.html"]


def test_a_link_is_written_through_and_stays_a_link(tmp_path: Path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "predictions.csv"
    target.write_text("earlier")
    link = tmp_path / "predictions.csv"
    link.symlink_to(target)
    write_atomically(link, "later")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "later"
    assert sorted(os.listdir(tmp_path / "real")) == ["predictions.csv"]
