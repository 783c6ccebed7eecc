"""Writing a file whole or not at all.

vitkit writes its results again over its own earlier ones (predictions, metrics.json, report.html, a calibrated
temperature, the trimmed metrics.jsonl of a resumed run). Written in place, a write that fails half-way (a full
disk, a killed process) would leave half a file where a whole one was; written here, the earlier file stays.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def write_atomically(path: Path, text: str, *, newline: str | None = None) -> None:
    """Write `text` to `path` through a hidden file beside it, renamed over `path` once complete: a reader sees the
    old file or the new one, and a failed write keeps the old one and leaves nothing else behind. A symbolic link
    is written through, as `open` would, not replaced."""
    target = Path(os.path.realpath(path))
    # one name per process, also across machines sharing the folder (tune's processes write best.yaml)
    partial = target.with_name(f".{target.name}.{socket.gethostname()}-{os.getpid()}.partial")
    try:
        with partial.open("w", encoding="utf-8", newline=newline) as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())  # complete on disk before it takes the old file's place
        os.replace(partial, target)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from error  # name the file asked for, not the hidden one
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
