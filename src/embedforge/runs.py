"""The last pipeline runs side by side (``embedforge runs``), and what changed between two (``--diff A B``).

A row is one ``pipeline`` run of MLflow: a few params that shape the result, the
student's numbers from its evaluate child run, the highest peak memory of its
stage runs, and its duration. A pipeline run in which DVC skipped evaluate has no
new numbers, shown as "-".
"""

from __future__ import annotations

from typing import Any

import pandas as pd

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


class RunLog:
    """Pipeline runs of one experiment in an MLflow store, with their stage runs."""

    def __init__(self, uri: str, experiment: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            raise UserError(f"no MLflow experiment {experiment!r} in {uri}: run the pipeline first")
        self.experiment_id = found.experiment_id

    def pipelines(self, last: int) -> list[Any]:
        return self.client.search_runs(
            [self.experiment_id],
            "tags.mlflow.runName = 'pipeline'",
            order_by=["attributes.start_time DESC"],
            max_results=last,
        )

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
            "run": parent.info.run_id[:8],
            "started": pd.to_datetime(parent.info.start_time, unit="ms"),
        }
        row.update({key: params.get(key, "-") for key in KEY_PARAMS})
        evaluation = stages["evaluate"].data.metrics if "evaluate" in stages else {}
        split = params.get("evaluate.sts_splits", "['stsb/validation']").strip("[]").split(",")[0].strip(" '\"")
        row.update({column: evaluation.get(name.format(split=split), "-") for column, name in METRICS.items()})
        peaks = [run.data.metrics["peak_rss_mb"] for run in stages.values() if "peak_rss_mb" in run.data.metrics]
        row["peak_rss_mb"] = max(peaks) if peaks else "-"
        ended = parent.info.end_time
        row["minutes"] = (ended - parent.info.start_time) / 60_000 if ended else "-"
        row["stages_run"] = len(stages)
        return row


def table(log: RunLog, last: int) -> pd.DataFrame:
    return pd.DataFrame([log.row(run) for run in log.pipelines(last)])


def diff(log: RunLog, first: str, second: str) -> pd.DataFrame:
    """Every param that differs between two pipeline runs, then both runs' key numbers."""
    runs = [log.find(first), log.find(second)]
    names = [run.info.run_id[:8] for run in runs]
    params = [run.data.params for run in runs]
    changed = sorted(key for key in set(params[0]) | set(params[1]) if params[0].get(key) != params[1].get(key))
    rows = [{"": key, names[0]: params[0].get(key, "-"), names[1]: params[1].get(key, "-")} for key in changed]
    summaries = [log.row(run) for run in runs]
    rows += [
        {"": column, names[0]: summaries[0][column], names[1]: summaries[1][column]}
        for column in (*METRICS, "peak_rss_mb", "minutes")
    ]
    return pd.DataFrame(rows)
