"""A bounded load test of `vitkit serve` on loopback: batching on against batch-1 serving.

    .venv/bin/python benchmarks/serve_load.py --part latency [--requests 300] [--levels 1,8,32]
    .venv/bin/python benchmarks/serve_load.py --part memory [--requests 10000]

The model is a ViT-Tiny (vit_tiny_patch16_224, 224 px) exported to ONNX. Each request is POST /predict with one
224 x 224 JPEG (scikit-image's astronaut), so the server decodes, preprocesses and classifies it. Clients are
threads of this process, each with its own keep-alive connection; they share the machine's cores with the server,
as any loopback test does.

latency: for each server mode (batch-1: --max-batch 1; batched: --max-batch 32 --max-wait-ms 5) and each
concurrency, `--requests` requests: img/s, p50/p95/p99 latency, errors.
memory: the batched server's resident memory (its own /metrics) before and after `--requests` requests at
concurrency 8.
ceiling: the exported model alone in ONNX Runtime, in this process, img/s at batch 1 and batch 32: how much
batching can gain at most when the forward pass is what costs.

Each result is appended to benchmarks/results/serve_load.jsonl as it ends.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "serve_load.jsonl"
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.serve.client import Server, multipart  # noqa: E402

MODES = {"batch-1": ["--max-batch", "1"], "batched": ["--max-batch", "32", "--max-wait-ms", "5"]}


def append(record: dict) -> None:
    record = {"date": str(date.today()), "cpu": platform.processor() or platform.machine(), **record}
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def make_export(folder: Path) -> Path:
    from rich.console import Console

    from vitkit.config import load_recipe
    from vitkit.deploy.export import export_run
    from vitkit.train.loop import train

    overrides = [
        "model.name=vit_tiny_patch16_224",
        "model.img_size=224",
        "model.patch_size=16",
        "model.embed_dim=192",
        "model.depth=12",
        "model.num_heads=3",
        "data.source=builtin:shapes",
        "data.synthetic_train_size=64",
        "data.synthetic_val_size=64",
        "train.batch_size=32",
        "train.max_updates=1",
        "train.precision=fp32",
        "schedule.epochs=1",
        "schedule.warmup_epochs=0",
    ]
    train(load_recipe("quickstart", overrides), folder / "run", console=Console(quiet=True), evaluate=False)
    export_run(folder / "run", folder / "export")
    return folder / "export"


def photo_jpeg() -> bytes:
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).resize((224, 224)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def load(server: Server, concurrency: int, requests: int, image: bytes) -> dict:
    """`requests` POST /predict spread over `concurrency` threads; img/s and latency percentiles."""
    body, content_type = multipart([("astronaut.jpg", image)])
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker() -> None:
        nonlocal errors
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        while True:
            with lock:
                if next(counter, None) is None:
                    break
            start = time.perf_counter()
            try:
                connection.request("POST", "/predict", body=body, headers={"Content-Type": content_type})
                reply = connection.getresponse()
                reply.read()
                ok = reply.status == 200
            except OSError:
                ok = False
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
            with lock:
                latencies.append(time.perf_counter() - start)
                errors += not ok

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "img_per_s": round(requests / wall, 2),
        "p50_ms": round(q[49] * 1000, 1),
        "p95_ms": round(q[94] * 1000, 1),
        "p99_ms": round(q[98] * 1000, 1),
        "errors": errors,
    }


def ceiling(export: Path, seconds: float = 20.0) -> dict:
    import numpy as np

    from vitkit.deploy.formats import OrtModel

    model = OrtModel(export / "model.onnx")
    result = {}
    for batch in (1, 32):
        pixels = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        model(pixels)  # warm-up
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            model(pixels)
            done += batch
        result[f"model_img_per_s_batch{batch}"] = round(done / (time.perf_counter() - start), 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["latency", "memory", "ceiling"], required=True)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--levels", default="1,8,32")
    args = parser.parse_args()
    image = photo_jpeg()
    with tempfile.TemporaryDirectory() as tmp:
        export = make_export(Path(tmp))
        if args.part == "ceiling":
            append({"part": "ceiling", **ceiling(export)})
        elif args.part == "latency":
            for level in (int(x) for x in args.levels.split(",")):
                for mode, flags in MODES.items():
                    server = Server(str(export), *flags)
                    try:
                        load(server, level, min(20, args.requests), image)  # warm-up
                        append({"part": "latency", "mode": mode, **load(server, level, args.requests, image)})
                    finally:
                        server.close()
        else:
            server = Server(str(export), *MODES["batched"])
            try:
                load(server, 8, 200, image)  # warm-up: allocator pools and caches fill first
                before = server.metric("process_resident_memory_bytes")
                result = load(server, 8, args.requests, image)
                after = server.metric("process_resident_memory_bytes")
                growth = round(100 * (after - before) / before, 2)
                append(
                    {
                        "part": "memory",
                        "rss_before_mb": round(before / 2**20, 1),
                        "rss_after_mb": round(after / 2**20, 1),
                        "rss_growth_pct": growth,
                        **result,
                    }
                )
            finally:
                server.close()


if __name__ == "__main__":
    main()
