"""The `vitkit` command: thin Typer commands over the library API.

Recipe fields and their descriptions (config/schema.py) generate the help of `train` and `recipes`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

import typer
import yaml
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vitkit.config.loader import load_raw, load_recipe, recipe_to_yaml, shipped_recipes
from vitkit.config.schema import Recipe
from vitkit.errors import OutOfMemory, RankFailed, VitkitError
from vitkit.files import write_atomically


def recipe_fields(model: type[BaseModel] = Recipe, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted name, description, default) of every recipe field: the source of CLI help and docs."""
    rows: list[tuple[str, str, Any]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += recipe_fields(annotation, f"{prefix}{name}.")
        else:
            rows.append((f"{prefix}{name}", field.description or "", field.get_default(call_default_factory=True)))
    return rows


HELP_OPTIONS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    help="Train, fine-tune and evaluate Vision Transformers with recipes that work.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings=HELP_OPTIONS,
    add_completion=False,
)
recipes_app = typer.Typer(help="List, show and explain recipes.", no_args_is_help=True, context_settings=HELP_OPTIONS)
app.add_typer(recipes_app, name="recipes")
advise_app = typer.Typer(
    help="Advisors: settings sized to your data and model.", no_args_is_help=True, context_settings=HELP_OPTIONS
)
app.add_typer(advise_app, name="advise")
plan_app = typer.Typer(
    help="Planners: what a setting costs before you train.", no_args_is_help=True, context_settings=HELP_OPTIONS
)
app.add_typer(plan_app, name="plan")
data_app = typer.Typer(
    help="Datasets: write one in another format.", no_args_is_help=True, context_settings=HELP_OPTIONS
)
app.add_typer(data_app, name="data")
# launched on several processes (accelerate launch, torchrun), the first speaks for the run
PROCESS = int(os.environ.get("RANK", "0"))
console = Console(quiet=PROCESS > 0)


def _print_version(value: bool) -> None:
    if value:
        from vitkit import __version__

        console.print(f"vitkit {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True)
    ] = False,
) -> None:
    """Train, fine-tune and evaluate Vision Transformers with recipes that work."""


SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Override a recipe field, e.g. --set optim.lr=1e-3 (repeatable).")
]


@app.command()
def train(
    recipe: Annotated[
        str | None, typer.Option(help="Shipped recipe name, recipe YAML file or run folder (default quickstart).")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(help="Image folder, manifest.csv, hf:PATH, torchvision:NAME or builtin:shapes."),
    ] = None,
    data_root: Annotated[str | None, typer.Option(help="Folder for torchvision:NAME files.")] = None,
    pretrained: Annotated[
        str | None,
        typer.Option(
            help="Start from these weights: a timm name (vit_small_patch16_224.augreg_in21k, hf-hub:ORG/NAME), a "
            "transformers checkpoint folder, a .safetensors file or a vitkit run folder."
        ),
    ] = None,
    teacher: Annotated[
        str | None,
        typer.Option(
            help="Distil from this teacher: a vitkit run folder (e.g. of --recipe cnn-teacher), a timm name or a "
            "model folder. Turns on hard distillation (DeiT's choice) if the recipe has distill.type none."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder to write (default runs/RECIPE).")] = None,
    set_: SetOption = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="Continue the run in this folder (--set applies to its recipe), from its newest undamaged "
            "checkpoint. 'auto': continue the --out folder if it has a checkpoint, else start it (for jobs that "
            "are rerun after preemption)."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder.")] = False,
    deterministic: Annotated[
        bool,
        typer.Option(
            help="Deterministic algorithms only, everything seeded: two runs write identical metrics.jsonl "
            "(bitwise on CPU; see docs/guide.md for GPUs). Sets train.deterministic."
        ),
    ] = False,
) -> None:
    """Train a model from a recipe; writes checkpoints, metrics.jsonl, TensorBoard events and a summary.

    Every recipe field, its default and meaning: vitkit recipes fields [--recipe NAME].
    """
    # checks that only read files come before the heavy imports (torch), so a refusal is immediate
    from vitkit.run_folder import check_new_run_folder, recipe_input_paths

    run_dir = out or Path("runs") / Path(recipe or "quickstart").stem
    if deterministic:
        set_ = [*(set_ or []), "train.deterministic=true"]
    if resume is not None and resume != "auto":
        new_run = {"--recipe": recipe, "--data": data, "--data-root": data_root, "--pretrained": pretrained}
        new_run |= {"--teacher": teacher, "--overwrite": "yes" if overwrite else None}
        given = [name for name, value in new_run.items() if value is not None]
        if given:
            raise VitkitError(
                f"--resume continues the run in {resume} with its own recipe, data and weights, so {', '.join(given)} "
                "would be ignored. Drop them (change a field of the run with --set), or start a new run with --out."
            )
        from vitkit.train.loop import resume_recipe
        from vitkit.train.loop import train as run_training

        cfg = resume_recipe(Path(resume), list(set_ or []))
        result = run_training(cfg, Path(resume), resume=True, console=console)
    else:
        cfg = _new_run_recipe(recipe, data, data_root, pretrained, teacher, set_)
        recipe_file = [recipe] if recipe and Path(recipe).is_file() else []
        if resume is None:
            check_new_run_folder(run_dir, overwrite, recipe_input_paths(cfg, recipe_file))
        from vitkit.train.loop import train as run_training

        auto: Literal["auto", False] = (
            "auto" if resume == "auto" else False
        )  # continue the --out run if it has a checkpoint, else start it
        result = run_training(cfg, run_dir, resume=auto, overwrite=overwrite, console=console, inputs=recipe_file)
    if result.evaluation is not None and result.evaluation_dir is not None:
        _print_evaluation(result.evaluation, result.evaluation_dir)


def _new_run_recipe(
    recipe: str | None,
    data: str | None,
    data_root: str | None,
    pretrained: str | None,
    teacher: str | None,
    set_: list[str] | None,
) -> Recipe:
    """The recipe of a new run from the command's options; --teacher alone turns on hard distillation."""
    overrides = list(set_ or [])
    if data_root is not None:
        overrides.append(f"data.root={data_root}")
    if pretrained is not None:
        overrides.append(f"finetune.pretrained={pretrained}")
    if teacher is not None:
        overrides.append(f"distill.teacher={teacher}")
    cfg = load_recipe(recipe or "quickstart", overrides, source=data)
    if data is None:
        console.print(
            f"note: no --data given: training recipe {recipe or 'quickstart'} on its own data source, "
            f"{cfg.data.source}. Pass --data DIR (or a manifest.csv) to train on your images.",
            highlight=False,
        )
    if teacher is not None and cfg.distill.type == "none":
        cfg.distill.type = "hard"
        console.print("note: --teacher given and the recipe has distill.type none: using hard distillation")
    return cfg


def _print_evaluation(doc: dict[str, Any], out: Path) -> None:
    from vitkit.evaluate.report import format_value, label

    table = Table(title=f"vitkit — {doc['run']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("data", f"{doc['data']} ({doc['images']} images)")
    checkpoint = doc["checkpoint"]
    table.add_row(
        "checkpoint", f"{checkpoint['checkpoint']} ({checkpoint['weights']}, epoch {checkpoint.get('epoch')})"
    )
    if checkpoint.get("why"):
        table.add_row("chosen because", checkpoint["why"])
    for name, results in doc["results"].items():
        for key, value in results.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                table.add_row(f"{name} · {label(key)}", format_value(key, value))
            elif key in {"skipped", "gap_skipped", "temperature_skipped"}:
                table.add_row(f"{name} · {label(key)}", str(value))
    from vitkit.run_folder import read_run_json

    summary = read_run_json(Path(doc["run"]) / "summary.json")
    if summary is not None:
        if doc.get("task") == "multilabel":
            table.add_row("chance level", "AUROC 0.5 per label")
        else:
            table.add_row("chance level", f"{1 / summary['num_classes']:.2%}")
        table.add_row("train time", f"{summary['wall_seconds']:.0f} s ({summary['train_images_per_second']:.0f} img/s)")
        table.add_row("precision / attention", f"{summary['precision']} / {summary['attention']}")
    console.print(table)
    for finding in doc.get("findings", []):
        colour = "red" if finding["level"] == "act" else "yellow"
        console.print(f"[{colour}]{finding['level']}[/{colour}] {finding['area']}: {escape(finding['problem'])}")
        console.print(f"  try: {escape(finding['action'])}", highlight=False)
    console.print(f"report: {(out / 'report.html').resolve()}", highlight=False)
    console.print(f"run folder: {Path(doc['run']).resolve()}", highlight=False)


@app.command()
def evaluate(
    run: Annotated[
        Path, typer.Argument(metavar="RUN", help="A run folder written by vitkit train, or one of its checkpoints.")
    ],
    data: Annotated[str | None, typer.Option(help="Evaluate on this data's val split (default: the run's).")] = None,
    groups: Annotated[
        str | None, typer.Option(help="Fairness: the column of a CSV manifest (--data) that names each image's group.")
    ] = None,
    shift_data: Annotated[
        str | None, typer.Option(help="Robustness: a shifted dataset with the same classes, evaluated whole.")
    ] = None,
    only: Annotated[
        str | None,
        typer.Option(
            help="Run only these evaluators, e.g. calibration,attention (of accuracy, calibration, "
            "attention, robustness, fairness, efficiency)."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for metrics.json and report.html (default RUN/eval).")
    ] = None,
    save_temperature: Annotated[
        bool | None,
        typer.Option(
            "--save-temperature/--no-save-temperature",
            help="Save the fitted temperature for vitkit predict (default: only when evaluating the run's own data).",
        ),
    ] = None,
) -> None:
    """Evaluate a run beyond top-1: accuracy, calibration, attention, robustness, fairness and efficiency. Writes
    metrics.json and a self-contained report.html, and saves the fitted temperature for vitkit predict."""
    from vitkit.evaluate.run import evaluate_run

    with console.status("evaluating"):
        doc, folder = evaluate_run(
            run,
            data=data,
            groups=groups,
            shift_data=shift_data,
            only=only,
            out=out,
            save_temperature_for_predict=save_temperature,
        )
    _print_evaluation(doc, folder)
    fitted = doc["results"].get("calibration", {}).get("temperature")
    if fitted is not None and "temperature_saved" not in doc:
        console.print(
            f"note: the temperature {fitted:.3f} fitted on {doc['data']} was not saved for vitkit predict (other data "
            "than the run's own); pass --save-temperature to use it.",
            highlight=False,
        )


@app.command()
def report(
    metrics: Annotated[
        Path,
        typer.Argument(
            metavar="METRICS", help="A metrics.json written by vitkit evaluate, or the run or folder that holds it."
        ),
    ],
    out: Annotated[Path | None, typer.Option(help="HTML file to write (default: report.html next to it).")] = None,
) -> None:
    """Render report.html again from metrics.json, without recomputing anything."""
    from vitkit.evaluate.report import rerender

    console.print(f"report: {rerender(metrics, out).resolve()}", highlight=False)


def _export_folder(run: Path, fmt: str, out: Path | None) -> None:
    from vitkit.deploy.export import run_folder_of
    from vitkit.deploy.folders import export_folder

    folder = out or run_folder_of(run) / f"export-{fmt}"
    with console.status("exporting and checking"):
        doc = export_folder(run, folder, fmt)
    console.print(f"{folder} ({'transformers' if fmt == 'hf' else 'timm'} folder with README.md)", highlight=False)
    for check in doc["checks"].values():
        console.print(f"  {check['line']}", highlight=False)


@app.command()
def predict(
    target: Annotated[
        Path, typer.Argument(metavar="MODEL", help="A run folder, or a folder written by vitkit export.")
    ],
    images: Annotated[list[str], typer.Argument(metavar="IMAGES", help="Image files, folders or glob patterns.")],
    top: Annotated[int, typer.Option(help="How many classes to give per image.")] = 3,
    threshold: Annotated[
        float, typer.Option(help="Flag a prediction as low-confidence below this top probability.")
    ] = 0.5,
    out: Annotated[Path | None, typer.Option(help="Write the predictions to a .csv or .jsonl file.")] = None,
) -> None:
    """Classify images with a run's model or an exported one, in batches. Probabilities use the temperature vitkit
    evaluate fitted for those weights, when there is one, so a printed 90% means right about 90% of the time.
    Unreadable files are listed with the reason and do not stop the others."""
    if top < 1 or not 0 <= threshold <= 1:
        raise VitkitError("--top needs at least 1 and --threshold a probability from 0 to 1.")
    if out is not None:
        from vitkit.run_folder import check_output_files

        if out.suffix not in (".csv", ".jsonl"):
            raise VitkitError(f"--out {out}: write predictions to a .csv or a .jsonl file.")
        check_output_files(out)
    from rich.progress import Progress

    from vitkit.deploy.predict import expand_inputs, load_classifier, predict, require_some_readable, write_predictions

    classifier = load_classifier(target)
    paths, results = expand_inputs(images)
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("classifying", total=len(paths))
        results += predict(classifier, paths, top=top, threshold=threshold, on_batch=lambda n: bar.advance(task, n))
    require_some_readable(results)
    t = classifier.temperature
    note = f"temperature {t:.3f}" if t else "no fitted temperature: raw softmax"
    count = f"{len(results)} image{'' if len(results) == 1 else 's'}"
    console.print(f"{count} with {classifier.source}, {note}", highlight=False)
    unwritten = None
    if out is not None:
        try:
            write_predictions(results, out)
            console.print(f"predictions written to {out}", highlight=False)
        except OSError as exc:  # a full disk, a file system that refuses it: the predictions are shown instead
            unwritten = f"--out {out} could not be written ({exc.strerror or exc}); the predictions are printed above."
    for r in results if out is None or unwritten else [r for r in results if r.error]:
        shown = r.error and f"[red]cannot read[/red]: {escape(r.error)}"
        shown = shown or escape(", ".join(f"{name} {p:.1%}" for name, p in r.top))
        console.print(f"{escape(r.path)}: {shown}" + (" (low confidence)" if r.low_confidence else ""), highlight=False)
    if unwritten:
        raise VitkitError(f"{unwritten} Free some space or choose another --out.")


@data_app.command("export")
def data_export(
    source: Annotated[str, typer.Argument(metavar="DATA", help="Any --data source: folder, manifest.csv, hf:, ...")],
    out: Annotated[Path, typer.Option(help="A new folder for the dataset.")],
    format_: Annotated[str, typer.Option("--format", help="hf: a datasets DatasetDict (save_to_disk).")] = "hf",
    val_fraction: Annotated[float, typer.Option(help="Share held out when the data has no validation split.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of that split (train.seed: the split a run with it trains on).")] = 0,
    groups: Annotated[str | None, typer.Option(help="A manifest column kept as the dataset's group column.")] = None,
) -> None:
    """Write a dataset (train and validation splits, images as their files' bytes, class names, groups) as a
    Hugging Face dataset that datasets.load_from_disk and --data hf:OUT read."""
    if format_ != "hf":
        raise VitkitError(f"--format {format_}: vitkit data export writes hf (a datasets DatasetDict).")
    if not 0 < val_fraction < 1:
        raise VitkitError(f"--val-fraction {val_fraction}: give the share held out, between 0 and 1 (e.g. 0.1).")
    from vitkit.data.hf import export_hf_dataset
    from vitkit.data.sources import load_source

    splits = load_source(source, val_fraction=val_fraction, seed=seed, group_column=groups)
    with console.status("writing the dataset"):
        written = export_hf_dataset(splits, out)
    console.print(
        f"{out}: {written['train']} train and {written['validation']} validation images, "
        f"{len(written['classes'])} classes. Train on it with --data hf:{out}",
        highlight=False,
    )
    for problem in written["skipped"]:
        console.print(f"  skipped {problem}", highlight=False)


@app.command("serve")
def serve_command(
    path: Annotated[
        Path, typer.Argument(metavar="MODEL_OR_DIR", help="An export, a run, or a folder of NAME/VERSION exports.")
    ],
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 exposes the server to the network.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0: any free one).")] = 8000,
    name: Annotated[str | None, typer.Option(help="Model name (default: from the folder).")] = None,
    max_batch: Annotated[int, typer.Option(help="Most images per forward pass (1 turns batching off).")] = 32,
    max_wait_ms: Annotated[float, typer.Option(help="Longest a request waits for others to join its batch.")] = 5.0,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body.")] = 20.0,
    max_images: Annotated[int, typer.Option(help="Most images per request.")] = 64,
    max_pixels: Annotated[int, typer.Option(help="Most pixels per image, checked from its header.")] = 40_000_000,
    log: Annotated[Path | None, typer.Option(help="Prediction log (JSONL) for vitkit compare and /feedback.")] = None,
    admin_token: Annotated[
        str | None, typer.Option(envvar="VITKIT_ADMIN_TOKEN", help="Turns on /admin/... (rollout, promote, reload).")
    ] = None,
    monitor_window: Annotated[int, typer.Option(help="Recent images tested for drift against the reference.")] = 200,
    monitor_sample: Annotated[
        float, typer.Option(help="Share of images the monitor model sees (embeddings, attention).")
    ] = 0.1,
    ray: Annotated[bool, typer.Option("--ray", help="Serve as a Ray Serve deployment (vitkit[ray]).")] = False,
    replicas: Annotated[int, typer.Option(help="--ray: replicas (the least, when autoscaling).")] = 1,
    max_replicas: Annotated[int, typer.Option(help="--ray: autoscale up to this many replicas.")] = 0,
) -> None:
    """Serve models over HTTP: KServe v2 endpoints (/v2/...), POST /predict for image files or base64 JSON,
    Prometheus /metrics, and the API's own docs at /docs. Needs vitkit[serve]."""
    from vitkit.serve import listening_socket, require_serve

    require_serve()
    if max_batch < 1 or max_wait_ms < 0 or max_body_mb <= 0 or max_images < 1 or max_pixels < 1:
        raise VitkitError(
            "--max-batch, --max-images and --max-pixels need at least 1, --max-body-mb more than 0 and --max-wait-ms "
            "at least 0."
        )
    if monitor_window < 20 or not 0 <= monitor_sample <= 1:
        raise VitkitError("--monitor-window needs at least 20 images, --monitor-sample a share from 0 to 1.")
    import uvicorn

    from vitkit.serve.app import create_app
    from vitkit.serve.inputs import Limits
    from vitkit.serve.models import load_models
    from vitkit.serve.monitor import MonitorSettings
    from vitkit.serve.registry import ServeSettings

    models = load_models(path, name)
    limits = Limits(int(max_body_mb * 2**20), max_images, max_pixels)
    monitoring = MonitorSettings(window=monitor_window, min_images=min(50, monitor_window // 2), sample=monitor_sample)
    settings = ServeSettings(
        max_batch, max_wait_ms, limits, admin_token=admin_token, log=log, source=path, name=name, monitor=monitoring
    )
    if ray:
        from vitkit.serve.ray_app import run_ray

        if replicas < 1:
            raise VitkitError("--replicas needs at least 1.")
        console.print(f"serving with Ray Serve on http://{host}:{port} (Ctrl-C stops)", highlight=False)
        run_ray(path, name, settings, host, port, replicas, max_replicas)
        return
    app = create_app(models, settings)
    for model, versions in models.items():
        listed = ", ".join(f"{v.version} ({v.classifier.runtime})" for v in versions)
        console.print(f"{model}: {listed}", highlight=False)
    sock = listening_socket(host, port)
    port = sock.getsockname()[1]
    console.print(f"serving on http://{host}:{port} (API docs: /docs; Ctrl-C stops)", highlight=False)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False)).run(sockets=[sock])


@app.command("compare")
def compare_command(
    log: Annotated[Path, typer.Argument(metavar="LOG", help="A prediction log written by vitkit serve --log.")],
    a: Annotated[str, typer.Option("--a", help="The version to compare against (usually the stable one).")],
    b: Annotated[str, typer.Option("--b", help="The candidate version.")],
    model: Annotated[str | None, typer.Option(help="The model, when the log holds several.")] = None,
) -> None:
    """Say whether version B is better than A from a serving log: accuracy with a significance test where true
    labels were sent to /feedback, agreement and confidence otherwise."""
    from vitkit.serve.compare import compare
    from vitkit.serve.log import load_log

    records = load_log(log)
    try:
        result = compare(records, a, b, model)
    except ValueError as exc:
        raise VitkitError(f"{log}: {exc}") from None
    values = f"{a} {result.a_value:.4f} (n={result.n_a})  {b} {result.b_value:.4f} (n={result.n_b})"
    console.print(f"{result.measure}: {values}")
    if result.agreement is not None:
        console.print(f"agreement on shared images: {result.agreement:.2%}")
    console.print(f"{result.test}: p = {result.p_value:.4g}", highlight=False)
    console.print(f"{b}: {result.verdict}", highlight=False)


@app.command("monitor")
def monitor_command(
    log: Annotated[Path, typer.Argument(metavar="LOG", help="A prediction log written by vitkit serve --log.")],
    out: Annotated[Path, typer.Option(help="The HTML page to write.")] = Path("monitor.html"),
) -> None:
    """Render the drift reports of a serving log (p-values, attention-entropy shift, latency p99, memory) as one
    self-contained HTML page."""
    from vitkit.run_folder import check_output_files
    from vitkit.serve.log import load_log
    from vitkit.serve.monitor_page import monitor_page

    records = load_log(log)
    check_output_files(out)
    try:
        page = monitor_page(records)
    except ValueError as exc:
        raise VitkitError(f"{log}: {exc}.") from None
    write_atomically(out, page)
    console.print(f"wrote {out}", highlight=False)


@app.command("push")
def push_command(
    path: Annotated[Path, typer.Argument(metavar="RUN_OR_EXPORT", help="A run folder, or an export folder.")],
    repo: Annotated[str, typer.Option(help="The Hub repository, ORG/NAME; created if it does not exist.")],
    format_: Annotated[
        str, typer.Option("--format", help="For a run: export as hf (transformers) or timm first.")
    ] = "hf",
    private: Annotated[bool, typer.Option(help="Create the repository as private.")] = False,
    dry_run: Annotated[bool, typer.Option(help="List what would be uploaded; upload nothing.")] = False,
    create_pr: Annotated[bool, typer.Option(help="Open a pull request instead of committing to main.")] = False,
) -> None:
    """Upload an exported model (with its model card) to the Hugging Face Hub. Needs a token (hf auth login or
    HF_TOKEN) and network; HF_ENDPOINT selects another hub."""
    from vitkit.deploy.push import check_repo_id, hub_token, plan_push, push

    if format_ not in ("hf", "timm"):
        raise VitkitError(f"--format {format_}: choose hf or timm.")
    check_repo_id(repo)
    if not dry_run:
        hub_token()  # before a run is exported: without a token the export would be for nothing
    folder = path
    if (path / "recipe.yaml").exists():
        folder = path / f"export-{format_}"
        _export_folder(path, format_, folder)
    plan = plan_push(folder, repo)
    total = sum((folder / f).stat().st_size for f in plan.files) / 2**20
    console.print(f"{len(plan.files)} files ({total:.1f} MiB) from {folder} to {repo}:", highlight=False)
    for name in plan.files:
        console.print(f"  {name}", highlight=False)
    if dry_run:
        console.print("dry run: nothing was uploaded.")
        return
    with console.status(f"uploading to {repo}"):
        url = push(plan, private=private, create_pr=create_pr)
    console.print(f"uploaded: {url}", highlight=False)


@app.command("merge-lora")
def merge_lora_command(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A LoRA run folder written by vitkit train.")],
    out: Annotated[Path | None, typer.Option(help="Folder to write (default RUN/merged).")] = None,
    checkpoint: Annotated[str, typer.Option(help="Which checkpoint: best or last.")] = "best",
) -> None:
    """Merge a LoRA run's adapters into its base model and write a plain timm model folder (model.safetensors +
    config.json), loadable with timm.create_model("local-dir:OUT", pretrained=True) or --pretrained OUT."""
    from vitkit.config.loader import recipe_from_yaml_file
    from vitkit.models.finetune import count_parameters
    from vitkit.models.run_model import export_plain_model
    from vitkit.run_folder import check_run_folder

    check_run_folder(run)
    if recipe_from_yaml_file(run / "recipe.yaml").finetune.strategy != "lora":
        raise VitkitError(f"{run} was not trained with finetune.strategy=lora: its weights are already plain.")
    model, folder = export_plain_model(run, out or run / "merged", checkpoint)
    _, params = count_parameters(model)
    console.print(f"merged model ({params / 1e6:.2f}M parameters) written to {folder.resolve()}", highlight=False)


@app.command("export")
def export_command(
    run: Annotated[
        Path, typer.Argument(metavar="RUN", help="A run folder, or one of its checkpoints (RUN/checkpoints/NAME).")
    ],
    format_: Annotated[
        str,
        typer.Option(
            "--format",
            help="onnx (ONNX Runtime), pt2 (torch.export), hf (a transformers folder) or timm (a timm folder).",
        ),
    ] = "onnx",
    int8: Annotated[
        str | None,
        typer.Option(help="Also write an INT8 ONNX model: dynamic, or static (calibrated on training images)."),
    ] = None,
    calibration: Annotated[int, typer.Option(help="Training images that calibrate static INT8.")] = 256,
    max_int8_drop: Annotated[float, typer.Option(help="Largest validation top-1 loss INT8 may cost, in points.")] = 0.5,
    version: Annotated[str, typer.Option(help="The model version written into model.json.")] = "1.0.0",
    out: Annotated[Path | None, typer.Option(help="Folder to write (default RUN/export, RUN/export-hf, ...).")] = None,
) -> None:
    """Export a run's model to ONNX or .pt2 with model.json (classes, preprocessing, temperature, version,
    checksums), or as a transformers or timm folder; checks that the export computes what the checkpoint computes
    before keeping it, and writes a model card (README.md) with the run's evaluation."""
    if format_ not in ("onnx", "pt2", "hf", "timm"):
        raise VitkitError(f"--format {format_}: choose onnx, pt2, hf or timm.")
    if format_ in ("hf", "timm"):
        if int8:
            raise VitkitError("--int8 quantizes the ONNX model through ONNX Runtime: use it with --format onnx.")
        _export_folder(run, format_, out)
        return
    if int8 not in (None, "dynamic", "static"):
        raise VitkitError(f"--int8 {int8}: choose dynamic or static.")
    if calibration < 1 or not 0 <= max_int8_drop <= 100:
        raise VitkitError("--calibration needs at least 1 image and --max-int8-drop a value from 0 to 100 points.")
    from vitkit.deploy.export import ExportOptions, export_run, run_folder_of

    folder = out or run_folder_of(run) / "export"
    options = ExportOptions(format_, int8, calibration, max_int8_drop / 100, version)  # type: ignore[arg-type]
    with console.status("exporting and checking"):
        doc = export_run(run, folder, options)
    p = doc["parity"]
    size = (folder / doc["file"]).stat().st_size / 2**20
    console.print(
        f"{folder / doc['file']} ({size:.1f} MiB, {doc['format']}, version {doc['version']})", highlight=False
    )
    console.print(
        f"  parity on {p['images']} validation images: max |logit difference| {p['max_abs_diff']:.2e}, top-1 "
        f"agreement {p['top1_agreement']:.2%}",
        highlight=False,
    )
    if "int8" in doc:
        q = doc["int8"]
        console.print(
            f"  {folder / q['file']}: INT8 {q['mode']}, validation top-1 {q['int8_top1']:.2%} against fp32 "
            f"{q['fp32_top1']:.2%} ({q['images']} images), top-1 agreement {q['top1_agreement']:.2%}, "
            f"{len(q['kept_fp32'])} matrix products kept in fp32",
            highlight=False,
        )
    console.print(f"  metadata: {folder / 'model.json'}", highlight=False)


@app.command()
def bench(
    target: Annotated[
        Path, typer.Argument(metavar="RUN_OR_EXPORT", help="A run folder, or a folder written by vitkit export.")
    ],
    batch: Annotated[str, typer.Option(help="Batch sizes to measure throughput at, comma-separated.")] = "1,8,32,64",
    repeats: Annotated[int, typer.Option(help="Timed batch-1 calls per runtime (warm-up excluded).")] = 50,
    val_images: Annotated[int, typer.Option(help="Validation images for top-1 (and the timed batches).")] = 1000,
    int8: Annotated[bool, typer.Option(help="For a run folder: also quantize to INT8 (dynamic and static).")] = True,
    compile_: Annotated[
        bool, typer.Option("--compile/--no-compile", help="Include torch.compile (its first call compiles: minutes).")
    ] = True,
    out: Annotated[Path | None, typer.Option(help="Also write the table as JSON to this file.")] = None,
) -> None:
    """Compare runtimes for one model: eager fp32 (and bf16 where the CPU computes it natively), torch.compile,
    ONNX Runtime fp32 and INT8. Latency at batch 1, img/s per batch size, memory, file size, validation top-1."""
    from vitkit.deploy import require_deploy
    from vitkit.deploy.bench import benchmark, parse_batches

    batches = parse_batches(batch)
    if repeats < 1 or val_images < 1:
        raise VitkitError("--repeats and --val-images need at least 1.")
    if out is not None:
        from vitkit.run_folder import check_output_files

        check_output_files(out)
    require_deploy()
    with console.status("measuring"):
        table = benchmark(target, batches, repeats, val_images, int8, compile_)
    _print_bench(table, batches)
    if out is not None:
        from vitkit import __version__

        write_atomically(out, json.dumps({"vitkit": __version__, **table}, indent=1))


def _print_bench(table: dict[str, Any], batches: list[int]) -> None:
    view = Table(title=f"{table['model']} at {table['img_size']} px, {table['threads']} threads", title_justify="left")
    columns = ["runtime", "p50 ms", "p95 ms", "p99 ms", *[f"img/s @{b}" for b in batches], "memory MiB", "file MiB"]
    for column in [*columns, "val top-1", "note"]:
        view.add_column(column, justify="left" if column in ("runtime", "note") else "right")
    for r in table["rows"]:
        latency, ips = r["latency_ms"], r["images_per_s"]
        file_mb = f"{r['file_mb']:.1f}" if r["file_mb"] is not None else "-"
        view.add_row(
            r["runtime"],
            *[f"{latency[p]:.2f}" for p in ("p50", "p95", "p99")],
            *[f"{ips[b]:.0f}" for b in batches],
            f"{r['peak_memory_mb']:.0f}",
            file_mb,
            f"{r['val_top1']:.2%}",
            r["note"],
        )
    console.print(view)
    console.print(f"validation top-1 on {table['validation_images']} images", highlight=False)


@app.command()
def runs(
    args: Annotated[
        list[str] | None,
        typer.Argument(metavar="[DIR] | compare RUN_A RUN_B", help="A folder of runs (default runs), or: compare A B."),
    ] = None,
) -> None:
    """List the runs under DIR (recipe, data, best metric, status, date), or compare two runs: the recipe fields
    that differ and their metrics side by side."""
    from vitkit.run_list import compare_runs, find_runs, run_info

    words = list(args or [])
    if words[:1] == ["compare"]:
        if len(words) != 3:
            raise VitkitError("vitkit runs compare needs two run folders: vitkit runs compare runs/A runs/B")
        _print_comparison(Path(words[1]), Path(words[2]), *compare_runs(Path(words[1]), Path(words[2])))
        return
    if len(words) > 1:
        raise VitkitError(f"vitkit runs takes one folder, got {len(words)}: {' '.join(words)}")
    root = Path(words[0]) if words else Path("runs")
    found = find_runs(root)
    table = Table("run", "model", "data", "best", "status", "last written", title=f"runs under {root}")
    for info in map(run_info, found):
        colour = {"finished": "green", "running": "cyan", "stopped": "yellow"}.get(info.status, "red")
        table.add_row(
            escape(str(info.path)), info.recipe, escape(info.data), info.best, f"[{colour}]{info.status}", info.date
        )
    console.print(table if found else f"no vitkit runs under {root}", highlight=False)


def _print_comparison(a: Path, b: Path, differ: list[tuple[str, Any, Any]], metrics: list[tuple[str, Any, Any]]):
    def shown(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        return escape(str(value)) if value is not None else "-"

    recipe = Table("recipe field", str(a), str(b), title="recipe fields that differ")
    for name, va, vb in differ:
        recipe.add_row(name, shown(va), shown(vb))
    console.print(recipe if differ else "the two recipes are the same", highlight=False)
    table = Table("metric", str(a), str(b), title="metrics")
    for name, va, vb in metrics:
        table.add_row(name, shown(va), shown(vb))
    console.print(table)


@advise_app.command("freeze")
def advise_freeze_command(
    train_size: Annotated[int, typer.Option(help="Labelled training images.")],
    similarity: Annotated[
        str, typer.Option(help="How close your images are to the pretraining data: high, medium or low.")
    ],
    model: Annotated[str | None, typer.Option(help="timm model name, to count trainable parameters.")] = None,
    num_classes: Annotated[int, typer.Option(help="Classes of your task (for the head size).")] = 10,
) -> None:
    """Recommend a fine-tuning strategy (head, lora, partial, full) with its settings and the reasons."""
    from vitkit.plan.freeze import advise_freeze

    advice = advise_freeze(train_size, similarity, model, num_classes)
    table = Table(title="fine-tuning advice", show_header=False, title_justify="left")
    table.add_row("strategy", advice.strategy)
    table.add_row("settings", escape(" ".join(f"--set {o}" for o in advice.overrides()) or "(recipe defaults)"))
    for i, reason in enumerate(advice.reasons + advice.notes):
        table.add_row("why" if i == 0 else "", reason)
    if advice.trainable is not None and advice.total:
        share = advice.trainable / advice.total
        table.add_row("trainable", f"{advice.trainable:,} of {advice.total:,} parameters ({share:.2%})")
    console.print(table)
    sets = "".join(f" --set {o}" for o in advice.overrides())
    command = f"vitkit train --recipe finetune-{advice.strategy} --pretrained SOURCE --data DIR{sets}"
    console.print(command, highlight=False, markup=False, soft_wrap=True)


@advise_app.command("recipe")
def advise_recipe_command(
    data: Annotated[str, typer.Option(help="Any --data source: folder, manifest.csv, arrays.npz, hf:, builtin:.")],
    epochs_budget: Annotated[
        int | None,
        typer.Option(help="Budget in passes over the training images (default: about 200,000 images seen)."),
    ] = None,
    minutes: Annotated[
        float | None, typer.Option(help="Budget in minutes of training on this machine (its speed is measured).")
    ] = None,
    pretrained: Annotated[str | None, typer.Option(help="Start from these weights (timm name, folder, file).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the recipe to this file (default: print it).")] = None,
) -> None:
    """Inspect the data and print a training recipe for it and the budget, every choice with its reason."""
    from vitkit.data.sources import load_source
    from vitkit.plan.advise import advise_for_budget, is_advised_recipe, profile_data, render_yaml

    if out is not None and out.exists() and not is_advised_recipe(out):
        raise VitkitError(
            f"--out {out}: the file exists and was not written by vitkit advise recipe. Choose a new path."
        )
    with console.status("reading the data"):
        profile = profile_data(load_source(data))
    with console.status("measuring the training speed" if minutes is not None else "advising"):
        advice = advise_for_budget(profile, epochs_budget, minutes, pretrained)
    text = render_yaml(advice, profile)
    if out is None:
        console.print(text, highlight=False, markup=False, soft_wrap=True, end="")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, text)
    console.print(
        f"wrote {out}. Train with: vitkit train --recipe {out} --data {data} --out runs/NAME", highlight=False
    )


@app.command("models")
def models_command(
    max_params: Annotated[str | None, typer.Option(help="Largest model, e.g. 30M or 300k.")] = None,
    max_latency_ms: Annotated[
        float | None, typer.Option(min=0.001, help="Slowest batch-1 forward on this machine, in milliseconds.")
    ] = None,
    img_size: Annotated[int, typer.Option(min=1, help="Your image size: FLOPs and latency are counted at it.")] = 224,
    train_size: Annotated[
        int | None, typer.Option(min=1, help="Your training images: the recommendation follows it.")
    ] = None,
    pretrained_only: Annotated[bool, typer.Option(help="Leave out the from-scratch rows.")] = False,
    top: Annotated[int, typer.Option(min=1, help="Rows to show, best published top-1 first.")] = 10,
    latency: Annotated[bool, typer.Option(help="Measure each shown model's latency here.")] = True,
) -> None:
    """ViT-family models to start from: parameters and FLOPs, published ImageNet top-1, latency here, and a
    recommendation for your data size."""
    from vitkit.plan.models import TABLE_SOURCE, candidates, parse_count, recommend, select

    limit = parse_count(max_params) if max_params else None
    found = candidates(img_size, pretrained_only)
    chosen = select(found, max_params=limit, max_latency_ms=max_latency_ms, top=top, measure=latency, img_size=img_size)
    device = f"this CPU, {torch_threads()} threads"
    table = Table(title="ViT-family models", title_justify="left")
    table.add_column("model", overflow="fold")
    for column in ("family", "params", f"GFLOPs @{img_size}", "ImageNet top-1 (at px)", f"latency ms ({device})"):
        table.add_column(column)
    for c in chosen:
        top1 = f"{c.top1:.1f}% ({c.top1_size})" if c.top1 is not None else "train on your data"
        measured = f"{c.latency_ms:.1f}" if c.latency_ms is not None else "-"
        table.add_row(c.name, c.family, f"{c.params / 1e6:.1f}M", f"{c.flops / 1e9:.2f}", top1, measured)
    console.print(table)
    console.print(f"top-1: {TABLE_SOURCE}", highlight=False)
    for line in recommend(chosen, train_size, img_size):
        console.print(f"- {line}", highlight=False)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


@plan_app.command("lora")
def plan_lora_command(
    model: Annotated[str, typer.Option(help="timm model name, e.g. vit_base_patch16_224.")],
    rank: Annotated[int, typer.Option(help="LoRA rank r.")] = 8,
    alpha: Annotated[int, typer.Option(help="LoRA alpha (the update is scaled by alpha / r).")] = 16,
    targets: Annotated[str, typer.Option(help="Adapted Linears: q, k, v (or qkv), proj, fc1, fc2.")] = "q,v",
    num_classes: Annotated[int, typer.Option(help="Classes of your task (the head trains too).")] = 10,
    sweep: Annotated[str, typer.Option(help="Ranks for the sweep table, comma-separated.")] = "4,8,16,32,64",
) -> None:
    """Trainable parameters, adapter file size and memory saved by LoRA, and a rank sweep."""
    from vitkit.plan.lora import parse_targets, plan_lora, rank_sweep

    chosen = parse_targets(targets)
    try:
        ranks = [int(r) for r in sweep.split(",") if r.strip()]
    except ValueError:
        raise VitkitError(f"--sweep {sweep}: give ranks as comma-separated integers, e.g. 4,8,16.") from None
    plan = plan_lora(model, rank, alpha, chosen, num_classes)
    table = Table(title=f"LoRA on {model}", show_header=False, title_justify="left")
    table.add_row("rank / alpha / targets", f"r={rank}, alpha={alpha}, {', '.join(plan.targets)}")
    table.add_row("trainable", f"{plan.trainable:,} of {plan.total:,} parameters ({plan.share:.2%})")
    table.add_row("adapters / head", f"{plan.adapter:,} / {plan.trainable - plan.adapter:,}")
    table.add_row("checkpoint weights", f"{plan.file_bytes / 2**20:.2f} MiB (adapters + head, fp32 safetensors)")
    table.add_row(
        "memory saved",
        f"{plan.saved_bytes / 2**30:.2f} GiB of weights, gradients and AdamW state against full fine-tuning "
        f"({plan.full_state_bytes / 2**30:.2f} GiB); activations are not included",
    )
    console.print(table)
    if plan.adapter >= plan.adapted:
        console.print(
            f"[yellow]at rank {rank} the adapters ({plan.adapter:,}) hold as many parameters as the weights they "
            f"adapt ({plan.adapted:,}) or more: LoRA is no longer a low-rank update. It pays at ranks well below "
            "the layers' width (the sweep below); for more capacity, add targets or fine-tune fully.[/yellow]"
        )
    rows = Table("rank", "alpha", "trainable", "share", "file MiB", "saved GiB", title="rank sweep (alpha / r fixed)")
    for p in rank_sweep(model, ranks, alpha / rank, chosen, num_classes):
        saved = f"{p.saved_bytes / 2**30:.2f}"
        rows.add_row(
            str(p.rank), str(p.alpha), f"{p.trainable:,}", f"{p.share:.2%}", f"{p.file_bytes / 2**20:.2f}", saved
        )
    console.print(rows)


@plan_app.command("memory")
def plan_memory_command(
    recipe: Annotated[
        str, typer.Argument(metavar="RECIPE", help="A shipped recipe name, a recipe YAML file or a run folder.")
    ],
    batch: Annotated[
        int | None, typer.Option(help="Images per process (default: the recipe's train.batch_size).")
    ] = None,
    precision: Annotated[str | None, typer.Option(help="fp32, bf16 or fp16 (default: the recipe's).")] = None,
    grad_checkpointing: Annotated[bool, typer.Option(help="Plan with gradient checkpointing.")] = False,
    attn: Annotated[str | None, typer.Option(help="fused or math attention (default: the recipe's).")] = None,
    strategy: Annotated[str | None, typer.Option(help="full, partial, head or lora (default: the recipe's).")] = None,
    device_memory: Annotated[str, typer.Option(help="Memory of one device, e.g. 24GB, 80GiB.")] = "24GB",
    num_classes: Annotated[int, typer.Option(help="Classes of the head.")] = 1000,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe field: section.key=value.")] = None,
) -> None:
    """Predict the memory of one training step: weights, gradients, AdamW, EMA and the activations autograd
    saves (traced on the model itself), the largest batch that fits, and the switches that make it fit."""
    from vitkit.plan.memory import parse_size, plan_memory, switches

    overrides = list(set_ or [])
    for field, value in (("train.precision", precision), ("model.attn_impl", attn), ("finetune.strategy", strategy)):
        if value is not None:
            overrides.append(f"{field}={value}")
    if grad_checkpointing:
        overrides.append("model.grad_checkpointing=true")
    cfg = load_recipe(recipe, overrides)
    try:
        device = parse_size(device_memory)
    except ValueError as exc:
        raise VitkitError(f"--device-memory {device_memory}: {exc}.") from None
    size = cfg.train.batch_size if batch is None else batch
    if size < 1 or num_classes < 1:
        raise VitkitError("--batch and --num-classes need at least 1.")
    with console.status("tracing one forward pass on the meta device"):
        plan = plan_memory(cfg, size, num_classes)
    _print_memory_plan(plan, cfg.model.name, device)
    if plan.peak > device:
        with console.status("trying the switches"):
            options = switches(cfg, plan, device, num_classes)
        console.print("switches, one at a time (predicted peak, what it costs):")
        for option in options:
            verdict = "fits" if option.plan.peak <= device else "still too large"
            console.print(
                f"  {option.change:<52} {_gib(option.plan.peak):>9}  {verdict}; {option.cost}", highlight=False
            )


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _print_memory_plan(plan: Any, model: str, device: int) -> None:
    console.print(
        f"{model}: batch {plan.batch}, {plan.precision}, {plan.attention} attention, "
        f"{'gradient checkpointing, ' if plan.checkpointing else ''}{plan.strategy} fine-tuning, "
        f"{plan.parameters / 1e6:.1f}M parameters ({plan.trainable / 1e6:.2f}M trained)",
        highlight=False,
    )
    rows = [
        ("weights (fp32)", plan.weights),
        ("gradients", plan.gradients),
        ("AdamW moments", plan.optimizer),
        ("EMA copy", plan.ema_bytes),
        ("saved activations", plan.activations),
        ("backward workspace", plan.workspace),
        ("predicted peak", plan.peak),
    ]
    for name, value in rows:
        console.print(f"  {name:<22} {_gib(value):>10}", highlight=False)
    blocks = {k: v for k, v in plan.per_block().items() if k.startswith("block")}
    if blocks:
        first = next(iter(blocks.values()))
        console.print(f"  per block: {first / 2**20:.1f} MiB saved x {len(blocks)} blocks", highlight=False)
    closed = plan.closed_form_per_layer()
    if closed:
        console.print(
            f"  Korthikanti et al. closed form, fp16 with dropout, per layer: {closed / 2**20:.1f} MiB "
            f"(s={plan.tokens}, b={plan.batch}, h={plan.width}, a={plan.heads})",
            highlight=False,
        )
    fits = plan.largest_batch(device)
    state = "fits in" if plan.peak <= device else "does not fit in"
    console.print(f"{state} {device / 2**30:.1f} GiB; the largest batch that fits: {fits}", highlight=False)


@app.command("tune")
def tune_command(
    data: Annotated[str, typer.Option(help="The data to tune on (any --data form).")],
    out: Annotated[Path, typer.Option(help="The study folder: trials, study.db, best.yaml (again: continue).")],
    base: Annotated[
        str,
        typer.Option(
            help="The recipe whose trick strengths are searched (default: advised, the advised recipe for the data)."
        ),
    ] = "advised",
    trials: Annotated[int | None, typer.Option(help="Trials to run now (with --budget: whichever ends first).")] = None,
    budget: Annotated[str | None, typer.Option(help="Wall-clock budget for new trials: 90m, 2h, 3600s.")] = None,
    holdout: Annotated[float, typer.Option(help="Share of the training split the trials validate on.")] = 0.2,
    retrain: Annotated[bool, typer.Option(help="Then train the winner on the whole training split.")] = False,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe field in every trial.")] = None,
) -> None:
    """Search trick strengths (lr, weight decay, drop path, smoothing, crops, RandAugment, erasing, Mixup, CutMix)
    on a held-out part of the training split with Optuna (TPE, Hyperband pruning); resumable."""
    from vitkit.plan.tune import ADVISED, advised_base, check_limits, search_cost, tune, winner_margin
    from vitkit.plan.tune import retrain as retrain_best

    budget_seconds = parse_duration(budget) if budget else None
    check_limits(trials, budget_seconds)  # before the data is read for the advised base
    overrides = [*(set_ or []), f"data.source={data}", f"data.holdout={holdout}"]
    if base == ADVISED:
        with console.status("reading the data"):
            cfg, said = advised_base(data, overrides)
        console.print(said + (f", with --set {', '.join(set_)}" if set_ else ""), highlight=False)
    else:
        cfg = load_recipe(base, overrides)
    result = tune(cfg, out, trials=trials, budget_seconds=budget_seconds, console=console)
    table = Table(title=f"{result.counts()}; best {result.best_value:.4f}")
    finished = result.trials - result.pruned - result.failed - result.running
    if finished < RANKED_TRIALS:
        table.caption = f"from {finished} finished trials: a first ranking, firmer after a few dozen"
    table.add_column("setting")
    table.add_column("importance")
    for name, share in result.importances.items():
        table.add_row(name, f"{share:.2f}")
    if result.importances:
        console.print(table)
        if result.unvaried:
            console.print(f"not varied yet, so not ranked: {', '.join(result.unvaried)}", highlight=False)
    else:
        console.print(
            f"{table.title}; the finished trials cannot rank the settings yet (too few, or equal scores).",
            highlight=False,
        )
    console.print(f"the winner: {winner_margin(result)}", highlight=False)
    console.print(search_cost(result), highlight=False)
    console.print(
        f"best recipe: {result.best_recipe} (train it: vitkit train --recipe {result.best_recipe} --data "
        f"{data} --out runs/NAME)",
        highlight=False,
    )
    if retrain:
        final = retrain_best(result, out, console)
        console.print(f"the winner, trained on the whole training split: {final}", highlight=False)


# finished trials from which PED-ANOVA's importances (the best tenth against the rest) begin to settle
RANKED_TRIALS = 30


def parse_duration(text: str) -> float:
    """'90m', '2h', '3600s' or '3600' as seconds."""
    import re

    match = re.fullmatch(r"\s*([0-9.]+)\s*([smh]?)\s*", text.lower())
    if match is None:
        raise VitkitError(f"--budget {text!r}: give a duration like 90m, 2h or 3600s.")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


@app.command("codegen")
def codegen_command(
    source: Annotated[
        str, typer.Argument(metavar="RUN_OR_RECIPE", help="A run folder, a shipped recipe name or a recipe YAML file.")
    ],
    data: Annotated[str | None, typer.Option(help="The image folder the script trains on by default.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe field.")] = None,
) -> None:
    """A standalone training script (torch, torchvision, timm only) that reproduces the recipe: vitkit codegen
    RUN > train.py."""
    from vitkit.plan.codegen import generate

    cfg = load_recipe(source, set_ or [])  # a run folder stands for the recipe it was trained with
    typer.echo(generate(cfg, data, origin=source), nl=False)


@app.command("schedule")
def schedule_command(
    recipe: Annotated[str, typer.Argument(help="Shipped recipe name, recipe YAML file or run folder.")],
    train_size: Annotated[
        int | None, typer.Option(help="Training images (default: the recipe's built-in data size).")
    ] = None,
    processes: Annotated[int, typer.Option(help="Processes the run will train on (global batch, lr scaling).")] = 1,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a recipe field.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Also draw every parameter group's lr into this PNG.")] = None,
) -> None:
    """The learning rate the run will use at every update, stepped through its own scheduler."""
    from vitkit.plan.schedule import is_our_plot, lr_schedule, plot_schedule, sparkline

    cfg = load_recipe(recipe, set_ or [])
    if train_size is None:
        if not (cfg.data.source or "").startswith("builtin:"):
            raise VitkitError("--train-size N: give the number of training images (the recipe names no built-in data).")
        train_size = cfg.data.synthetic_train_size
    if processes < 1:
        raise VitkitError("--processes needs at least 1.")
    if plot is not None:
        from vitkit.run_folder import make_parent_folder

        if plot.suffix.lower() != ".png":
            raise VitkitError(f"--plot {plot}: name a .png file.")
        if plot.exists() and not is_our_plot(plot):
            raise VitkitError(f"--plot {plot}: the file exists and is not a vitkit schedule plot. Choose another path.")
        make_parent_folder(plot, "--plot")
    schedule = lr_schedule(cfg, train_size, processes)
    head, total = schedule.head, len(schedule.lrs)
    console.print(
        f"{recipe}: {total:,} updates ({schedule.updates_per_epoch:,} per epoch x {cfg.schedule.epochs} epochs) of "
        f"{schedule.global_batch} images; warmup {schedule.warmup_updates:,} updates to peak lr "
        f"{schedule.peak_lr:.3g}, cosine to {cfg.schedule.min_lr:g}; {len(schedule.lrs[0])} parameter groups",
        highlight=False,
    )
    console.print(f"{sparkline(head)}  {head[0]:.2g} -> {max(head):.3g} -> {head[-1]:.2g}", highlight=False)
    if len({round(lr, 12) for lr in schedule.lrs[schedule.warmup_updates]}) > 1:
        at_peak = sorted(set(schedule.lrs[schedule.warmup_updates]))
        console.print(
            f"at the peak, by group (layer decay): {', '.join(f'{lr:.3g}' for lr in at_peak)}", highlight=False
        )
    if plot is not None:
        console.print(f"plot: {plot_schedule(schedule, plot).resolve()}", highlight=False)


@recipes_app.command("list")
def recipes_list() -> None:
    """The shipped recipes and what each is for."""
    table = Table("recipe", "description")
    for name, path in sorted(shipped_recipes().items()):
        data, _ = load_raw(str(path))
        table.add_row(name, str(data.get("description", "")))
    console.print(table)


@recipes_app.command("show")
def recipes_show(
    name: Annotated[str, typer.Argument(help="Recipe name, YAML path or run folder.")],
    resolved: Annotated[bool, typer.Option(help="Show every effective value, including the scaled lr.")] = False,
    set_: SetOption = None,
) -> None:
    """Print a recipe as written, or --resolved with all defaults, overrides and the batch-scaled lr."""
    if not resolved:
        if set_:
            raise VitkitError("--set only applies with --resolved (it changes the effective values).")
        load_recipe(name)  # a clear error for what is not a valid recipe, before printing it
        _, path = load_raw(name)
        sys.stdout.write(path.read_text())
        return
    cfg = load_recipe(name, list(set_ or []))
    text = recipe_to_yaml(cfg)
    effective = {
        "effective": {
            "batch_per_update": cfg.effective_batch(),
            "peak_lr": cfg.effective_lr(),
            "rule": f"lr x {cfg.effective_batch()} / {cfg.optim.lr_base_batch} ({cfg.optim.lr_scaling})",
        }
    }
    sys.stdout.write(text + yaml.safe_dump(effective, sort_keys=False))


def fields_markdown() -> str:
    """The recipe reference (docs/recipe-reference.md), generated from the schema."""
    lines = [
        "# Recipe reference",
        "",
        "Generated from the recipe schema by `vitkit recipes fields --markdown`; every field can be set in a recipe",
        "YAML file or with `--set SECTION.FIELD=VALUE`.",
    ]
    section = ""
    for name, desc, default in recipe_fields():
        if "." not in name:
            continue
        head = name.split(".")[0]
        if head != section:
            section = head
            lines += ["", f"## {section}", "", "| field | default | description |", "|---|---|---|"]
        lines.append(f"| `{name}` | `{default}` | {desc} |")
    return "\n".join(lines) + "\n"


def _recipe_values(name: str) -> dict[str, Any]:
    """Every field's value in the recipe `name`, by dotted name."""
    cfg = load_recipe(name)
    values: dict[str, Any] = {}
    for section, fields in cfg.model_dump().items():
        for field, value in fields.items() if isinstance(fields, dict) else []:
            values[f"{section}.{field}"] = value
    return values


@recipes_app.command("fields")
def recipes_fields(
    recipe: Annotated[
        str | None, typer.Option(help="Show this recipe's values instead of the schema defaults.")
    ] = None,
    markdown: Annotated[bool, typer.Option(help="Print the Markdown recipe reference instead of a table.")] = False,
) -> None:
    """Every recipe field with its default (or a recipe's own value) and description."""
    if markdown:
        sys.stdout.write(fields_markdown())
        return
    values = _recipe_values(recipe) if recipe else {}
    table = Table("field", f"value in {recipe}" if recipe else "default", "description")
    for name, desc, default in recipe_fields():
        if "." in name:
            table.add_row(name, escape(str(values.get(name, default))), desc)
    console.print(table)


def _leave_process_group() -> None:
    if os.environ.get("WORLD_SIZE", "1") != "1":  # only a launched process has a group (and torch imported)
        from vitkit.train.ranks import leave_process_group

        leave_process_group()


def main() -> None:
    """Entry point. Typer's standalone mode gives usage errors their short message and status 2, and Ctrl-C status
    130; user errors print a one-paragraph message (no traceback) and exit with 2; a preempted run exits with 75
    (resume it), a diverged one with 3."""
    try:
        app(standalone_mode=True)
    except VitkitError as exc:
        _leave_process_group()
        label = "[bold yellow]stopped:[/bold yellow]" if exc.exit_code != 2 else "[bold red]error:[/bold red]"
        if PROCESS == 0 or not isinstance(exc, RankFailed):  # process 0 also reports the failure of another
            where = f"(process {PROCESS}) " if PROCESS else ""
            Console(stderr=True).print(f"{label} {where}{exc}", highlight=False)
        raise SystemExit(exc.exit_code) from None
    except SystemExit:
        _leave_process_group()
        raise
    except OSError as exc:  # a file the command needs that the system refuses: name it, without a traceback
        if exc.filename is None:
            raise
        _exit_with_error(f"{exc.filename}: {exc.strerror or exc}. Check the path, its permissions and the free space.")
    except KeyboardInterrupt:  # outside a command (typer turns one inside a command into status 130 itself)
        Console(stderr=True).print("interrupted", highlight=False)
        raise SystemExit(130) from None
    except Exception as exc:  # training names its own settings (train/loop.py); any other command, this
        if not OutOfMemory.recognise(exc):
            raise
        _exit_with_error(
            f"out of memory ({OutOfMemory.reason(exc)}). Give fewer images at once (--batch, --max-batch) or a "
            "smaller model, or run where there is more memory."
        )


def _exit_with_error(message: str) -> NoReturn:
    """A user's problem, said in one message without a traceback: exit status 2."""
    _leave_process_group()
    Console(stderr=True).print(f"[bold red]error:[/bold red] {message}", highlight=False)
    raise SystemExit(2) from None
