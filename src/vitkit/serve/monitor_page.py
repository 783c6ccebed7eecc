"""`vitkit monitor LOG`: the drift reports a server wrote to its prediction log, as one self-contained HTML page
(plots over the images answered, as PNG data URIs, like the evaluation report): drift p-values, attention-entropy
shift, latency p99 and resident memory, per model version, with the latest reports in a table."""

from __future__ import annotations

import html
from typing import Any

from matplotlib.figure import Figure

from vitkit import __version__
from vitkit.evaluate.report.plots import COLORS, figure_uri

PANELS = (
    ("drift p-values (log scale; below the line: alarm)", ("confidence.p_value", "embedding.p_value")),
    ("attention entropy: largest |z| of a layer", ("attention.max_abs_z",)),
    ("latency p99 (ms)", ("latency_p99_ms",)),
    ("resident memory (MiB)", ("rss_mib",)),
)


def _value(report: dict[str, Any], dotted: str) -> float | None:
    value: Any = report
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) else None


def _figure(reports: list[dict[str, Any]], alpha: float, z: float) -> str:
    answered = [float(r.get("answered", i)) for i, r in enumerate(reports)]
    fig = Figure(figsize=(10, 9))
    for i, (title, keys) in enumerate(PANELS):
        ax = fig.add_subplot(len(PANELS), 1, i + 1)
        for color, key in zip(COLORS, keys, strict=False):
            points = [(n, v) for n, r in zip(answered, reports, strict=True) if (v := _value(r, key)) is not None]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=color, label=key)
        if "p_value" in keys[0]:
            ax.set_yscale("log")
            ax.axhline(alpha, color="#999", linestyle="--")
        if "max_abs_z" in keys[0]:
            ax.axhline(z, color="#999", linestyle="--")
        ax.set_title(title, fontsize=10, loc="left")
        ax.set_xlabel("images answered", fontsize=8)
        if len(keys) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return figure_uri(fig)


def _row(report: dict[str, Any]) -> str:
    cells = [
        str(report.get("answered")),
        "ALARM" if report.get("alarm") else "ok",
        *(
            f"{v:.3g}" if (v := _value(report, key)) is not None else "-"
            for key in (
                "confidence.p_value",
                "embedding.p_value",
                "attention.max_abs_z",
                "latency_p99_ms",
                "rss_mib",
                "rss_trend_mib_per_1k",
            )
        ),
    ]
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def monitor_page(records: list[dict[str, Any]], alpha: float = 0.01, z: float = 5.0) -> str:
    """The HTML page of every `monitor` record in a prediction log; raises ValueError when there is none."""
    reports = [r for r in records if r.get("kind") == "monitor"]
    if not reports:
        raise ValueError("the log holds no drift report: a server writes one every 100 answered images")
    sections = []
    for model, version in sorted({(r["model"], r["version"]) for r in reports}):
        mine = [r for r in reports if (r["model"], r["version"]) == (model, version)]
        head = "<tr><th>images</th><th>state</th><th>KS p</th><th>MMD p</th><th>|z| max</th>"
        head += "<th>p99 ms</th><th>RSS MiB</th><th>MiB / 1k images</th></tr>"
        sections.append(
            f"<h2>{html.escape(model)} {html.escape(version)}</h2>"
            f"<p>{len(mine)} reports; alarms in {sum(bool(r.get('alarm')) for r in mine)}.</p>"
            f"<table>{head}{''.join(_row(r) for r in mine[-10:])}</table>"
            f'<img alt="drift over time" src="{_figure(mine, alpha, z)}">'
        )
    style = "body{font-family:sans-serif;max-width:1000px;margin:2em auto}td,th{padding:2px 8px;text-align:right}"
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><meta name="generator" content="vitkit {__version__}">'
        f"<title>vitkit monitor</title><style>{style}</style></head><body><h1>Serving monitor</h1>"
        f"{''.join(sections)}</body></html>"
    )
