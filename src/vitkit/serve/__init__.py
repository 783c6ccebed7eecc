"""`vitkit serve`: exported models behind HTTP (the Open Inference / KServe v2 protocol and a plain /predict), with
micro-batching, Prometheus metrics and input limits. Needs the `serve` extra."""

from __future__ import annotations

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
