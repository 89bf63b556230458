"""The last pipeline runs side by side (``embedforge runs``), what changed between two (``--diff A B``), and the
quality/speed frontier of every evaluated student (``--frontier``).

A row is one ``pipeline`` run of MLflow: a few params that shape the result, the
student's numbers from its evaluate child run, the highest peak memory of its
stage runs, and its duration. A pipeline run in which DVC skipped evaluate has no
new numbers, shown as "-".

The frontier puts each evaluate run's student, each export run's ONNX variants, and the teacher once, on two
axes: STS Spearman on the first of ``evaluate.sts_splits`` and speed relative to the teacher (the teacher is 1).
A student worth keeping is on the Pareto frontier: no other point is at least as good on both and better on one.
"""

from __future__ import annotations

import ast
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from embedforge.config import EvaluateParams
from embedforge.errors import UserError

KEY_PARAMS = (
    "preset",
    "model.kind",
    "model.num_layers",
    "model.hidden_size",
    "train.objective",
    "train.schedule",
    "train.lr",
    "train.epochs",
    "train.batch_size",
)
METRICS = {  # column: metric of the evaluate run ({split} is the first of evaluate.sts_splits)
    "sts_spearman": "eval.student.sts.{split}.spearman",
    "separation_gap": "eval.student.separation.gap",
    "recall_at_10": "eval.student.retrieval.recall_at_10",
    "speed_ratio": "eval.speed_ratio",
}
TEACHER_SPEARMAN = "eval.teacher.sts.{split}.spearman"
TEACHER = "teacher"  # the teacher point's run and family: no run id or model.kind looks like it
PARENT_TAG = "mlflow.parentRunId"
PIPELINE_RUNS = "tags.mlflow.runName = 'pipeline'"
EVALUATE_RUNS = "tags.mlflow.runName = 'evaluate'"
EXPORT_RUNS = "tags.mlflow.runName = 'export'"
EXPORT_METRICS = {  # a variant's numbers in an export run ({variant}: onnx_fp32, onnx_int8)
    "sts_spearman": "export.variants.{variant}.sts.{split}.spearman",
    "speed_ratio": "export.variants.{variant}.speed_ratio",
}
EXPORT_VARIANTS = ("onnx_fp32", "onnx_int8")
NEWEST_FIRST = ["attributes.start_time DESC"]
PAGE_SIZE = 1000  # the most runs MLflow answers with at once
RUN_ID_SHOWN = 8


class NoExperiment(UserError):
    """The MLflow store has no experiment of that name: nothing was tracked there yet."""


class RunLog:
    """Pipeline runs of one experiment in an MLflow store, with their stage runs."""

    def __init__(self, uri: str, experiment: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            raise NoExperiment(f"no MLflow experiment {experiment!r} in {uri}: run the pipeline first")
        self.experiment = experiment
        self.experiment_id = found.experiment_id

    def pipelines(self, last: int) -> list[Any]:
        return self.client.search_runs([self.experiment_id], PIPELINE_RUNS, order_by=NEWEST_FIRST, max_results=last)

    def every(self, filter_string: str) -> list[Any]:
        """Every run matching ``filter_string``, newest first, asked for a page at a time."""
        found, token = [], None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string, max_results=PAGE_SIZE, order_by=NEWEST_FIRST, page_token=token
            )
            found += page
            token = page.token
            if not token:
                return found

    def stages(self, parent_id: str) -> dict[str, Any]:
        children = self.client.search_runs([self.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
        return {run.info.run_name: run for run in children}

    def find(self, prefix: str, last: int = 1000) -> Any:
        matches = [run for run in self.pipelines(last) if run.info.run_id.startswith(prefix)]
        if len(matches) != 1:
            raise UserError(f"runs --diff: {prefix!r} matches {len(matches)} pipeline runs; give more of the run id")
        return matches[0]

    def row(self, parent: Any) -> dict[str, Any]:
        stages = self.stages(parent.info.run_id)
        params = parent.data.params
        row: dict[str, Any] = {
            "run": parent.info.run_id[:RUN_ID_SHOWN],
            "started": pd.to_datetime(parent.info.start_time, unit="ms"),
        }
        row.update({key: params.get(key, "-") for key in KEY_PARAMS})
        evaluation = stages["evaluate"].data.metrics if "evaluate" in stages else {}
        split = first_sts_split(params)
        row.update({column: evaluation.get(name.format(split=split), "-") for column, name in METRICS.items()})
        peaks = [run.data.metrics["peak_rss_mb"] for run in stages.values() if "peak_rss_mb" in run.data.metrics]
        row["peak_rss_mb"] = max(peaks) if peaks else "-"
        ended = parent.info.end_time
        row["minutes"] = (ended - parent.info.start_time) / 60_000 if ended else "-"
        row["stages_run"] = len(stages)
        return row


def first_sts_split(params: dict[str, str]) -> str:
    """The first of evaluate.sts_splits as a pipeline run logged it (the list as text), else the schema's default
    one: a run that logged none, or whose list does not read back (cut short at MLflow's length limit)."""
    try:
        logged = ast.literal_eval(params.get("evaluate.sts_splits", ""))
    except (ValueError, SyntaxError):
        logged = None
    if isinstance(logged, list) and logged and isinstance(logged[0], str):
        return logged[0]
    return EvaluateParams.model_fields["sts_splits"].default[0]


def table(log: RunLog, last: int) -> pd.DataFrame:
    return pd.DataFrame([log.row(run) for run in log.pipelines(last)])


def diff(log: RunLog, first: str, second: str) -> pd.DataFrame:
    """Every param that differs between two pipeline runs, then both runs' key numbers."""
    runs = [log.find(first), log.find(second)]
    names = [run.info.run_id[:RUN_ID_SHOWN] for run in runs]
    params = [run.data.params for run in runs]
    changed = sorted(key for key in set(params[0]) | set(params[1]) if params[0].get(key) != params[1].get(key))
    rows = [{"": key, names[0]: params[0].get(key, "-"), names[1]: params[1].get(key, "-")} for key in changed]
    summaries = [log.row(run) for run in runs]
    rows += [
        {"": column, names[0]: summaries[0][column], names[1]: summaries[1][column]}
        for column in (*METRICS, "peak_rss_mb", "minutes")
    ]
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Point:
    """One model on the quality/speed plane; ``run`` names it (a pipeline run id prefix, or "teacher").

    ``sts_spearman`` and ``speed_ratio`` are None where MLflow holds no such number (an undefined correlation,
    a run logged before the metric existed).
    """

    run: str
    family: str
    sts_spearman: float | None
    speed_ratio: float | None

    @property
    def measured(self) -> bool:
        return all(value is not None and math.isfinite(value) for value in (self.sts_spearman, self.speed_ratio))


def dominates(first: Point, second: Point) -> bool:
    """``first`` is at least as good as ``second`` in quality and in speed, and better in one of them."""
    as_good = first.sts_spearman >= second.sts_spearman and first.speed_ratio >= second.speed_ratio
    return as_good and (first.sts_spearman > second.sts_spearman or first.speed_ratio > second.speed_ratio)


def pareto_optimal(points: Sequence[Point]) -> list[bool]:
    """Whether each measured point is on the Pareto frontier: no other point dominates it.

    Equal points do not dominate each other, so duplicates are on the frontier or off it together. One sweep
    from the fastest down, rather than every pair compared: a team's store may hold thousands of runs. A point
    survives when it is the best of its speed and better than everything faster.
    """
    flags = [False] * len(points)
    fastest_first = sorted(range(len(points)), key=lambda index: -points[index].speed_ratio)
    best_faster = -math.inf
    for _, same_speed in itertools.groupby(fastest_first, key=lambda index: points[index].speed_ratio):
        indexes = list(same_speed)
        best_here = max(points[index].sts_spearman for index in indexes)
        for index in indexes:
            flags[index] = points[index].sts_spearman == best_here > best_faster
        best_faster = max(best_faster, best_here)
    return flags


@dataclass(frozen=True)
class Frontier:
    """The measured points slowest first, whether each is Pareto-optimal, and the points set aside for a missing
    number (they are not guessed at)."""

    points: tuple[Point, ...]
    optimal: tuple[bool, ...]
    left_out: tuple[Point, ...]

    def dominating(self, point: Point) -> list[Point]:
        """The frontier points that dominate ``point``: none when it is on the frontier itself."""
        return [other for other, on in zip(self.points, self.optimal, strict=True) if on and dominates(other, point)]

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "run": [point.run for point in self.points],
                "family": [point.family for point in self.points],
                "sts_spearman": [point.sts_spearman for point in self.points],
                "speed_ratio": [point.speed_ratio for point in self.points],
                "pareto": list(self.optimal),
            }
        )


def slowest_first(point: Point) -> tuple[float, float, str, str]:
    """Speed, then the better quality first, then the names: one order whatever order MLflow answered in."""
    return point.speed_ratio, -point.sts_spearman, point.run, point.family


def frontier(points: Iterable[Point]) -> Frontier:
    """The Pareto frontier of quality against speed over the points that have both numbers."""
    points = list(points)
    measured = sorted((point for point in points if point.measured), key=slowest_first)
    left_out = tuple(point for point in points if not point.measured)
    return Frontier(tuple(measured), tuple(pareto_optimal(measured)), left_out)


def student_point(evaluation: Any, parent: Any | None, split: str) -> Point:
    """An evaluate run's student, named by its pipeline run (or by itself, run alone) and that run's model.kind."""
    named = parent or evaluation
    return Point(
        named.info.run_id[:RUN_ID_SHOWN],
        named.data.params.get("model.kind") or evaluation.data.params.get("model.kind", "-"),
        evaluation.data.metrics.get(METRICS["sts_spearman"].format(split=split)),
        evaluation.data.metrics.get(METRICS["speed_ratio"]),
    )


def export_points(export: Any, parent: Any | None, split: str) -> list[Point]:
    """An export run's variants, each a point of its own beside the student it was exported from ("encoder,
    onnx_int8"): a quantized graph trades quality for speed as a smaller student does."""
    named = parent or export
    kind = named.data.params.get("model.kind") or export.data.params.get("model.kind", "-")
    metrics = export.data.metrics
    return [
        Point(
            named.info.run_id[:RUN_ID_SHOWN],
            f"{kind}, {variant}",
            metrics.get(EXPORT_METRICS["sts_spearman"].format(variant=variant, split=split)),
            metrics.get(EXPORT_METRICS["speed_ratio"].format(variant=variant)),
        )
        for variant in EXPORT_VARIANTS
        if EXPORT_METRICS["speed_ratio"].format(variant=variant) in metrics
    ]


def teacher_point(evaluations: Sequence[Any], split: str) -> Point | None:
    """The teacher once, as the newest of ``evaluations`` that scored it on ``split`` measured it: every evaluate
    run scores the teacher again, and one model is one point."""
    name = TEACHER_SPEARMAN.format(split=split)
    spearman = next((run.data.metrics[name] for run in evaluations if name in run.data.metrics), None)
    return None if spearman is None else Point(TEACHER, TEACHER, spearman, 1.0)


def logged_points(log: RunLog, split: str) -> list[Point]:
    """The student of every evaluate run in the experiment, newest first, then every export run's variants, then
    the teacher."""
    parents = {run.info.run_id: run for run in log.every(PIPELINE_RUNS)}
    evaluations = log.every(EVALUATE_RUNS)
    students = [student_point(run, parents.get(run.data.tags.get(PARENT_TAG, "")), split) for run in evaluations]
    exported = [
        point
        for run in log.every(EXPORT_RUNS)
        for point in export_points(run, parents.get(run.data.tags.get(PARENT_TAG, "")), split)
    ]
    teacher = teacher_point(evaluations, split)
    return [*students, *exported, *([teacher] if teacher else [])]


def is_teacher(point: Point) -> bool:
    return point.run == TEACHER


def missing_numbers(left_out: Sequence[Point], split: str) -> str:
    """The points a missing number kept off the frontier, by name, so each can be looked up."""
    names = ", ".join(point.run for point in left_out)
    return f"{len(left_out)} left out for want of an STS Spearman on {split} or a speed ratio: {names}"


def logged_frontier(log: RunLog, split: str) -> Frontier:
    """The frontier of every evaluated student in the experiment and the teacher, for ``runs --frontier``."""
    found = frontier(logged_points(log, split))
    if all(is_teacher(point) for point in found.points):
        missing = f" ({missing_numbers(found.left_out, split)})" if found.left_out else ""
        raise UserError(
            f"runs --frontier: no evaluate run in MLflow experiment {log.experiment!r} has both an STS Spearman on "
            f"{split} and a speed ratio{missing}; run the pipeline through evaluate first (`embedforge run`)"
        )
    return found


def frontier_heading(split: str) -> str:
    return (
        f"STS Spearman on {split} against speed ÷ the teacher's, slowest first; pareto: no other point is at least "
        "as good on both and better on one"
    )


def frontier_table(found: Frontier) -> pd.DataFrame:
    return found.table().assign(pareto=lambda frame: frame["pareto"].map({True: "yes", False: "no"}))
