"""The run folder's ownership rules: vitkit writes only into folders it may write, and replaces only its own runs.

A run folder is recognised by its marker file (`.vitkit-run`, written when the run is created) or, for runs made
before markers existed, by `recipe.yaml` next to `checkpoints/` or `metrics.jsonl`. `--overwrite` replaces such a
folder only when everything in it is something vitkit writes there; anything else (a notes file, a data folder)
makes vitkit refuse and name it. A replaced run is first moved aside and deleted only once the new run has started
training (every input read, the model built), so a new run that fails to start (unreadable data, a missing teacher)
gives the old one back; such a failed start also removes what it wrote, so the same command can simply be run again.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitkit import __version__
from vitkit.config.schema import Recipe
from vitkit.errors import VitkitError

MARKER = ".vitkit-run"
RUNNING = "running.json"  # written while a process trains the run: its pid and host

# Everything vitkit writes at the top of a run folder; anything else there belongs to the user.
RUN_ENTRIES = frozenset(
    {
        MARKER,
        "recipe.yaml",
        "metrics.jsonl",
        "timing.jsonl",
        "tensorboard",
        "checkpoints",
        "summary.json",
        "eval",
        "calibration.json",
        "bad_images.jsonl",
        "data_split.json",
        "thresholds.json",
        "merged",
        "mlruns",
        "wandb",
        RUNNING,
        ".write-test",
    }
)


def trained_by(run_dir: Path) -> str | None:
    """'pid N on HOST' when a live process is training the run in `run_dir` (its running.json), else None."""
    try:
        info = json.loads((run_dir / RUNNING).read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return None
    pid, host = int(info.get("pid", -1)), info.get("host")
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # it died without cleaning up: the run is stopped, not running
        except PermissionError:
            pass  # another user's live process
    return f"pid {pid} on {host}"


RUN_JSON_REWRITE = (
    "vitkit writes it again: `vitkit train --resume RUN` for summary.json (a finished run only evaluates again), "
    "`vitkit evaluate RUN --out RUN/eval` for eval/metrics.json."
)


def read_run_json(path: Path, rewrite: str = RUN_JSON_REWRITE) -> dict[str, Any] | None:
    """A JSON file vitkit wrote (summary.json, eval/metrics.json, an export's model.json): None when it is not there
    yet, a clear error when it is damaged (cut short by a full disk, or edited), with `rewrite`: how to write it
    again."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem = str(exc)
    else:
        if isinstance(data, dict):
            return data
        problem = f"it holds a {type(data).__name__}, not the mapping vitkit wrote"
    raise VitkitError(f"{path} is damaged ({problem}). {rewrite}")


def read_jsonl_records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file a run appends to (metrics.jsonl), leaving out a last line that a crash cut
    short: what was written before it is still the run's history."""
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def check_run_folder(run: Path) -> None:
    """Refuse a path that is not a run folder to read, saying whether it is missing, a file, or a folder without a
    recipe."""
    if not run.exists():
        raise VitkitError(f"{run}: no such folder. Pass the folder given to vitkit train --out.")
    if not run.is_dir():
        raise VitkitError(f"{run} is a file, not a run folder. Pass the folder given to vitkit train --out.")
    if not (run / "recipe.yaml").is_file():
        raise VitkitError(f"{run} is not a vitkit run folder (no recipe.yaml). Pass the folder given to --out.")


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` was made by `vitkit train` (its marker, or an older run's recipe with its outputs)."""
    if not folder.is_dir():
        return False
    if (folder / MARKER).is_file():
        return True
    return (folder / "recipe.yaml").is_file() and any((folder / n).exists() for n in ("checkpoints", "metrics.jsonl"))


def foreign_entries(folder: Path) -> list[str]:
    """The names in `folder` that vitkit does not write into a run folder, sorted."""
    return sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if p.name not in RUN_ENTRIES)


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def local_input_paths(values: Iterable[str | None]) -> list[Path]:
    """The inputs among `values` that are paths on this machine (data, recipe, weights, teacher), resolved.

    `hf:PATH` is the path PATH; timm names, `builtin:` and `torchvision:` sources are not local paths.
    """
    paths = []
    for value in values:
        if not value or value.startswith(("builtin:", "torchvision:", "hf-hub:", "timm:")):
            continue
        path = Path(value.removeprefix("hf:")).expanduser()
        if path.exists():
            paths.append(path.resolve())
    return paths


def recipe_input_paths(recipe: Recipe, extra: Iterable[str] = ()) -> list[Path]:
    """The local paths a run reads: its data, data root, pretrained weights, teacher, and `extra` (a recipe file)."""
    d, teacher = recipe.data, recipe.distill
    values = [d.source, d.root, recipe.finetune.pretrained, teacher.teacher, teacher.teacher_checkpoint, *extra]
    return local_input_paths(values)


def check_output_folder(out: Path, inputs: Iterable[Path] = ()) -> None:
    """Refuse an `--out` that is a file, a folder vitkit must never write a run into, or one that overlaps an input.

    Never: the current directory or any parent of it, the home directory, a filesystem root; nor a folder that
    contains an input (the data, the recipe, the weights) or lies inside an input folder.
    """
    if out.exists() and not out.is_dir():
        raise VitkitError(f"--out {out} is a file, not a folder. Name a folder for the run, e.g. --out runs/NAME.")
    target = out.expanduser().resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    if _within(cwd, target):
        what = "the current directory" if target == cwd else "a parent of the current directory"
        raise VitkitError(f"--out {out} is {what}; a run needs a folder of its own, e.g. --out runs/NAME.")
    if target == home or target.parent == target:
        what = "your home directory" if target == home else "a filesystem root"
        raise VitkitError(f"--out {out} is {what}; a run needs a folder of its own, e.g. --out runs/NAME.")
    for path in inputs:
        if _within(path, target):
            raise VitkitError(
                f"--out {out} contains the input {path}; vitkit will not write a run over its own inputs. Choose a "
                "folder of its own, e.g. --out runs/NAME."
            )
        if path.is_dir() and _within(target, path):
            raise VitkitError(
                f"--out {out} lies inside the input folder {path} (for image folders it would even become a class). "
                "Put runs outside the data, e.g. --out runs/NAME."
            )


@dataclass
class ClaimedFolder:
    """A run folder prepared for a new run, and the old run moved aside (if one was replaced)."""

    path: Path
    created: bool  # the folder did not exist before: vitkit made it
    replaced: Path | None = None
    begun: bool = False

    def started(self) -> None:
        """The new run has started training: the run it replaced can go."""
        self.begun = True
        if self.replaced is not None:
            shutil.rmtree(self.replaced, ignore_errors=True)
            self.replaced = None

    def abandon(self) -> None:
        """The new run failed before training started: remove what it wrote and put a replaced run back.

        Only a folder holding the marker this run wrote is touched: what vitkit removes is always its own.
        """
        if self.begun or not (self.path / MARKER).is_file():
            return
        if self.created or self.replaced is not None:
            shutil.rmtree(self.path, ignore_errors=True)  # made by this run alone (an old run is aside)
        else:  # a folder that was empty before: take out only what the run wrote
            for name in RUN_ENTRIES:
                entry = self.path / name
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                elif entry.exists():
                    entry.unlink()
        if self.replaced is not None:
            os.replace(self.replaced, self.path)
            self.replaced = None


def check_new_run_folder(out: Path, overwrite: bool, inputs: Iterable[Path] = ()) -> bool:
    """Whether a new run may go to `out` (raises with the reason when not), and whether it replaces a run there.

    Reads only: the command line calls it before loading anything heavy, so a refusal comes at once.
    """
    check_output_folder(out, inputs)
    if not out.exists() or not any(out.iterdir()):
        return False
    if not is_run_folder(out):
        shown = ", ".join(foreign_entries(out)[:5])
        raise VitkitError(
            f"--out {out} is a folder with other files in it ({shown}), not a vitkit run. vitkit never writes into or "
            "replaces such a folder, with or without --overwrite: choose a new folder, e.g. --out runs/NAME."
        )
    busy = trained_by(out)
    if busy is not None:
        raise VitkitError(
            f"--out {out} is being trained right now ({busy}); vitkit will not replace or join a run in progress. "
            "Stop that process first, or choose another --out."
        )
    if not overwrite:
        raise VitkitError(
            f"--out {out} already holds a vitkit run. Use --resume {out} to continue it, --overwrite to replace it, "
            "or another --out."
        )
    foreign = foreign_entries(out)
    exports = [name for name in foreign if (out / name / EXPORT_MARKER).is_file()]
    if exports:  # vitkit wrote them, but they may be deployed or pushed: the old run's models are not thrown away
        raise VitkitError(
            f"--out {out} holds exports of the run it would replace ({', '.join(exports[:5])}); --overwrite would "
            "delete them. Move them out of the folder first, or choose another --out."
        )
    if foreign:
        raise VitkitError(
            f"--out {out} is a vitkit run but also holds files vitkit did not write ({', '.join(foreign[:5])}); "
            "--overwrite would delete them. Move them out of the folder first, or choose another --out."
        )
    return True


def claim_run_folder(out: Path, overwrite: bool, inputs: Iterable[Path] = ()) -> ClaimedFolder:
    """Make `out` an empty run folder with its marker; with `overwrite`, move a previous run there aside.

    Raises before anything is touched when `check_new_run_folder` refuses `out`.
    """
    replaced, created = None, not out.exists()
    if check_new_run_folder(out, overwrite, inputs):
        replaced = out.parent / f".{out.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        os.replace(out, replaced)
        created = True
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text(json.dumps({"vitkit": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    except OSError as exc:
        if replaced is not None:
            os.replace(replaced, out)
        raise VitkitError(f"cannot write to the run folder {out} ({exc}). Choose a writable --out.") from exc
    return ClaimedFolder(out, created, replaced)


EXPORT_MARKER = ".vitkit-export"  # in a folder written by vitkit merge-lora: it may be written again


# the column between a vitkit predict row's classes and its error: a multi-label model's rows name its findings
FLAGS = ("low_confidence", "findings")


def _is_prediction_file(path: Path) -> bool:
    """A CSV or JSONL file `vitkit predict` wrote, told by its first line (its header, or its first row)."""
    try:
        with path.open(encoding="utf-8", errors="replace") as fh:
            first = fh.readline().strip()
    except OSError:
        return False
    if path.suffix == ".csv":
        return first.startswith("path,label_1,prob_1") and any(first.endswith(f",{flag},error") for flag in FLAGS)
    try:
        row = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(row, dict) and tuple(row) in {("path", "top", flag, "error") for flag in FLAGS}


def written_by_vitkit(path: Path) -> bool:
    """Whether an existing output file is one vitkit wrote (a metrics.json, a report or monitor page, a predictions
    CSV or JSONL), so rewriting it loses nothing of the user's."""
    if path.suffix in (".csv", ".jsonl"):
        return _is_prediction_file(path)
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    if path.suffix == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            return False
        return isinstance(doc, dict) and "vitkit" in doc
    if path.suffix == ".html":
        return '<meta name="generator" content="vitkit' in text or "Written by vitkit" in text
    return False


def check_output_files(*paths: Path) -> None:
    """Refuse to write over a file vitkit did not write, and make the folders the files go in (or say why they
    cannot be): checked before any work, so nothing is lost or wasted."""
    for path in paths:
        if path.is_dir():
            raise VitkitError(f"{path} is a folder; vitkit would write a file there. Choose another --out.")
        if path.exists() and not written_by_vitkit(path):
            raise VitkitError(
                f"{path} exists and was not written by vitkit, so it is left alone. Choose another --out (or move the "
                "file away)."
            )
        make_parent_folder(path)


def make_parent_folder(path: Path, option: str = "--out") -> None:
    """Make the folders an output file goes in, or say what stands in the way (a file where a folder should be, a
    folder that cannot be written), before the work that produces the file."""
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise VitkitError(f"{path}: {blocker} is a file, not a folder. Choose another {option}.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a read-only disk, no permission
        raise VitkitError(
            f"{path}: its folder {path.parent} cannot be made ({exc.strerror or exc}). Choose another {option}."
        ) from None
    if not os.access(path.parent, os.W_OK):
        raise VitkitError(f"{path}: its folder {path.parent} is not writable. Choose another {option}.")


def check_export_folder(out: Path) -> None:
    """An export goes into a new or empty folder, or over an earlier export of vitkit's (its marker file)."""
    if out.exists() and not out.is_dir():
        raise VitkitError(f"--out {out} is a file, not a folder. Name a folder for the exported model.")
    make_parent_folder(out)
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_MARKER).exists():
        if is_run_folder(out):
            raise VitkitError(
                f"--out {out} is a run folder; an export goes in a folder of its own, e.g. --out {out}-export."
            )
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in out.iterdir())
        raise VitkitError(
            f"--out {out} already holds files vitkit did not write ({', '.join(names[:5])}); they are left alone. "
            "Choose a new folder."
        )
