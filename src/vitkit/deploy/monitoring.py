"""What a server needs to watch a model for drift: a monitor model and reference statistics, written at export.

The monitor model (monitor.onnx or monitor.pt2) maps the same pixels to the pre-logits embedding (`forward_head(...,
pre_logits=True)`, the CLS token for a ViT) and to each attention layer's mean entropy per image. It is a separate
file so that the served model, its parity and its speed stay exactly as exported; a server runs it on a sample of
the traffic, off the request path.

reference.safetensors holds the same quantities on the run's validation images: a sample of embeddings, every
image's attention entropies, and the top-1 probability (after the temperature) of every image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vitkit.deploy.formats import ONNX_OPSET, batch_dim, example_pixels
from vitkit.deploy.pixels import eager_logits
from vitkit.evaluate.attention import attention_modules, attention_probabilities

MONITOR_OUTPUTS = ("embedding", "attention_entropy")
REFERENCE = "reference.safetensors"
EMBEDDING_SAMPLE = 256


class MonitorOutputs(nn.Module):
    """(pixels) -> (embedding (B, D), attention entropy (B, layers)); layers are timm Attention blocks (none for
    models without them, e.g. Swin, whose entropy output is then (B, 0))."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval()
        self._entropies: list[torch.Tensor] = []
        self._handles = [
            module.register_forward_pre_hook(self._entropy_hook, with_kwargs=True)
            for module in attention_modules(model)
        ]

    def remove_hooks(self) -> None:
        """Leave the model as it was (only these hooks go; any other hook on it stays)."""
        for handle in self._handles:
            handle.remove()

    def _entropy_hook(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        attn = attention_probabilities(module, args, kwargs)
        # mean over heads and queries of -sum(p log p): one number per image and layer
        self._entropies.append(-(attn * attn.clamp_min(1e-12).log()).sum(dim=-1).mean(dim=(1, 2)))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._entropies.clear()
        features = self.model.forward_features(pixels)  # type: ignore[operator]
        embedding = self.model.forward_head(features, pre_logits=True)  # type: ignore[operator]
        entropy = torch.stack(self._entropies, dim=1) if self._entropies else pixels.new_zeros((pixels.shape[0], 0))
        self._entropies.clear()  # no tensor stays on the module (torch.export warns about such attributes)
        return embedding, entropy


def monitor_outputs(model: nn.Module, pixels: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Eager embeddings and attention entropies of `pixels`. The hooks are removed again afterwards."""
    wrapper = MonitorOutputs(model)
    try:
        with torch.inference_mode():
            parts = [wrapper(torch.from_numpy(pixels[i : i + batch_size])) for i in range(0, len(pixels), batch_size)]
    finally:
        wrapper.remove_hooks()
    return torch.cat([p[0] for p in parts]).float().numpy(), torch.cat([p[1] for p in parts]).float().numpy()


def write_monitor(model: nn.Module, path: Path, img_size: int) -> None:
    """The monitor model as ONNX (dynamic batch, checked) or .pt2, by the suffix of `path`."""
    wrapper = MonitorOutputs(model).eval()
    try:
        with torch.no_grad():
            if path.suffix == ".onnx":
                import onnx

                torch.onnx.export(
                    wrapper,
                    (example_pixels(img_size),),
                    str(path),
                    dynamo=True,
                    input_names=["pixels"],
                    output_names=list(MONITOR_OUTPUTS),
                    dynamic_shapes=(batch_dim(),),
                    opset_version=ONNX_OPSET,
                    external_data=False,
                    verbose=False,
                )
                onnx.checker.check_model(str(path), full_check=True)
            else:
                program = torch.export.export(wrapper, (example_pixels(img_size),), dynamic_shapes=(batch_dim(),))
                torch.export.save(program, str(path))
    finally:
        wrapper.remove_hooks()


def reference_statistics(model: nn.Module, pixels: np.ndarray, temperature: float | None) -> dict[str, np.ndarray]:
    """The validation images' top-1 probabilities, a sample of their embeddings, and their attention entropies."""
    logits = torch.from_numpy(eager_logits(model, pixels))
    confidence = (logits.float() / (temperature or 1.0)).softmax(dim=1).max(dim=1).values.numpy()
    embedding, entropy = monitor_outputs(model, pixels)
    return {
        "confidence": confidence.astype(np.float32),
        "embedding": embedding[:EMBEDDING_SAMPLE].astype(np.float32),
        "attention_entropy": entropy.astype(np.float32),
    }
