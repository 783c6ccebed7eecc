"""`vitkit serve`: exported models behind HTTP (the Open Inference / KServe v2 protocol and a plain /predict), with
micro-batching, Prometheus metrics and input limits. Needs the `serve` extra."""

from __future__ import annotations

import errno
import socket

from vitkit.errors import VitkitError

SERVE_MODULES = {
    "fastapi": "fastapi",
    "uvicorn": "uvicorn",
    "prometheus_client": "prometheus-client",
    "python_multipart": "python-multipart",
}


def require_serve() -> None:
    """Name the `serve` extra when one of its packages is missing."""
    missing = []
    for module, package in SERVE_MODULES.items():
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise VitkitError(
            f"vitkit serve needs {', '.join(missing)}, which vitkit[serve] installs: pip install 'vitkit[serve]'"
        )


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything says it serves: a taken port or an address this machine does not
    have is named with the fix, and --port 0 learns the port the system chose."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn chooses: localhost is 127.0.0.1
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: a port in TIME_WAIT is free
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        fix = (
            "Stop what uses the port, choose another --port, or --port 0 for any free one."
            if exc.errno == errno.EADDRINUSE
            else "Use an address of this machine for --host (127.0.0.1, or 0.0.0.0 for every one)."
        )
        raise VitkitError(f"cannot listen on {host}:{port}: {exc.strerror or exc}. {fix}") from None
    return sock
