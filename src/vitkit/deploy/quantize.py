"""INT8 through ONNX Runtime's quantization: dynamic, or static (QDQ) calibrated on training images.

ViTs lose accuracy when LayerNorm, GELU, Softmax and the residual Adds are quantized, so only the products with
weights are: the linear layers (MatMul, Gemm) and, in static mode, the patch embedding (Conv). The rest stays fp32,
attention's two activation products included (one reads the Softmax output: quantizing them took a tiny ViT from
100% to chance in a test, where the weight products alone moved its logits by 0.03). The accuracy drop is then
measured on the validation set; while it is over the limit, the weight products whose inputs span the widest
range in calibration (those 8 bits resolve worst) are kept in fp32 too, 1, 2, 4, ... at a time. If even that
fails, the export is refused with the measured drop.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitkit.deploy.formats import OrtModel, run_batched
from vitkit.deploy.parity import top1
from vitkit.errors import VitkitError

QUANTIZED_OPS = {"dynamic": ["MatMul", "Gemm"], "static": ["MatMul", "Gemm", "Conv"]}


@dataclass
class Int8Report:
    mode: str
    images: int
    fp32_top1: float
    int8_top1: float
    top1_agreement: float
    max_drop: float
    kept_fp32: list[str] = field(default_factory=list)  # matrix products left in fp32 to meet the limit
    attempts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def drop(self) -> float:
        return self.fp32_top1 - self.int8_top1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "drop": self.drop}


class _Calibration:
    """ONNX Runtime's CalibrationDataReader over float32 pixel arrays (a new one per quantization pass)."""

    def __init__(self, input_name: str, pixels: np.ndarray, batch_size: int = 32) -> None:
        self.batches: Iterator[dict[str, np.ndarray]] = iter(
            {input_name: pixels[i : i + batch_size]} for i in range(0, len(pixels), batch_size)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def weight_products(model_path: Path, ops: list[str]) -> list[tuple[str, str]]:
    """(node name, activation input) of every node of the quantized op types that multiplies by a weight."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    initializers = {t.name for t in graph.initializer}
    nodes = []
    for node in graph.node:
        weights = [i for i in node.input if i in initializers]
        if node.op_type in ops and weights:
            activation = next((i for i in node.input if i not in initializers), node.input[0])
            nodes.append((node.name, activation))
    return nodes


def sensitivity_order(model_path: Path, ops: list[str], calibration: np.ndarray, input_name: str) -> list[str]:
    """The quantizable nodes, the widest calibrated input range first."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    with tempfile.TemporaryDirectory() as tmp:
        calibrator = create_calibrator(
            str(model_path), ops, str(Path(tmp) / "augmented.onnx"), calibrate_method=CalibrationMethod.MinMax
        )
        calibrator.collect_data(_Calibration(input_name, calibration))
        ranges = calibrator.compute_data()
    widths = {}
    for name, activation in weight_products(model_path, ops):
        if activation in ranges:
            low, high = ranges[activation].range_value
            widths[name] = float(np.max(high) - np.min(low))
    return sorted(widths, key=lambda n: -widths[n])


def _quantize(
    source: Path, target: Path, mode: str, calibration: np.ndarray, input_name: str, nodes: list[str]
) -> None:
    """Quantize exactly `nodes` (weight products) of `source` into `target`."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    ops = QUANTIZED_OPS[mode]
    if mode == "dynamic":
        quantize_dynamic(source, target, op_types_to_quantize=ops, weight_type=QuantType.QInt8, nodes_to_quantize=nodes)
        return
    quantize_static(
        source,
        target,
        _Calibration(input_name, calibration),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=ops,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_quantize=nodes,
    )


def quantize_int8(
    fp32: Path,
    target: Path,
    mode: str,
    calibration: np.ndarray,
    val: tuple[np.ndarray, np.ndarray],
    max_drop: float,
) -> Int8Report:
    """Write `target`, the INT8 model of `fp32`, within `max_drop` (a fraction) of its validation top-1."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pixels, labels = val
    reference = run_batched(OrtModel(fp32), pixels)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)  # shape inference, graph cleanup
        _drop_value_info(prepared)
        input_name = OrtModel(prepared).input
        order = sensitivity_order(prepared, QUANTIZED_OPS[mode], calibration, input_name)
        report = Int8Report(mode, len(labels), top1(reference, labels), float("nan"), float("nan"), max_drop)
        for keep in _fallbacks(len(order)):
            kept = order[:keep]
            _quantize(prepared, target, mode, calibration, input_name, order[keep:])
            int8 = run_batched(OrtModel(target), pixels)
            report.int8_top1, report.kept_fp32 = top1(int8, labels), kept
            report.top1_agreement = float((int8.argmax(1) == reference.argmax(1)).mean())
            report.attempts.append({"kept_fp32": len(kept), "int8_top1": report.int8_top1, "drop": report.drop})
            if report.drop <= max_drop:
                return report
    target.unlink(missing_ok=True)
    raise VitkitError(
        f"INT8 ({mode}) loses {report.drop:.2%} top-1 on {len(labels)} validation images (limit {max_drop:.2%}) even "
        f"with {len(report.kept_fp32)} of {len(order)} matrix products kept in fp32; no INT8 model was written. "
        "Use the fp32 export, try the other --int8 mode, calibrate on more images (--calibration), or raise the "
        "limit (--max-int8-drop)."
    )


def _drop_value_info(path: Path) -> None:
    """Remove the recorded intermediate shapes: the dynamic quantizer re-infers them and refuses the dynamo
    exporter's (ShapeInferenceError "Inferred shape and existing shape differ")."""
    import onnx

    model = onnx.load(str(path))
    del model.graph.value_info[:]
    onnx.save(model, str(path))


def _fallbacks(nodes: int) -> Iterator[int]:
    """How many nodes to keep in fp32 at each attempt: 0, 1, 2, 4, ... up to all but one."""
    yield 0
    keep = 1
    while keep < nodes:
        yield keep
        keep *= 2
