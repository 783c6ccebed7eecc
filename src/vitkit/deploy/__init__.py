"""Deployment: export a run's model (ONNX, torch.export), check it computes what the checkpoint computes, INT8."""

from __future__ import annotations

from vitkit.errors import VitkitError


def require_deploy() -> None:
    """ONNX export, checking and ONNX Runtime come with the `deploy` extra; say so when one is missing."""
    missing = []
    for module in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise VitkitError(
            f"exporting to ONNX needs {', '.join(missing)}, which vitkit[deploy] installs: pip install 'vitkit[deploy]'"
        )
