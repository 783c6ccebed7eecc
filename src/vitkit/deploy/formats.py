"""Writing and running the two export formats: ONNX (checked with onnx.checker, run with ONNX Runtime) and .pt2
(torch.export, loaded with torch.export.load). Both take float32 NCHW normalised pixels and a batch of any size."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitkit.errors import VitkitError

ONNX_OPSET = 18
INPUT, OUTPUT = "pixels", "logits"


class Logits(nn.Module):
    """The model's eval-mode logits; a distilled DeiT averages its two heads, as evaluation does."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model(pixels)
        return out if isinstance(out, torch.Tensor) else torch.stack(list(out)).mean(0)


def example_pixels(img_size: int) -> torch.Tensor:
    # batch 2: torch.export specialises a dimension of size 1 to a constant, which would fix the batch at 1
    return torch.randn(2, 3, img_size, img_size)


def batch_dim() -> dict[int, Any]:
    return {0: torch.export.Dim("batch", min=1, max=65536)}


def write_onnx(model: nn.Module, path: Path, img_size: int) -> int:
    """Export through torch.export (dynamo) with a dynamic batch axis; full onnx.checker check. Returns the opset."""
    import onnx

    with torch.no_grad():
        torch.onnx.export(
            Logits(model).eval(),
            (example_pixels(img_size),),
            str(path),
            dynamo=True,
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_shapes=(batch_dim(),),
            opset_version=ONNX_OPSET,
            external_data=False,
            verbose=False,
        )
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def write_pt2(model: nn.Module, path: Path, img_size: int) -> None:
    with torch.no_grad():
        program = torch.export.export(Logits(model).eval(), (example_pixels(img_size),), dynamic_shapes=(batch_dim(),))
    torch.export.save(program, str(path))


Runtime = Callable[[np.ndarray], np.ndarray]  # float32 NCHW normalised pixels -> logits


class OrtModel:
    """An ONNX file in an ONNX Runtime session (CPU, or CUDA first when ORT has it and a GPU is there)."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types for unreadable or invalid models
            raise VitkitError(f"ONNX Runtime cannot load {path}: {exc}") from exc
        self.input = self.session.get_inputs()[0].name

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.outputs(pixels)[0]

    def outputs(self, pixels: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(o) for o in self.session.run(None, {self.input: pixels.astype(np.float32, copy=False)})]


class Pt2Model:
    def __init__(self, path: Path) -> None:
        self.module = torch.export.load(str(path)).module()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.outputs(pixels)[0]

    def outputs(self, pixels: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            out = self.module(torch.from_numpy(pixels))
        return [t.float().numpy() for t in (out if isinstance(out, tuple | list) else (out,))]


def load_runtime(path: Path) -> Runtime:
    if path.suffix == ".onnx":
        return OrtModel(path)
    if path.suffix == ".pt2":
        return Pt2Model(path)
    raise VitkitError(f"{path} is neither an .onnx nor a .pt2 file.")


def run_batched(runtime: Runtime, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return np.concatenate([runtime(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)])
