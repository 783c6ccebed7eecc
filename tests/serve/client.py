"""A real `vitkit serve` process on 127.0.0.1 and a small stdlib HTTP client for it (bounded waits only)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# Never through a proxy: an http_proxy in the environment (common on CI) would otherwise route 127.0.0.1 to it.
LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


class Server:
    """`python -m vitkit serve ARGS` on a free port; stopped by `close()`."""

    def __init__(self, *args: str, startup_seconds: float = 120, stop_seconds: float = 20) -> None:
        self.stop_seconds = stop_seconds
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "COLUMNS": "200"}
        command = [sys.executable, "-m", "vitkit", "serve", *args, "--port", str(self.port)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + startup_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.process.stdout.read().decode()}")  # type: ignore[union-attr]
            try:
                if self.get("/v2/health/ready").status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.close()
        raise RuntimeError(f"the server was not ready within {startup_seconds} s")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> Reply:
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with LOCAL.open(req, timeout=60) as r:
                return Reply(r.status, r.read(), dict(r.headers))
        except urllib.error.HTTPError as e:
            return Reply(e.code, e.read(), dict(e.headers))

    def get(self, path: str) -> Reply:
        return self.request("GET", path)

    def post_json(self, path: str, doc: Any) -> Reply:
        return self.request("POST", path, json.dumps(doc).encode(), {"Content-Type": "application/json"})

    def post_files(self, path: str, files: list[tuple[str, bytes]]) -> Reply:
        body, content_type = multipart(files)
        return self.request("POST", path, body, {"Content-Type": content_type})

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of /metrics (0 when it has not been recorded yet)."""
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.get("/metrics").body.decode().splitlines():
            if line.startswith("#") or " " not in line:
                continue
            sample, value = line.rsplit(" ", 1)
            metric, _, rest = sample.partition("{")
            got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
            if metric == name and got == wanted:
                return float(value)
        return 0.0

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=self.stop_seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()


def multipart(files: list[tuple[str, bytes]], field: str = "files") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        parts.append(head.encode() + b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def read_pngs(folder: Path) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted(folder.rglob("*.png"))]
