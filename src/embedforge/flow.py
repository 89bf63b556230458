"""The pipeline as a Prefect 3 flow: the same stage functions as tasks, and unchanged stages skipped.

Each stage is one task calling ``run_stage`` (no second implementation). A task's
cache key is the fingerprint of what dvc.yaml declares for its stage (deps'
contents, params' values and the project directory; see ``dvcfile``), with
results persisted in Prefect's result store, so a second flow run with nothing
changed runs no stage, and changing ``train.lr`` re-runs train, evaluate and report only. A stage whose
outputs are gone runs whatever its key says. precompute and tokenize run
concurrently, both needing only validate. download retries with backoff; a
deterministic failure (bad params, failed validation) is never retried. Each run
ends with a markdown artifact: the evaluation summary and the MLflow run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.context import TaskRunContext
from prefect.tasks import exponential_backoff

from embedforge import dvcfile, tracking
from embedforge.config import load_params
from embedforge.errors import UserError
from embedforge.report.markdown import evaluation_summary
from embedforge.stages import run_stage
from embedforge.stages.evaluate import METRICS_PATH as EVAL_METRICS_PATH

FLOW_NAME = "embedforge-pipeline"


def stage_cache_key(context: TaskRunContext, inputs: dict[str, Any]) -> str:
    """The stage's dvc.yaml fingerprint in this project directory (Prefect's result store is per user)."""
    cfg = load_params(inputs["params_path"], inputs["overrides"])
    name = inputs["name"]
    return f"{name}-{dvcfile.fingerprint(dvcfile.stage_spec(name), cfg, Path.cwd())}"


def is_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only what may go away by itself: a user error (params, data, validation) will not."""
    return not isinstance(state.result(raise_on_failure=False), UserError)


@task(cache_key_fn=stage_cache_key, persist_result=True, task_run_name="{name}")
def stage_task(name: str, params_path: str, overrides: list[str]) -> dict[str, float | str]:
    return run_stage(name, load_params(params_path, overrides))


def submit(name: str, params_path: str, overrides: list[str], **options: Any) -> Any:
    """Submit one stage's task, forcing a run when dvc.yaml's outputs of the stage are missing."""
    refresh = not dvcfile.outputs_present(dvcfile.stage_spec(name), Path.cwd())
    configured = stage_task.with_options(refresh_cache=refresh, **options)
    return configured.submit(name, params_path, overrides)


@contextmanager
def parent_run_in_environment(run_id: str | None) -> Iterator[None]:
    """Stage runs (in task threads, where MLflow's active run is not visible) nest under the flow's run."""
    previous = os.environ.get(tracking.PARENT_RUN_ENV)
    if run_id:
        os.environ[tracking.PARENT_RUN_ENV] = run_id
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(tracking.PARENT_RUN_ENV, None)
        else:
            os.environ[tracking.PARENT_RUN_ENV] = previous


@flow(name=FLOW_NAME)
def pipeline(params: str = "params.yaml", preset: str | None = None, overrides: list[str] | None = None) -> dict:
    """All seven stages; returns every stage's results by stage name."""
    settings = [*([f"preset={preset}"] if preset else []), *(overrides or [])]
    cfg = load_params(params, settings)
    results: dict[str, dict[str, float | str]] = {}
    with tracking.start(cfg, "pipeline") as parent, parent_run_in_environment(parent.run_id):
        results["download"] = submit(
            "download",
            params,
            settings,
            retries=2,
            retry_delay_seconds=exponential_backoff(10),
            retry_condition_fn=is_transient,
        ).result()
        results["validate"] = submit("validate", params, settings).result()
        side_by_side = {name: submit(name, params, settings) for name in ("precompute", "tokenize")}
        results.update({name: future.result() for name, future in side_by_side.items()})
        for name in ("train", "evaluate", "report"):
            results[name] = submit(name, params, settings).result()
        evaluation = json.loads(EVAL_METRICS_PATH.read_text(encoding="utf-8"))
        create_markdown_artifact(
            evaluation_summary(evaluation, tracking.run_link(parent.run_id)),
            key="evaluation-summary",
            description="The student against its teacher, from metrics/eval.json",
        )
    return results
