"""The model card (README.md with YAML front matter) written into every exported folder.

Every number and fact in it is read from the run: its evaluation (eval/metrics.json), its training summary, its
recipe and the export's own parity checks. Nothing is typed by hand, so a card cannot claim what was not measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vitkit import __version__
from vitkit.run_folder import read_run_json

# (section, key, model-index type, name) of the metrics.json values the card reports
CARD_METRICS = (
    ("accuracy", "top1", "accuracy", "Top-1 accuracy"),
    ("accuracy", "top5", "top_5_accuracy", "Top-5 accuracy"),
    ("accuracy", "macro_f1", "f1", "Macro F1"),
    ("accuracy", "exact_match", "exact_match", "Exact match (all labels right)"),
    ("accuracy", "auroc", "roc_auc", "AUROC (macro over labels when multi-label)"),
    ("accuracy", "average_precision", "average_precision", "Average precision"),
    ("calibration", "ece", "ece", "Expected calibration error"),
    ("calibration", "ece_before_scaling", "ece", "ECE before temperature scaling (held-out half)"),
    ("calibration", "ece_after_scaling", "ece", "ECE after temperature scaling (held-out half)"),
    ("robustness", "mean_corruption_top1", "accuracy", "Mean top-1 over corruptions and severities"),
    ("fairness", "top1_gap", "accuracy_gap", "Largest top-1 gap between groups"),
    ("fairness", "ece_gap", "ece_gap", "Largest ECE gap between groups"),
)


CARD = "README.md"
SIGNATURE = "from the run's own files; no number here was typed by hand."  # in every card vitkit writes

LOAD_SNIPPETS = {
    "hf": """```python
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification

path = "ORG/NAME"  # or this folder's path
# backend="pil" gives the pixels this model was evaluated on (see Export checks)
processor = AutoImageProcessor.from_pretrained(path, backend="pil")
model = AutoModelForImageClassification.from_pretrained(path).eval()
inputs = processor(images=Image.open("image.jpg").convert("RGB"), return_tensors="pt")
probabilities = model(**inputs).logits.softmax(-1)[0]
print(model.config.id2label[int(probabilities.argmax())], float(probabilities.max()))
```""",
    "timm": """```python
import timm
from PIL import Image

model = timm.create_model("hf-hub:ORG/NAME", pretrained=True).eval()  # or "local-dir:PATH" for this folder
transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
probabilities = model(transform(Image.open("image.jpg").convert("RGB"))[None]).softmax(-1)[0]
print(model.pretrained_cfg["label_names"][int(probabilities.argmax())], float(probabilities.max()))
```""",
    "onnx": """```bash
pip install 'vitkit[deploy]'
vitkit predict THIS_FOLDER image.jpg          # preprocessing, temperature and class names from model.json
```
Or with ONNX Runtime alone: resize, crop and normalise as model.json says, then
`onnxruntime.InferenceSession("model.onnx").run(None, {"pixels": batch})` gives the logits.""",
    "pt2": """```bash
vitkit predict THIS_FOLDER image.jpg          # preprocessing, temperature and class names from model.json
```
Or `torch.export.load("model.pt2").module()(pixels)` on pixels prepared as model.json says.""",
}


@dataclass
class CardFacts:
    """What the card states, all read from the run and the export."""

    name: str
    library: str  # transformers, timm, onnx, torch
    load_snippet: str
    recipe: dict[str, Any]
    classes: list[str]
    checkpoint: dict[str, Any]
    training_data: str
    training_images: int
    summary: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None  # eval/metrics.json
    checks: list[str] = field(default_factory=list)  # export parity, one line each


def run_card(recipe: Any, info: dict[str, Any], splits: Any, library: str, snippet: str, checks: list[str]) -> str:
    """The model card of the run that `info` (from load_run_model) comes from, exported for `library`."""
    run_dir = Path(info["checkpoint"]).parent.parent
    return model_card(
        CardFacts(
            name=f"{recipe.model.name}-{run_dir.name}",
            library=library,
            load_snippet=snippet,
            recipe=recipe.model_dump(mode="json"),
            classes=info.get("classes") or splits.classes,
            checkpoint=info,
            training_data=splits.description,
            training_images=len(splits.train),
            summary=read_run_json(run_dir / "summary.json") or {},
            evaluation=read_run_json(run_dir / "eval" / "metrics.json"),
            checks=checks,
        )
    )


def card_metrics(evaluation: dict[str, Any]) -> list[dict[str, Any]]:
    """model-index metric entries, values exactly as metrics.json holds them."""
    results = evaluation.get("results", {})
    out = []
    for section, key, kind, name in CARD_METRICS:
        value = results.get(section, {}).get(key)
        if isinstance(value, int | float):
            out.append({"type": kind, "name": name, "value": value})
    return out


def front_matter(facts: CardFacts) -> dict[str, Any]:
    base = facts.recipe.get("finetune", {}).get("pretrained")
    matter: dict[str, Any] = {
        "library_name": facts.library,
        "pipeline_tag": "image-classification",
        "tags": ["vitkit", "vision-transformer", "image-classification", facts.recipe["model"]["name"]],
    }
    if base:
        matter["base_model"] = base
    if facts.evaluation is not None:
        ev = facts.evaluation
        dataset = {"name": ev.get("data", "evaluation data"), "type": "vitkit", "split": "validation"}
        if ev.get("data_sha256"):
            dataset["revision"] = f"sha256:{ev['data_sha256']}"
        matter["model-index"] = [
            {
                "name": facts.name,
                "results": [
                    {
                        "task": {"type": "image-classification", "name": "Image classification"},
                        "dataset": dataset,
                        "metrics": card_metrics(ev),
                    }
                ],
            }
        ]
    return matter


def model_card(facts: CardFacts) -> str:
    matter = yaml.safe_dump(front_matter(facts), sort_keys=False, allow_unicode=True)
    body = [
        f"# {facts.name}",
        "",
        _summary(facts),
        "",
        "## How to load",
        "",
        facts.load_snippet.strip(),
        "",
        *_evaluation(facts),
        *_training(facts),
        *_use_and_limits(facts),
    ]
    if facts.checks:
        body += ["## Export checks", "", *[f"- {line}" for line in facts.checks], ""]
    body += [f"*Written by vitkit {__version__} {SIGNATURE}*", ""]
    return f"---\n{matter}---\n\n" + "\n".join(body)


def _summary(facts: CardFacts) -> str:
    model = facts.recipe["model"]
    finetune = facts.recipe.get("finetune", {})
    origin = (
        f"fine-tuned from `{finetune['pretrained']}` ({finetune.get('strategy', 'full')} fine-tuning)"
        if finetune.get("pretrained")
        else "trained from scratch"
    )
    params = facts.summary.get("parameters")
    size = f" ({params / 1e6:.2f}M parameters)" if isinstance(params, int) else ""
    shown = ", ".join(f"`{c}`" for c in facts.classes[:20]) + (" …" if len(facts.classes) > 20 else "")
    return (
        f"An image classifier for {len(facts.classes)} classes ({shown}): a `{model['name']}`{size} at "
        f"{model['img_size']} px, {origin} with vitkit. Weights from `{facts.checkpoint.get('checkpoint')}` "
        f"({facts.checkpoint.get('why') or facts.checkpoint.get('weights')})."
    )


def _evaluation(facts: CardFacts) -> list[str]:
    ev = facts.evaluation
    if ev is None:
        best = facts.summary.get("best_val_top1")
        during = f" Validation top-1 during training was {best:.2%}." if isinstance(best, float) else ""
        return [
            "## Evaluation",
            "",
            f"This run has not been evaluated (no eval/metrics.json).{during} Run `vitkit evaluate RUN` and export "
            "again for a card with calibration, per-class and robustness results.",
            "",
        ]
    lines = ["## Evaluation", "", f"On {ev['images']} images of {ev['data']} (the run's validation split"]
    lines[-1] += f"; images and labels SHA-256 `{ev['data_sha256']}`)." if ev.get("data_sha256") else ")."
    lines += ["", "| metric | value |", "|---|---|"]
    lines += [f"| {m['name']} | {m['value']:.4f} |" for m in card_metrics(ev)]
    results = ev.get("results", {})
    calibration = results.get("calibration", {})
    if "temperature" in calibration:
        lines += ["", f"Temperature scaling: T = {calibration['temperature']:.4f} (fitted and kept)."]
    elif note := calibration.get("temperature_skipped") or calibration.get("temperature_rejected"):
        lines += ["", f"Temperature scaling: not applied ({note})."]
    return [*lines, *_per_class_table(results.get("accuracy", {}).get("per_class") or []), ""]


def _per_class_table(rows: list[dict[str, Any]]) -> list[str]:
    """The evaluation's per-class (or per-label) rows as a Markdown table, with whatever columns they have."""
    if not rows:
        return []
    columns = [k for k in rows[0] if k != "class"]

    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    return [
        "",
        "| class | " + " | ".join(c.replace("_", " ") for c in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
        *[f"| {r['class']} | " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows],
    ]


def _training(facts: CardFacts) -> list[str]:
    s = facts.summary
    lines = [
        "## Training",
        "",
        f"Data: {facts.training_data}; {facts.training_images} training images.",
    ]
    if "epochs" in s:
        lines[-1] += f" {s['epochs']} epochs, {s.get('updates')} updates, precision {s.get('precision')}."
    recipe = yaml.safe_dump(facts.recipe, sort_keys=False).strip()
    return [*lines, "", "<details><summary>The full recipe</summary>", "", "```yaml", recipe, "```", "</details>", ""]


def _use_and_limits(facts: CardFacts) -> list[str]:
    lines = [
        "## Intended use and limitations",
        "",
        f"- Classifies an image into exactly one of the {len(facts.classes)} classes above; an image of anything "
        "else still gets one of them, so check the confidence before acting on a prediction.",
        f"- Trained and evaluated on {facts.training_data}: the figures above hold for images like those, not for "
        "images from other devices, sites or populations until measured there (`vitkit evaluate RUN --data OTHER`).",
    ]
    results = (facts.evaluation or {}).get("results", {})
    if "robustness" not in results:
        lines.append("- Robustness to corruptions was not measured (`vitkit evaluate RUN --only robustness`).")
    if "fairness" not in results or "groups" not in results.get("fairness", {}):
        lines.append("- Accuracy across groups (site, sex, age band, ...) was not measured (`--groups COLUMN`).")
    for finding in (facts.evaluation or {}).get("findings", []):
        if finding.get("level") == "act":
            lines.append(f"- {finding.get('area')}: {finding.get('problem')}.")
    return [*lines, ""]


def read_front_matter(text: str) -> dict[str, Any]:
    """The YAML front matter of a model card."""
    if not text.startswith("---\n"):
        return {}
    matter, _, _ = text[4:].partition("\n---\n")
    loaded = yaml.safe_load(matter)
    return loaded if isinstance(loaded, dict) else {}
