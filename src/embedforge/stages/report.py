"""report: one self-contained HTML page on the student against its teacher, for someone who ran nothing.

Reads the evaluation (``metrics/eval.json`` and ``plots/eval/*.csv``) and the training
summary (``metrics/train.json``): without them there is nothing to report, so each
is required. The training curves, the data manifest, the validation results and
``dvc.lock`` only add context, so a missing one shows as "not available". Data too
thin for a figure (a run of one step, say) is said in words instead of drawn. Writes,
all at once:

- ``reports/index.html``: the page, figures embedded as data URIs, CSS inline;
- ``reports/figures/<name>.png``: the same figures as files;

then logs ``reports/`` to the stage's MLflow run.

The quality/speed figure puts this run's student (from ``metrics/eval.json``) among every student evaluated
before it in the MLflow experiment. Those earlier runs only add context: with tracking off, or a store that
cannot be read, the figure shows this run and the teacher, and says why.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from embedforge import runs, tracking
from embedforge.config import Params, flatten
from embedforge.dvcfile import DVC_LOCK
from embedforge.errors import DataError
from embedforge.files import atomic_dir, read_object
from embedforge.paths import (
    EVAL_METRICS_PATH,
    EVAL_PLOTS_DIR,
    EXPORT_METRICS_PATH,
    MANIFEST_PATH,
    REPORT_DIR,
    TOKEN_STATS_PATH,
    TRAIN_METRICS_PATH,
    TRAIN_PLOTS_DIR,
    VALIDATION_RESULTS_PATH,
)
from embedforge.redact import redact, redacted
from embedforge.report import figures, html

PAGE_NAME = "index.html"
FIGURES_DIRNAME = "figures"
EVALUATE = "embedforge evaluate"
TRAIN = "embedforge train"
EVAL_KEYS = (  # what the summary reads
    *(f"{model}.{section}" for model in html.MODELS for section in ("sts", "separation", "retrieval", "speed", "size")),
    "speed_ratio",
    "size_ratio",
    *(f"targets.{target}" for target in ("similar_min", "dissimilar_max", "min_gap")),
    *(f"verdict.{key}" for key in ("passed", "headline", "checks", "split_roles")),
)
GENERATION_COLUMNS = ("epoch", "prompt", "continuation")
EXAMPLES_PER_LABEL = 2
EXAMPLE_CHARS = 160
THIS_RUN = "this run"  # this run's point where MLflow does not hold its evaluation
CAUSE_CHARS = 200


def read_csv(
    path: Path, command: str, columns: tuple[str, ...], empty_ok: bool = False, keep_default_na: bool = True
) -> pd.DataFrame:
    """A CSV with at least ``columns`` and one row, else a DataError naming the file and its maker.

    ``empty_ok`` takes a table without rows as it is, whatever its header: train writes a log that stayed
    empty as its key column alone, and the figures say in words that there is nothing to draw.
    """
    if not path.is_file():
        raise DataError(f"{path}: missing; run `{command}` first")
    try:
        frame = pd.read_csv(path, keep_default_na=keep_default_na)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc}); run `{command}` again") from None
    if empty_ok and frame.empty:
        return frame
    absent = [column for column in columns if column not in frame.columns]
    if absent:
        raise DataError(f"{path}: no column {', '.join(absent)}; run `{command}` again")
    if frame.empty:
        raise DataError(f"{path}: no rows; run `{command}` again")
    return frame


def dvc_outs(lock: dict[str, Any]) -> list[html.DvcOut]:
    """Each stage's outputs in dvc.lock with their md5: which version of every artifact this report saw."""
    return [
        html.DvcOut(stage, str(out.get("path")), str(out.get("md5", "unknown")))
        for stage, entry in (lock.get("stages") or {}).items()
        for out in entry.get("outs", [])
    ]


def read_dvc_lock() -> list[html.DvcOut] | None:
    if not DVC_LOCK.is_file():
        return None
    try:
        lock = yaml.safe_load(DVC_LOCK.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"{DVC_LOCK}: unreadable ({exc}); run `dvc repro` again") from None
    return dvc_outs(lock)


def lineage() -> html.Lineage:
    tags = tracking.lineage_tags()
    return html.Lineage(
        report_run_id=tracking.current().run_id,
        parent_run_id=os.environ.get(tracking.PARENT_RUN_ENV) or None,
        git_commit=tags["git.commit"],
        git_dirty=tags["git.dirty"],
        dvc_outs=read_dvc_lock(),
    )


def label_examples(points: pd.DataFrame) -> list[tuple[str, str]]:
    """A few sentences of each label of the map, shortened, so a reader knows what each colour holds."""
    labelled = points.assign(label=points["label"].fillna("unlabelled").astype(str))
    chosen = labelled.groupby("label", sort=True).head(EXAMPLES_PER_LABEL).sort_values("label", kind="stable")
    return [
        (label, text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…")
        for label, text in zip(chosen["label"], chosen["text"].fillna("").astype(str), strict=True)
    ]


def draw(
    evaluation: dict[str, Any],
    plots: dict[str, pd.DataFrame | None],
    frontier: figures.Drawing,
    tokens: dict[str, Any] | None,
) -> tuple[dict[str, bytes], dict[str, tuple[str, ...]]]:
    """Every figure the inputs allow, by name, and the sentences standing for what they were too thin to show.

    The training curves need plots/train/steps.csv, the text lengths data/tokens/stats.json.
    """
    targets = evaluation["targets"]
    drawings: dict[str, figures.Drawing] = {"frontier": frontier}
    if tokens is not None:
        drawings["text_lengths"] = figures.text_lengths(tokens.get("splits", {}), tokens.get("max_length"))
    if plots["steps"] is not None:
        drawings["training_curves"] = figures.training_curves(plots["steps"], plots["epochs"])
    drawings["cosine_histograms"] = figures.cosine_histograms(
        plots["separation"], targets["similar_min"], targets["dissimilar_max"]
    )
    drawings["sts_scatter"] = figures.sts_scatter(plots["sts"][plots["sts"]["model"] == "student"])
    drawings["embedding_map"] = figures.embedding_map(plots["embedding_map"])
    pngs = {name: drawing.png for name, drawing in drawings.items() if drawing.png is not None}
    notes = {name: drawing.notes for name, drawing in drawings.items() if drawing.notes}
    return pngs, notes


def logged_students(uri: str, experiment: str, split: str) -> list[runs.Point]:
    try:
        log = runs.RunLog(uri, experiment)
    except runs.NoExperiment:
        return []
    return [point for point in runs.logged_points(log, split) if not runs.is_teacher(point)]


def earlier_students(cfg: Params, split: str) -> tuple[list[runs.Point], str | None]:
    """The students the MLflow experiment holds, or none and the sentence saying why (tracking off, a store that
    cannot be read): the report is about this run, so it never fails for want of the others."""
    if not cfg.tracking.enabled:
        return [], "MLflow tracking is off (tracking.enabled: false), so no other run is shown."
    uri = tracking.tracking_uri(cfg)
    error = tracking.server_unreachable(uri, cfg.tracking.timeout_s)
    if error is None:
        try:
            return logged_students(uri, cfg.tracking.experiment, split), None
        except tracking.tracking_errors() as failure:
            error = failure
    cause = redact(tracking.first_cause(error))[:CAUSE_CHARS]
    return [], f"The MLflow store at {redact(uri)} could not be read ({cause}), so no other run is shown."


def place_this_run(this: runs.Point, students: list[runs.Point]) -> tuple[list[runs.Point], runs.Point]:
    """The students with this run's point among them, and that point. A logged point with this very point's
    numbers is its own (evaluate or export logged them), so it stands for it, named by its pipeline run."""
    numbers = (this.sts_spearman, this.speed_ratio)
    logged = next((point for point in students if (point.sts_spearman, point.speed_ratio) == numbers), None)
    return (students, logged) if logged else ([*students, this], this)


def exported_points(cfg: Params, split: str) -> list[runs.Point]:
    """This run's ONNX variants (metrics/export.json), where export ran and exported the student."""
    if not EXPORT_METRICS_PATH.is_file():
        return []
    variants = read_object(EXPORT_METRICS_PATH, "embedforge export").get("variants", {})
    return [
        runs.Point(
            THIS_RUN,
            f"{cfg.model.kind}, {name}",
            figures_of["sts"].get(split, {}).get("spearman"),
            figures_of["speed_ratio"],
        )
        for name, figures_of in variants.items()
        if name in runs.EXPORT_VARIANTS
    ]


def point_label(point: runs.Point) -> str:
    if runs.is_teacher(point):
        return "the teacher"
    return point.family if point.run == THIS_RUN else f"{point.family}, {point.run}"


def coordinates(point: runs.Point) -> str:
    return f"STS Spearman {point.sts_spearman:.3f} at {point.speed_ratio:.2f}× the teacher's speed"


def placement(found: runs.Frontier, this: runs.Point, split: str) -> str:
    """Where this run sits: on the frontier, or which points beat it."""
    if not this.measured:
        return f"This run's STS Spearman on {split} is undefined, so it has no place on the frontier."
    beaten_by = found.dominating(this)
    where = f"This run ({point_label(this)}: {coordinates(this)})"
    if not beaten_by:
        return f"{where} is on the frontier: no other point is at least as good on both and better on one."
    others = "; ".join(f"{point_label(point)}: {coordinates(point)}" for point in beaten_by)
    return f"{where} is dominated, at least matched on both and beaten on one, by {others}."


def company(others: int, unavailable: str | None) -> str:
    if unavailable:
        return unavailable
    if not others:
        return "MLflow holds no other evaluated student yet, so the figure shows this run and the teacher."
    return f"Beside it: {others} other evaluated student(s) from MLflow, and the teacher."


def frontier_view(cfg: Params, evaluation: dict[str, Any]) -> tuple[figures.Drawing, tuple[str, ...]]:
    """The quality/speed figure and the sentences under it: where this run sits, beside what, and what was left
    out for a missing number."""
    split = next(iter(evaluation["student"]["sts"]), None)
    if split is None:
        return figures.Drawing(None, (f"{EVAL_METRICS_PATH} has no STS split: no quality to place runs by.",)), ()
    students, unavailable = earlier_students(cfg, split)
    this = runs.Point(
        THIS_RUN, cfg.model.kind, evaluation["student"]["sts"][split].get("spearman"), evaluation["speed_ratio"]
    )
    points, this = place_this_run(this, students)
    variants = []
    for point in exported_points(cfg, split):
        points, placed = place_this_run(point, points)
        variants.append(placed)
    teacher = evaluation["teacher"]["sts"].get(split, {}).get("spearman")
    found = runs.frontier([*points, runs.Point(runs.TEACHER, runs.TEACHER, teacher, 1.0)])
    plotted = found.table().assign(
        label=[point_label(point) for point in found.points],
        this_run=[point == this for point in found.points],
        exported=[point in variants for point in found.points],
    )
    others = [point for point in found.points if point not in (this, *variants) and not runs.is_teacher(point)]
    sentences = [placement(found, this, split), *(placement(found, point, split) for point in variants)]
    sentences.append(company(len(others), unavailable))
    left_out = [point for point in found.left_out if point != this]
    if left_out:
        sentences.append(runs.missing_numbers(left_out, split) + ".")
    return figures.frontier(plotted, split), tuple(sentences)


def read_plots(scored_sts: bool) -> dict[str, pd.DataFrame | None]:
    """The plot CSVs: the evaluation's are required (sts.csv with rows where an STS split was scored), the training
    curves optional."""
    steps, epochs = TRAIN_PLOTS_DIR / "steps.csv", TRAIN_PLOTS_DIR / "epochs.csv"
    generations = TRAIN_PLOTS_DIR / "generations.csv"  # the causal LM's; header only for the other objectives
    plots = {
        "sts": read_csv(
            EVAL_PLOTS_DIR / "sts.csv", EVALUATE, ("split", "model", "gold", "predicted"), empty_ok=not scored_sts
        ),
        "separation": read_csv(EVAL_PLOTS_DIR / "separation.csv", EVALUATE, ("model", "kind", "cosine")),
        "embedding_map": read_csv(EVAL_PLOTS_DIR / "embedding_map.csv", EVALUATE, ("x", "y", "label", "text")),
        "steps": (
            read_csv(steps, TRAIN, ("step", figures.STEP_LOSS, figures.STEP_LR), empty_ok=True)
            if steps.is_file()
            else None
        ),
        "epochs": read_csv(epochs, TRAIN, ("epoch", "step"), empty_ok=True) if epochs.is_file() else None,
        "generations": (
            read_csv(generations, TRAIN, GENERATION_COLUMNS, empty_ok=True, keep_default_na=False)
            if generations.is_file()
            else None
        ),
    }
    if scored_sts and not (plots["sts"]["model"] == "student").any():
        raise DataError(f"{EVAL_PLOTS_DIR / 'sts.csv'}: no student rows; run `{EVALUATE}` again")
    return plots


def generation_rows(frame: pd.DataFrame | None) -> list[tuple[int, str, str]]:
    if frame is None or frame.empty:
        return []
    return list(
        zip(frame["epoch"].astype(int), frame["prompt"].astype(str), frame["continuation"].astype(str), strict=True)
    )


def generation_notes(cfg: Params, rows: list[tuple[int, str, str]]) -> dict[str, tuple[str, ...]]:
    """A sentence where a causal LM run has no continuations to show; other objectives never have any."""
    if not cfg.train.generates_text or rows:
        return {}
    return {"generations": ("The causal LM logged no continuations (no epoch ended): no table to show.",)}


def run(cfg: Params) -> dict[str, float | str]:
    evaluation = read_object(EVAL_METRICS_PATH, EVALUATE, EVAL_KEYS)
    training = read_object(TRAIN_METRICS_PATH, TRAIN)
    plots = read_plots(bool(evaluation["student"]["sts"]))
    frontier, frontier_sentences = frontier_view(cfg, evaluation)
    tokens = read_object(TOKEN_STATS_PATH, "embedforge tokenize") if TOKEN_STATS_PATH.is_file() else None
    drawn, notes = draw(evaluation, plots, frontier, tokens)
    generations = generation_rows(plots["generations"])
    page = html.Page(
        title=cfg.report.title,
        teacher=cfg.precompute.teacher,
        evaluation=evaluation,
        training=training,
        figures=drawn,
        missing_figures={
            "training_curves": f"no {TRAIN_PLOTS_DIR / 'steps.csv'} (run `{TRAIN}`)",
            "text_lengths": f"no {TOKEN_STATS_PATH} (run `embedforge tokenize`)",
        },
        params=flatten(redacted(cfg.to_dict())),
        lineage=lineage(),
        map_examples=label_examples(plots["embedding_map"]),
        manifest=read_object(MANIFEST_PATH, "embedforge download") if MANIFEST_PATH.is_file() else None,
        validation=(
            read_object(VALIDATION_RESULTS_PATH, "embedforge validate") if VALIDATION_RESULTS_PATH.is_file() else None
        ),
        tokens=tokens,
        generations=generations,
        notes={**notes, **generation_notes(cfg, generations)},
        frontier=frontier_sentences,
    )
    text = html.render(page).encode("utf-8")
    with atomic_dir(REPORT_DIR) as out:
        (out / FIGURES_DIRNAME).mkdir()
        for name, png in drawn.items():
            (out / FIGURES_DIRNAME / f"{name}.png").write_bytes(png)
        (out / PAGE_NAME).write_bytes(text)
    tracking.current().log_artifacts(REPORT_DIR, "report")
    return {"report.figures": len(drawn), "report.bytes": len(text), "report.path": str(REPORT_DIR / PAGE_NAME)}
