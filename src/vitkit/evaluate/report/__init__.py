"""Render metrics.json as one self-contained HTML page: figures and thumbnails are embedded as PNG data URIs, no
script runs and nothing is fetched, so the file opens offline and can be mailed or archived on its own.

Only what the evaluators produced is rendered: a section per evaluator in the document, a figure or table per
value the renderers know, and a plain table for any other value.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from vitkit.errors import VitkitError
from vitkit.evaluate.findings import findings
from vitkit.evaluate.report import plots
from vitkit.files import write_atomically
from vitkit.run_folder import check_output_files

TITLES = {
    "accuracy": "Accuracy",
    "clinical": "Findings: ranking and operating points",
    "calibration": "Confidence and calibration",
    "attention": "Attention quality",
    "robustness": "Robustness",
    "fairness": "Fairness across groups",
    "efficiency": "Efficiency",
}
INTRO = {
    "accuracy": "How often the model is right, class by class.",
    "clinical": "Per finding: AUROC and average precision with 95% bootstrap intervals (resampling patients when "
    "their ids are known), and the sensitivity reached at 90% and 95% specificity. Operating thresholds are fitted "
    "on the run's validation split and frozen; on any other data they are applied unchanged. The threshold source "
    "below says which set they came from.",
    "calibration": "Whether the model's confidence can be trusted: a calibrated model that says 80% is right 80% "
    "of the time. ECE and MCE use equal-width confidence bins; the temperature is fitted on one part of the "
    "evaluation set and judged on the other.",
    "attention": "Mean attention entropy H = −Σ A log A per layer and head (log N is uniform attention over N "
    "tokens), head diversity D = 1 − (1/H²)·Σ cos(A_h, A_h') per layer (0: all heads alike), and attention "
    "rollout from the class token over the patches.",
    "robustness": "Top-1 on corrupted copies of the evaluation images (a seeded sample), at several severities, "
    "and on a shifted dataset when one was given.",
    "fairness": "Accuracy and calibration for each group of the manifest's group column.",
    "efficiency": "Cost of inference on the device the evaluation ran on (warm-up passes excluded).",
}
LABELS = {
    "top1": "top-1",
    "top5": "top-5",
    "nll": "NLL",
    "macro_f1": "macro F1",
    "top1_cls_head": "top-1, class-token head only",
    "top1_dist_head": "top-1, dist head only",
    "ece": "ECE",
    "mce": "MCE",
    "auroc": "AUROC",
    "average_precision": "average precision",
    "temperature_fit_images": "images the temperature is fitted on",
    "ece_before_scaling": "ECE, held-out part, raw",
    "ece_after_scaling": "ECE, held-out part, temperature-scaled",
    "nll_before_scaling": "NLL, held-out part, raw",
    "nll_after_scaling": "NLL, held-out part, temperature-scaled",
    "flops_per_image": "FLOPs per image",
    "throughput_images_per_s": "throughput (images/s)",
    "peak_memory_mb": "peak memory (MiB)",
    "macro_auroc": "macro AUROC",
    "micro_auroc": "micro AUROC",
    "macro_ap": "macro average precision",
    "mean_probability": "mean predicted probability",
}
PERCENT = {
    "top1",
    "top5",
    "macro_f1",
    "top1_cls_head",
    "top1_dist_head",
    "ece",
    "mce",
    "mean_confidence",
    "exact_match",
    "sensitivity",
    "specificity",
    "clean_top1",
    "mean_corruption_top1",
    "top1_gap",
    "ece_gap",
    "ece_before_scaling",
    "ece_after_scaling",
    "precision",
    "recall",
    "f1",
    "coverage",
    "accuracy",
    "reference_top1",
    "prevalence",
    "mean_probability",
}
THREE_DECIMALS = {
    "auroc",
    "average_precision",
    "micro_auroc",
    "macro_auroc",
    "macro_ap",
    *(f"{k}_{end}" for k in ("macro_auroc", "macro_ap", "micro_auroc") for end in ("low", "high")),
    "macro_auroc_gap",
}


def label(key: str) -> str:
    return LABELS.get(key, key.replace("_", " "))


def format_value(key: str, value: Any) -> str:
    if isinstance(value, list):  # a shape reads 3 × 16 × 16, other short lists as a comma-separated list
        joiner = " × " if "shape" in key or "size" in key else ", "
        return joiner.join(format_value(key, v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN: e.g. the accuracy of no answers
            return "–"
        if key in THREE_DECIMALS:
            return f"{value:.3f}"
        if key in PERCENT:
            return f"{value:.1%}"
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def is_scalar(value: Any) -> bool:
    """A value shown in a section's table of figures: a number, a word, or a short list of whole numbers (a shape)."""
    if isinstance(value, list):
        return 0 < len(value) <= 8 and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return isinstance(value, (int, float, str, bool))


def table(rows: list[dict[str, Any]], caption: str = "") -> str:
    if not rows:
        return "<p class='muted'>none</p>"
    keys = list(rows[0])
    head = "".join(f"<th>{escape(label(k))}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(format_value(k, r.get(k)))}</td>" for k in keys) + "</tr>" for r in rows
    )
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(uri: str, alt: str) -> str:
    return f"<figure><img src='{uri}' alt='{escape(alt)}'><figcaption>{escape(alt)}</figcaption></figure>"


def gallery(examples: list[dict[str, Any]], caption: Callable[[dict[str, Any]], str]) -> str:
    cells = [
        f"<figure class='thumb'><img src='{e['image']}' alt='{escape(caption(e))}'>"
        f"<figcaption>{escape(caption(e))}</figcaption></figure>"
        for e in examples
        if "image" in e
    ]
    rows = [e for e in examples if "image" not in e]
    return f"<div class='gallery'>{''.join(cells)}</div>" + (table(rows) if rows else "")


# --- renderers of non-scalar values, by evaluator and name ------------------------------------------------------

Renderer = Callable[[Any, dict[str, Any], dict[str, Any]], str]


def _confusion(value: Any, results: dict[str, Any], doc: dict[str, Any]) -> str:
    return figure(plots.confusion_matrix(value, doc.get("classes", [])), "confusion matrix (rows: true class)")


def _coverage(value: Any, results: dict[str, Any], doc: dict[str, Any]) -> str:
    answered = [p for p in value if p["threshold"] == 0.5 and p["coverage"] > 0]
    sentence = ""
    if answered:
        p = answered[0]
        sentence = (
            f"<p>Answering only at confidence 0.5 or more, the model answers {p['coverage']:.0%} of "
            f"inputs with {p['accuracy']:.0%} accuracy.</p>"
        )
    return (
        sentence
        + table(value, "accuracy and coverage at confidence thresholds")
        + figure(plots.coverage_curve(value), "coverage and accuracy against the confidence threshold")
    )


def _wrong(value: Any, results: dict[str, Any], doc: dict[str, Any]) -> str:
    if not value:
        return "<p>No wrong predictions.</p>"
    return "<h3>Most confidently wrong</h3>" + gallery(
        value, lambda e: f"{e['true']} → {e['predicted']} ({e['confidence']:.0%})"
    )


def _entropy(value: Any, results: dict[str, Any], doc: dict[str, Any]) -> str:
    cells = [h for layer in value for h in layer]
    spread = max(cells) - min(cells)
    alike = f"; every head is within {spread:.3f} nats of the others" if spread < 0.05 else ""
    return figure(
        plots.heatmap(value, "head", "layer", "mean attention entropy (nats)", vmax=results.get("uniform_entropy")),
        f"attention entropy per layer and head (0 to {results.get('uniform_entropy', 0):.2f}, uniform attention)"
        + alike,
    )


def _diversity(value: Any, results: dict[str, Any], doc: dict[str, Any]) -> str:
    layers = [f"layer {i}" for i in range(len(value))]
    return figure(plots.bars(layers, value, "head diversity D", ylim=(0, 1)), "head diversity per layer (0 to 1)")


def _corruptions(value: Any, results: dict[str, Any], doc: dict[str, Any]) -> str:
    severities = results.get("severities", [])
    rows = [
        {"corruption": name, **{f"severity {s}": v for s, v in zip(severities, row, strict=True)}}
        for name, row in value.items()
    ]
    for row in rows:  # show accuracies as percentages
        for k in list(row)[1:]:
            row[k] = f"{row[k]:.1%}"
    drop = doc.get("settings", {}).get("robustness_drop", 0.10)
    return table(rows, "top-1 under corruption") + figure(
        plots.severity_lines(severities, value, results.get("clean_top1", 0.0), drop), "top-1 against severity"
    )


def _groups(value: Any, results: dict[str, Any], doc: dict[str, Any]) -> str:
    judged = [g for g in value if not g["too_small"]]
    metric = "top1" if judged and "top1" in judged[0] else "macro_auroc"
    chart = (
        figure(
            plots.bars([g["group"] for g in judged], [g[metric] for g in judged], label(metric)),
            f"{label(metric)} per group (groups large enough to judge)",
        )
        if judged
        else ""
    )
    return table(value, "per group") + chart


def _interval(row: dict[str, Any], key: str) -> str:
    value, low, high = row.get(key), row.get(f"{key}_low"), row.get(f"{key}_high")
    if value is None:
        return "– (needs positives and negatives)"
    return f"{value:.3f} ({low:.3f}–{high:.3f})" if low is not None and high is not None else f"{value:.3f}"


def _per_label(value: Any, results: dict[str, Any], doc: dict[str, Any]) -> str:
    rows = [
        {
            "finding": r["label"],
            "positives": r["positives"],
            "negatives": r["negatives"],
            "AUROC (95% CI)": _interval(r, "auroc"),
            "average precision (95% CI)": _interval(r, "ap"),
        }
        for r in value
    ]
    ranked = [r for r in value if r.get("auroc") is not None and r.get("auroc_low") is not None]
    interval = results.get("interval", {})
    caption = (
        f"per finding; intervals from {interval.get('resamples', '?')} bootstrap resamples of "
        f"{interval.get('resampled', 'images')}"
    )
    chart = (
        figure(
            plots.interval_plot(
                [r["label"] for r in ranked],
                [r["auroc"] for r in ranked],
                [r["auroc_low"] for r in ranked],
                [r["auroc_high"] for r in ranked],
            ),
            "AUROC per finding with its 95% interval (dashed: chance)",
        )
        if ranked
        else ""
    )
    return table(rows, caption) + chart


def _operating_points(value: Any, results: dict[str, Any], doc: dict[str, Any]) -> str:
    rows = [
        {
            "finding": p["label"],
            "target specificity": f"{p['target_specificity']:.0%}",
            "threshold": "none reaches it" if p["threshold"] is None else f"{p['threshold']:.4f}",
            "sensitivity": p.get("sensitivity"),
            "specificity": p.get("specificity"),
        }
        for p in value
    ]
    source = results.get("threshold_source", "")
    return f"<h3>Operating points</h3><p>Thresholds: {escape(source)}.</p>" + table(rows)


RENDERERS: dict[tuple[str, str], Renderer] = {
    ("clinical", "per_label"): _per_label,
    ("clinical", "operating_points"): _operating_points,
    ("clinical", "positives_rollout"): lambda v, r, d: (
        "<h3>Attention rollout on confident positives</h3><p>Each finding's highest-scoring true positive and false "
        "positive at its 90%-specificity threshold.</p>"
        + gallery(v, lambda e: f"{e['label']}: {e['kind']} (score {e['score']:.2f})")
    ),
    ("calibration", "per_label"): lambda v, r, d: table(v, "calibration per label (sigmoid probability)"),
    ("accuracy", "confusion_matrix"): _confusion,
    ("accuracy", "per_class"): lambda v, r, d: table(v, "per class"),
    ("accuracy", "roc_curve"): lambda v, r, d: figure(
        plots.line_curve(v["fpr"], v["tpr"], "false positive rate", "true positive rate"), "ROC curve"
    ),
    ("calibration", "reliability"): lambda v, r, d: figure(plots.reliability_diagram(**v), "reliability diagram"),
    ("calibration", "coverage"): _coverage,
    ("calibration", "confidently_wrong"): _wrong,
    ("attention", "entropy"): _entropy,
    ("attention", "diversity"): _diversity,
    ("attention", "rollout"): lambda v, r, d: (
        "<h3>Attention rollout</h3>"
        + gallery(
            v, lambda e: f"true {e['true']}, predicted {e['predicted']}" if e["true"] else f"predicted {e['predicted']}"
        )
    ),
    ("robustness", "corruptions"): _corruptions,
    ("robustness", "shift"): lambda v, r, d: table([v], "shifted dataset"),
    ("fairness", "groups"): _groups,
    ("efficiency", "latency_ms"): lambda v, r, d: table([v], "latency at batch 1 (ms)"),
}
HIDDEN = {
    "flags",
    "severities",
    "collapsed_layers",
    "uniform_heads",
    "fitted_thresholds",
    "interval",
}  # shown through the flags or a figure


def render_value(evaluator: str, key: str, value: Any, results: dict[str, Any], doc: dict[str, Any]) -> str:
    renderer = RENDERERS.get((evaluator, key))
    if renderer is not None:
        return renderer(value, results, doc)
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return table(value, label(key))
    if isinstance(value, dict) and all(is_scalar(v) for v in value.values()):
        return table([value], label(key))
    return f"<h3>{escape(label(key))}</h3><pre>{escape(json.dumps(value, indent=1))}</pre>"


def sections(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, results in doc.get("results", {}).items():
        scalars = [(label(k), format_value(k, v)) for k, v in results.items() if is_scalar(v) and k not in HIDDEN]
        blocks = [
            Markup(render_value(name, k, v, results, doc))
            for k, v in results.items()
            if not is_scalar(v) and k not in HIDDEN
        ]
        out.append(
            {
                "id": name,
                "title": TITLES.get(name, name),
                "intro": INTRO.get(name, ""),
                "flags": results.get("flags", []),
                "scalars": scalars,
                "blocks": blocks,
                "seconds": doc.get("seconds", {}).get(name),
            }
        )
    return out


def training_section(doc: dict[str, Any]) -> dict[str, Any] | None:
    """Loss per epoch and the learning rate the run used (warmup, cosine, floor), from its metrics.jsonl."""
    training = doc.get("training", {})
    history, lr = training.get("history", []), training.get("lr", [])
    if not history and not lr:
        return None
    plot = figure(
        plots.training_curves(history, lr),
        "loss per epoch, training sample against validation, the learning rate of every logged step, and each "
        "layer's attention entropy",
    )
    return {
        "id": "training",
        "title": "Training",
        "intro": "How the run trained: its losses per epoch; a fixed sample of training images scored like the "
        "validation images (a wide gap is overfitting, two low curves underfitting); the learning rate it used at "
        "each logged step (`vitkit schedule RECIPE` plots the same schedule, for every parameter group, before a "
        "run); and each layer's attention entropy as a share of uniform attention (near 0: collapse; staying at 1: "
        "attention has not learnt where to look).",
        "flags": [],
        "scalars": [],
        "blocks": [Markup(plot)],
        "seconds": None,
    }


def render_report(doc: dict[str, Any]) -> str:
    env = Environment(loader=PackageLoader("vitkit.evaluate.report", "."), autoescape=select_autoescape(["j2"]))
    training = training_section(doc)
    parts = sections(doc) + ([training] if training else [])
    return env.get_template("report.html.j2").render(doc=doc, sections=parts, findings=findings(doc))


def write_report(doc: dict[str, Any], path: Path) -> Path:
    write_atomically(path, render_report(doc))
    return path


def metrics_file(path: Path) -> Path:
    """The metrics.json that `path` names: the file itself, a folder holding one (evaluate's --out), or a run
    folder, whose evaluation is in eval/."""
    if not path.is_dir():
        return path
    found = next((f for f in (path / "metrics.json", path / "eval" / "metrics.json") if f.is_file()), None)
    if found is None:
        raise VitkitError(
            f"{path} is a folder with no metrics.json (nor eval/metrics.json). Evaluate the run first (vitkit "
            "evaluate RUN), or pass the metrics.json that vitkit evaluate --out wrote."
        )
    return found


def rerender(metrics_path: Path, out: Path | None = None) -> Path:
    """`vitkit report`: render metrics.json again, without recomputing anything."""
    metrics_path = metrics_file(metrics_path)
    try:
        doc = json.loads(metrics_path.read_text())
    except FileNotFoundError:
        raise VitkitError(f"{metrics_path}: no such file. Pass the metrics.json written by vitkit evaluate.") from None
    except json.JSONDecodeError as e:
        raise VitkitError(
            f"{metrics_path} is not valid JSON ({e}). Pass the metrics.json of vitkit evaluate."
        ) from None
    if not isinstance(doc, dict) or "results" not in doc:
        raise VitkitError(f"{metrics_path} is not a vitkit metrics.json (no 'results'). Run vitkit evaluate first.")
    target = out or metrics_path.with_name("report.html")
    check_output_files(target)
    return write_report(doc, target)
