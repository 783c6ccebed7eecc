"""`vitkit bench`: one table across runtimes for the same model: eager fp32 and bf16, torch.compile, ONNX Runtime
fp32 and INT8 (dynamic, static). Per runtime: latency at batch 1 (p50/p95/p99, warm-up excluded), img/s per batch
size, peak memory while it ran, file size and validation top-1."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from vitkit.config.schema import Recipe
from vitkit.deploy.export import MODEL_JSON, ExportOptions, add_int8, export_run, read_model_json
from vitkit.deploy.formats import Logits, OrtModel, run_batched
from vitkit.deploy.parity import top1
from vitkit.deploy.pixels import first_images, pixel_batches, run_splits, stacked
from vitkit.errors import VitkitError
from vitkit.models.run_model import load_run_or_checkpoint
from vitkit.precision import cpu_has_native_bf16, cpu_has_vnni

Call = Callable[[np.ndarray], np.ndarray]


@dataclass
class Row:
    runtime: str
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p95, p99 at batch 1
    images_per_s: dict[int, float] = field(default_factory=dict)  # by batch size
    peak_memory_mb: float = float("nan")  # resident memory the runtime added while it ran (CPU process)
    file_mb: float | None = None
    val_top1: float = float("nan")
    note: str = ""


def time_calls(call: Call, x: np.ndarray, repeats: int, warmup: int) -> list[float]:
    """Seconds per call on `x`, `repeats` times after `warmup` untimed calls."""
    for _ in range(warmup):
        call(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(x)
        times.append(time.perf_counter() - start)
    return times


@contextmanager
def peak_rss() -> Iterator[list[float]]:
    """The largest resident-memory growth of this process over the body, in MiB (sampled every 2 ms)."""
    process, result, done = psutil.Process(), [0.0], threading.Event()
    base = process.memory_info().rss

    def sample() -> None:
        while not done.is_set():
            result[0] = max(result[0], (process.memory_info().rss - base) / 2**20)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()


def measure(name: str, call: Call, pixels: np.ndarray, labels: np.ndarray, batches: list[int], repeats: int) -> Row:
    row = Row(name)
    with peak_rss() as peak:
        latency = np.asarray(time_calls(call, pixels[:1], repeats, warmup=max(3, repeats // 10))) * 1000
        row.latency_ms = {f"p{q}": float(np.percentile(latency, q)) for q in (50, 95, 99)}
        for batch in batches:
            x = np.resize(pixels, (batch, *pixels.shape[1:]))  # repeats the images when the set is smaller
            times = time_calls(call, x, max(3, repeats // 10), warmup=1)
            row.images_per_s[batch] = batch / float(np.median(times))
        row.val_top1 = top1(run_batched(call, pixels), labels)
    row.peak_memory_mb = peak[0]
    return row


def _torch_call(module: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype | None = None) -> Call:
    def call(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            return module(torch.from_numpy(x)).float().numpy()

    return call


def benchmark(
    target: Path,
    batches: list[int],
    repeats: int = 50,
    val_images: int = 1000,
    int8: bool = True,
    compile: bool = True,
) -> dict[str, Any]:
    """The table for a run folder (exported on the fly, INT8 both ways) or an export folder (what it holds)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = target if (target / MODEL_JSON).exists() else _export_for_bench(target, Path(tmp), int8)
        doc = read_model_json(folder)
        recipe = Recipe.model_validate(doc["recipe"])
        _, val = run_splits(recipe)
        pixels, labels = stacked(pixel_batches(recipe, first_images(val, val_images)))
        rows = [measure(name, call, pixels, labels, batches, repeats) for name, call in _runtimes(folder, doc, compile)]
        sizes = _files(folder, doc)
        for row in rows:
            row.file_mb = sizes.get(row.runtime)
        _flag(rows)
    return {
        "model": doc["model"],
        "img_size": doc["img_size"],
        "validation_images": len(labels),
        "threads": torch.get_num_threads(),
        "vnni": cpu_has_vnni(),
        "rows": [asdict(r) for r in rows],
    }


def _export_for_bench(run: Path, tmp: Path, int8: bool) -> Path:
    """The run's ONNX export, with INT8 dynamic and static beside it (limit lifted: the table shows the drop)."""
    folder = tmp / "export"
    lifted = ExportOptions(max_int8_drop=1.0)
    doc = export_run(run, folder, lifted)
    if int8:
        recipe = Recipe.model_validate(doc["recipe"])
        train, val = run_splits(recipe)
        calibration = first_images(train, lifted.calibration)
        for mode in ("dynamic", "static"):
            add_int8(folder / doc["file"], folder / f"model.int8-{mode}.onnx", mode, recipe, calibration, val, lifted)
    return folder


def _runtimes(folder: Path, doc: dict[str, Any], compile: bool) -> Iterator[tuple[str, Call]]:
    checkpoint = Path(doc["weights"]["checkpoint"])
    if checkpoint.exists():  # eager rows need the checkpoint the export came from
        model, _, _ = load_run_or_checkpoint(checkpoint)
        module = Logits(model)
        yield "eager fp32", _torch_call(module)
        if cpu_has_native_bf16():  # emulated bf16 is ~100x slower: not worth a row
            yield "eager bf16", _torch_call(module, torch.bfloat16)
        if compile:
            yield "torch.compile fp32", _torch_call(torch.compile(module))
    for name, file in _onnx_files(folder, doc).items():
        yield name, OrtModel(folder / file)


def _onnx_files(folder: Path, doc: dict[str, Any]) -> dict[str, str]:
    files = {"ORT fp32": doc["file"]} if doc["format"] == "onnx" else {}
    for mode in ("dynamic", "static"):
        if (folder / f"model.int8-{mode}.onnx").exists():
            files[f"ORT INT8 {mode}"] = f"model.int8-{mode}.onnx"
    if "int8" in doc and (folder / doc["int8"]["file"]).exists():
        files[f"ORT INT8 {doc['int8']['mode']}"] = doc["int8"]["file"]
    return files


def _files(folder: Path, doc: dict[str, Any]) -> dict[str, float]:
    return {name: (folder / file).stat().st_size / 2**20 for name, file in _onnx_files(folder, doc).items()}


def _flag(rows: list[Row]) -> None:
    """Say where a row is not what one would expect, instead of hiding it."""
    fp32 = next((r for r in rows if r.runtime == "ORT fp32"), None)
    for row in rows:
        if row.runtime.startswith("ORT INT8") and fp32 is not None and row.latency_ms["p50"] > fp32.latency_ms["p50"]:
            why = "" if cpu_has_vnni() else " (this CPU has no VNNI int8 instructions)"
            row.note = f"slower than ORT fp32 at batch 1{why}"
    if not any(r.runtime == "eager bf16" for r in rows) and any(r.runtime == "eager fp32" for r in rows):
        rows[0].note = rows[0].note or "no bf16 row: this CPU emulates bf16 (about 100x slower), so it is not timed"


def parse_batches(text: str) -> list[int]:
    try:
        batches = [int(b) for b in text.split(",") if b.strip()]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise VitkitError(f"--batch {text}: give batch sizes as positive integers separated by commas, e.g. 1,8,32,64.")
    return batches
