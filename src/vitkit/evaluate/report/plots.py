"""Report figures drawn with matplotlib's object API (no pyplot state, no display needed), as PNG data URIs."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

COLORS = ("#3b6ea8", "#d1603d", "#4f9a5b", "#8c5fb0", "#c9a227", "#5b6770")


def figure_uri(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def confusion_matrix(matrix: list[list[int]], classes: Sequence[str]) -> str:
    n = len(matrix)
    size = min(10.0, 2.5 + 0.45 * n)
    fig = Figure(figsize=(size, size * 0.85))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    if n <= 30:
        ax.set_xticks(range(n), labels=list(classes), rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), labels=list(classes), fontsize=8)
    if n <= 12:
        top = max(max(row) for row in matrix) or 1
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > top / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return figure_uri(fig)


def reliability_diagram(edges: list[float], confidence: list[float], accuracy: list[float], count: list[int]) -> str:
    fig = Figure(figsize=(4.6, 4.2))
    ax = fig.add_subplot()
    width = edges[1] - edges[0]
    centers = [e + width / 2 for e in edges[:-1]]
    shown = [i for i, n in enumerate(count) if n]
    ax.bar(
        [centers[i] for i in shown], [accuracy[i] for i in shown], width=width * 0.95, color=COLORS[0], label="accuracy"
    )
    ax.bar(
        [centers[i] for i in shown],
        [confidence[i] - accuracy[i] for i in shown],
        bottom=[accuracy[i] for i in shown],
        width=width * 0.95,
        color=COLORS[1],
        alpha=0.45,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    ax.legend(loc="upper left", fontsize=8)
    return figure_uri(fig)


def coverage_curve(points: list[dict[str, float]]) -> str:
    fig = Figure(figsize=(4.6, 3.6))
    ax = fig.add_subplot()
    xs = [p["threshold"] for p in points]
    ax.plot(xs, [p["coverage"] for p in points], "o-", color=COLORS[0], label="coverage (share answered)")
    ax.plot(xs, [p["accuracy"] for p in points], "s-", color=COLORS[2], label="accuracy of the answered")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence threshold")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), fontsize=8, ncol=2)  # below the axes: hides no curve
    return figure_uri(fig)


def line_curve(x: list[float], y: list[float], xlabel: str, ylabel: str) -> str:
    fig = Figure(figsize=(4.2, 3.8))
    ax = fig.add_subplot()
    ax.plot(x, y, color=COLORS[0])
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=xlabel, ylabel=ylabel)
    return figure_uri(fig)


def heatmap(values: list[list[float]], xlabel: str, ylabel: str, title: str, vmax: float | None = None) -> str:
    """Colour on an absolute scale (0 to `vmax`), and each cell's value written in it: cells that are all alike
    then read as alike, with their numbers, instead of as a flat colour without contrast."""
    fig = Figure(figsize=(min(9.0, 2.5 + 0.45 * len(values[0])), min(7.0, 1.6 + 0.4 * len(values))))
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.set_xticks(range(len(values[0])))
    ax.set_yticks(range(len(values)))
    if len(values) * len(values[0]) <= 256:
        top = vmax or max(max(row) for row in values) or 1.0
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                ax.text(
                    j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="black" if v > top / 2 else "white"
                )
    return figure_uri(fig)


def bars(
    labels: Sequence[str],
    values: Sequence[float],
    ylabel: str,
    reference: float | None = None,
    ylim: tuple[float, float] | None = None,
) -> str:
    fig = Figure(figsize=(min(9.0, 2.5 + 0.5 * len(values)), 3.4))
    ax = fig.add_subplot()
    bars_drawn = ax.bar(range(len(values)), values, color=COLORS[0])
    if len(values) <= 24:  # the value on each bar: a bar of 0.00001 is otherwise invisible
        ax.bar_label(bars_drawn, fmt="%.3g", fontsize=7)
    if reference is not None:
        ax.axhline(reference, ls="--", color=COLORS[1], lw=1)
    ax.set_xticks(range(len(values)), labels=list(labels), rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)  # never "1e-5 + 2.0" on a 0..1 quantity
    return figure_uri(fig)


def severity_lines(severities: list[int], table: dict[str, list[float]], clean: float, drop: float) -> str:
    fig = Figure(figsize=(5.2, 3.8))
    ax = fig.add_subplot()
    for color, (name, row) in zip(COLORS * 3, table.items(), strict=False):
        ax.plot(severities, row, "o-", color=color, label=name)
    ax.axhline(clean, ls="--", color="grey", lw=1, label="clean")
    ax.axhline(clean - drop, ls=":", color=COLORS[1], lw=1, label=f"clean − {drop * 100:.0f} points (flagged)")
    ax.set(xlabel="severity", ylabel="top-1", ylim=(0, 1.02), xticks=severities)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside the axes: hides no line
    return figure_uri(fig)


def interval_plot(labels: Sequence[str], values: Sequence[float], low: Sequence[float], high: Sequence[float]) -> str:
    """A forest plot: each label's value as a dot with its confidence interval, chance (0.5) dashed."""
    fig = Figure(figsize=(6.0, 1.0 + 0.35 * len(values)))
    ax = fig.add_subplot()
    y = list(range(len(values)))[::-1]
    errors = [[v - lo for v, lo in zip(values, low, strict=True)], [hi - v for v, hi in zip(values, high, strict=True)]]
    ax.errorbar(values, y, xerr=errors, fmt="o", color=COLORS[0], capsize=3)
    ax.axvline(0.5, ls="--", color=COLORS[1], lw=1)
    ax.set_yticks(y, labels=list(labels), fontsize=8)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("AUROC (95% bootstrap interval)")
    fig.tight_layout()
    return figure_uri(fig)


def training_curves(history: list[dict[str, Any]], lr: list[list[float]]) -> str:
    """Panels: losses per epoch; training-sample against validation score; the learning rate of the logged steps;
    each layer's attention entropy (share of uniform) per epoch, when the run recorded them."""
    score = "auroc" if any("val_auroc" in r for r in history) else "top1"
    has_fit = any(f"train_eval_{score}" in r for r in history)
    has_attention = any("attn_entropy" in r for r in history)
    panels = 2 + has_fit + has_attention
    fig = Figure(figsize=(4.2 * panels, 3.2))
    axes = list(fig.subplots(1, panels))
    loss_ax, lr_ax = axes[0], axes[1 + has_fit]
    for i, key in enumerate(("train_loss", "val_loss", "ema_val_loss")):
        _epoch_line(loss_ax, history, key, COLORS[i % len(COLORS)])
    loss_ax.set(xlabel="epoch", ylabel="loss")
    loss_ax.legend(fontsize=7)
    if has_fit:
        fit_ax = axes[1]
        _epoch_line(fit_ax, history, f"train_eval_{score}", COLORS[0], "training sample")
        _epoch_line(fit_ax, history, f"val_{score}", COLORS[1], "validation")
        fit_ax.set(xlabel="epoch", ylabel=score)
        fit_ax.legend(fontsize=7)
    if lr:
        lr_ax.plot([p[0] for p in lr], [p[1] for p in lr], color=COLORS[0])
    lr_ax.set(xlabel="step", ylabel="learning rate (highest group)")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if has_attention:
        att_ax = axes[-1]
        rows = [(r["epoch"], r["attn_entropy"]) for r in history if "attn_entropy" in r]
        for layer in range(len(rows[0][1])):
            att_ax.plot([e for e, _ in rows], [v[layer] for _, v in rows], lw=1, label=f"layer {layer}")
        att_ax.set(xlabel="epoch", ylabel="attention entropy / log N", ylim=(0, 1.05))
        att_ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return figure_uri(fig)


def _epoch_line(ax: Any, history: list[dict[str, Any]], key: str, color: str, label: str | None = None) -> None:
    points = [(r["epoch"], r[key]) for r in history if key in r]
    if points:
        ax.plot(*zip(*points, strict=True), marker="o", ms=3, color=color, label=label or key)
