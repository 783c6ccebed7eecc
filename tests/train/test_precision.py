"""`train.precision: auto` on a CPU: bf16 only where the CPU has bf16 instructions and a measured matrix product runs
clearly faster in it; the run's header says why a CPU with bf16 instructions trains in fp32."""

import math
from pathlib import Path

import pytest
import torch
from rich.console import Console

from tests.conftest import tiny_recipe
from vitkit import precision
from vitkit.errors import RecipeError
from vitkit.train.loop import train

CPU = torch.device("cpu")


def _cpu(monkeypatch: pytest.MonkeyPatch, flags: str, speedup: float | None) -> None:
    """Pretend to be a CPU with `flags` on which bf16 runs `speedup` times as fast as fp32 (None: never measured)."""

    def measured() -> float:
        if speedup is None:
            raise AssertionError("the bf16 speed must not be measured on a CPU that emulates bf16")
        return speedup

    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    monkeypatch.delenv("WORLD_SIZE", raising=False)  # one process, unless a test says otherwise
    monkeypatch.setattr(precision, "cpu_bf16_speedup", measured)


def test_a_cpu_without_bf16_instructions_trains_in_fp32_without_measuring(monkeypatch: pytest.MonkeyPatch):
    _cpu(monkeypatch, "flags : fpu avx2 fma", speedup=None)  # emulated bf16 would take ~100x as long to time
    assert precision.resolve_precision("auto", CPU) == "fp32"
    assert precision.precision_note("auto", "fp32", CPU) is None


@pytest.mark.parametrize(("speedup", "expected"), [(0.6, "fp32"), (1.1, "fp32"), (1.8, "bf16")])
def test_bf16_instructions_give_bf16_only_where_it_measured_faster(
    monkeypatch: pytest.MonkeyPatch, speedup: float, expected: str
):
    _cpu(monkeypatch, "flags : avx512f avx512_bf16", speedup)
    assert precision.resolve_precision("auto", CPU) == expected
    assert precision.resolve_precision("bf16", CPU) == "bf16"  # asked for by name: kept
    assert precision.resolve_precision("fp32", CPU) == "fp32"
    note = precision.precision_note("auto", precision.resolve_precision("auto", CPU), CPU)
    if expected == "bf16":
        assert note is None
    else:
        assert note is not None and f"{speedup:.2f}x" in note and "train.precision=bf16" in note


def test_several_cpu_processes_stay_in_fp32_without_timing(monkeypatch: pytest.MonkeyPatch):
    _cpu(monkeypatch, "flags : avx512f avx512_bf16", speedup=None)  # each process would time the shared cores
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert precision.resolve_precision("auto", CPU) == "fp32"
    note = precision.precision_note("auto", "fp32", CPU)
    assert note is not None and "several processes" in note and "train.precision=bf16" in note


def test_fp16_on_a_cpu_is_refused_with_the_choices():
    with pytest.raises(RecipeError, match="fp16 needs a CUDA GPU"):
        precision.resolve_precision("fp16", CPU)


def test_the_measurement_leaves_the_training_random_stream_alone():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    ratio = precision.cpu_bf16_speedup.__wrapped__()  # measure now, not a cached figure
    assert math.isfinite(ratio) and ratio > 0
    assert torch.equal(torch.rand(4), expected)


def test_the_run_header_says_why_auto_chose_fp32(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    _cpu(monkeypatch, "flags : avx512f avx512_bf16", speedup=0.62)
    console = Console(record=True, width=200)
    result = train(
        tiny_recipe("train.precision=auto", "schedule.epochs=1", "schedule.warmup_epochs=0"),
        tmp_path / "run",
        console=console,
    )
    assert result.summary["precision"] == "fp32"
    said = " ".join(console.export_text().split())
    assert "precision fp32" in said and "ran 0.62x as fast in bf16 as in fp32" in said
