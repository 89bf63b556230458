"""The ``embedforge`` command: one subcommand per stage, plus ``run`` (the whole pipeline via dvc repro).

User errors (bad params, bad data, missing files) print one message and exit
non-zero; only bugs show a traceback.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
import yaml

from embedforge import dvcfile, remote, tracking
from embedforge.config import load_params, write_overrides
from embedforge.errors import UserError
from embedforge.exits import exit_now
from embedforge.redact import redact, redacted
from embedforge.runlock import pipeline_lock
from embedforge.stages import STAGES, Stage, run_stage

app = typer.Typer(
    help="Train small, fast sentence-embedding models through a reproducible pipeline.\n\n"
    "Each stage reads its section of params.yaml; --set dotted.key=value overrides any knob "
    "for one invocation. EMBEDFORGE_MIRROR=PATH reads datasets from a local mirror.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = Annotated[Path | None, typer.Option("--params", "-p", help="Params file.", show_default="params.yaml")]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one param, e.g. --set train.lr=1e-4 (repeatable).", show_default=False),
]


def _settings(ctx: typer.Context, params: Path | None, overrides: list[str] | None) -> tuple[Path, list[str]]:
    """Options given after the command win over the global ones given before it."""
    global_params, global_overrides = ctx.obj or (Path("params.yaml"), [])
    return params or global_params, [*global_overrides, *(overrides or [])]


def _guarded(action: Callable[[], None]) -> None:
    try:
        action()
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None


@app.callback()
def main(
    ctx: typer.Context,
    params: ParamsOption = None,
    overrides: SetOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    if not verbose:  # per-file progress bars of every model load and save drown the stage's own log
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("embedforge").setLevel(logging.DEBUG if verbose else logging.INFO)
    ctx.obj = (params or Path("params.yaml"), overrides or [])


def _stage_command(stage: Stage) -> Callable[..., None]:
    def command(ctx: typer.Context, params: ParamsOption = None, overrides: SetOption = None) -> None:
        params_path, all_overrides = _settings(ctx, params, overrides)

        def action() -> None:
            results = run_stage(stage.name, load_params(params_path, all_overrides))
            for key, value in results.items():
                typer.echo(f"{key}: {value}" if isinstance(value, str) else f"{key}: {value:g}")

        _guarded(action)

    return command


for _stage in STAGES.values():
    app.command(_stage.name, help=_stage.summary)(_stage_command(_stage))


@app.command("params")
def show_params(
    ctx: typer.Context,
    params: ParamsOption = None,
    overrides: SetOption = None,
    out: Annotated[Path | None, typer.Option(help="Write them to this file instead (what dvc.yaml tracks).")] = None,
) -> None:
    """Print the fully resolved params (preset, params.yaml, environment and --set applied) as YAML."""
    params_path, all_overrides = _settings(ctx, params, overrides)

    def action() -> None:
        resolved = yaml.safe_dump(redacted(load_params(params_path, all_overrides).to_dict()), sort_keys=False)
        if out is None:
            typer.echo(resolved, nl=False)
            return
        from embedforge.files import atomic_path

        with atomic_path(out) as tmp:
            tmp.write_text(resolved, encoding="utf-8")

    _guarded(action)


@app.command("run")
def run_pipeline(
    ctx: typer.Context,
    targets: Annotated[list[str] | None, typer.Argument(help="Stages to reproduce [default: all].")] = None,
    force: Annotated[bool, typer.Option("--force", "-f", help="Re-run stages even if unchanged.")] = False,
    params: ParamsOption = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "-s",
            help="Write dotted.key=value into params.yaml before the run, as `dvc exp run -S` does (repeatable).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the pipeline with `dvc repro`: unchanged stages are skipped; one MLflow parent run holds every stage run."""
    params_path, global_overrides = _settings(ctx, params, None)

    def action() -> None:
        if global_overrides:
            raise UserError("run: give --set after `run` (it writes params.yaml, which dvc repro reads)")
        if overrides:
            load_params(params_path, overrides)  # a bad --set is the first thing to hear about, naming its key
        if not Path("dvc.yaml").is_file():
            raise UserError(f"no dvc.yaml in {Path.cwd()}: run `embedforge run` from the project root")
        with pipeline_lock("`embedforge run`"):  # before --set edits the params.yaml another run may be reading
            reproduce(params_path, overrides, targets, force)

    _guarded(action)


def reproduce(params_path: Path, overrides: list[str] | None, targets: list[str] | None, force: bool) -> None:
    """Write the overrides into params.yaml, then dvc repro inside one MLflow parent run."""
    if overrides:
        write_overrides(params_path, overrides)
    scripts = str(Path(sys.executable).parent)
    dvc = remote.dvc_executable()
    cfg = load_params(params_path)
    with tracking.start(cfg, "pipeline") as parent:
        env = {**os.environ, "PATH": os.pathsep.join([scripts, os.environ.get("PATH", "")])}
        if parent.run_id:
            env[tracking.PARENT_RUN_ENV] = parent.run_id
        command = [dvc, "repro", *(["--force"] if force else []), *(targets or [])]
        done = subprocess.run(command, env=env, check=False)
        if done.returncode:
            error = UserError(f"dvc repro failed with exit code {done.returncode}")
            error.exit_code = done.returncode
            raise error
        parent.set_tags(dvcfile.lock_tags())
    typer.echo(where_to_look(cfg))


def where_to_look(cfg) -> str:
    """The closing lines of a pipeline run: the report, the metrics, and the MLflow UI for this store."""
    from embedforge.paths import REPORT_DIR

    uri = redact(tracking.tracking_uri(cfg))
    mlflow = uri if uri.startswith(("http://", "https://")) else f"mlflow ui --backend-store-uri {uri}"
    return "\n".join(
        [
            "",
            f"report:  {(REPORT_DIR / 'index.html').resolve()}",
            "metrics: dvc metrics show   (curves: dvc plots show)",
            f"MLflow:  {mlflow}",
        ]
    )


CronOption = Annotated[str | None, typer.Option(help='A cron schedule, e.g. "0 3 * * *" (03:00 every day).')]
IntervalOption = Annotated[float | None, typer.Option(help="Run every this many seconds.", min=1)]
DaskAddressOption = Annotated[
    str | None,
    typer.Option(
        help="Run the stage tasks on the Dask scheduler at this address (e.g. tcp://10.0.0.5:8786), "
        "its workers started in this directory.",
    ),
]


def _flow_parameters(params_path: Path, overrides: list[str], dask_address: str | None) -> dict[str, object]:
    """The flow's parameters, checked now: a bad value fails at deploy time, not at 03:00."""
    load_params(params_path, overrides)
    return {
        "params": str(params_path),
        "overrides": overrides,
        **({"dask_address": dask_address} if dask_address else {}),
    }


@app.command("schedule")
def schedule(
    ctx: typer.Context,
    cron: CronOption = None,
    interval: IntervalOption = None,
    name: Annotated[str, typer.Option(help="The Prefect deployment's name.")] = "embedforge-scheduled",
    dask_address: DaskAddressOption = None,
    params: ParamsOption = None,
    overrides: SetOption = None,
) -> None:
    """Serve the Prefect flow on a schedule until stopped (Ctrl-C): each run skips the stages that did not change."""
    params_path, all_overrides = _settings(ctx, params, overrides)

    def action() -> None:
        if (cron is None) == (interval is None):
            raise UserError("schedule: give exactly one of --cron or --interval")
        parameters = _flow_parameters(params_path, all_overrides, dask_address)
        from embedforge.flow import api_server, pipeline

        with api_server():
            # limit=1: a run still going when the next is due makes that one wait, as the project lock would refuse it
            pipeline.serve(name=name, cron=cron, interval=interval, parameters=parameters, limit=1)

    _guarded(action)


@app.command("deploy")
def deploy(
    ctx: typer.Context,
    pool: Annotated[str, typer.Option(help="The Prefect work pool whose workers run it (type process).")],
    cron: CronOption = None,
    interval: IntervalOption = None,
    name: Annotated[str, typer.Option(help="The Prefect deployment's name.")] = "embedforge",
    dask_address: DaskAddressOption = None,
    params: ParamsOption = None,
    overrides: SetOption = None,
) -> None:
    """Register the flow on the Prefect server (PREFECT_API_URL) for a work pool's workers to run in this directory."""
    params_path, all_overrides = _settings(ctx, params, overrides)

    def action() -> None:
        if cron is not None and interval is not None:
            raise UserError("deploy: give at most one of --cron or --interval")
        parameters = _flow_parameters(params_path, all_overrides, dask_address)
        from embedforge.flow import FLOW_NAME
        from embedforge.flow import deploy as deploy_flow

        deployment_id = deploy_flow(name, pool, parameters, cron, interval)
        typer.echo(f"deployment {FLOW_NAME}/{name} ({deployment_id}) on work pool {pool!r}")
        typer.echo(
            f"run it now: prefect deployment run '{FLOW_NAME}/{name}'; a worker: prefect worker start --pool {pool}"
        )

    _guarded(action)


remote_app = typer.Typer(help="DVC remotes: where `embedforge push` and `pull` move the pipeline's outputs.")
app.add_typer(remote_app, name="remote")


@remote_app.command("add")
def add_remote(
    name: Annotated[str, typer.Argument(help="The remote's name, e.g. team.")],
    url: Annotated[str, typer.Argument(help="s3://bucket/path, gs://..., azure://..., or a folder.")],
    default: Annotated[bool, typer.Option(help="Make it the remote push and pull use.")] = True,
    endpoint_url: Annotated[
        str | None, typer.Option(help="An S3-compatible server (MinIO, Ceph, moto), e.g. http://10.0.0.5:9000.")
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="Only for this checkout: .dvc/config.local, which git ignores.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", "-f", help="Replace a remote of the same name.")] = False,
) -> None:
    """Add a DVC remote (`dvc remote add`), checking that its storage plugin is installed."""
    _guarded(lambda: remote.add(name, url, default=default, endpoint_url=endpoint_url, local=local, force=force))


@remote_app.command("list")
def list_remotes() -> None:
    """The configured DVC remotes and their URLs."""

    def action() -> None:
        configured = remote.remotes()
        typer.echo("\n".join(f"{name}\t{url}" for name, url in configured.items()) or "no DVC remotes")

    _guarded(action)


TransferTargets = Annotated[
    list[str] | None, typer.Argument(help="Stages or outputs, e.g. precompute or data/embeddings [default: all].")
]
RemoteOption = Annotated[str | None, typer.Option("--remote", "-r", help="A remote's name [default: the default].")]
JobsOption = Annotated[int | None, typer.Option("--jobs", "-j", help="Parallel transfers.", min=1)]


@app.command("push")
def push(targets: TransferTargets = None, to: RemoteOption = None, jobs: JobsOption = None) -> None:
    """Upload the pipeline's cached outputs and DVC's run cache to the remote (`dvc push --run-cache`)."""
    _guarded(lambda: remote.transfer("push", to, targets or [], jobs))


@app.command("pull")
def pull(targets: TransferTargets = None, source: RemoteOption = None, jobs: JobsOption = None) -> None:
    """Download and check out what a colleague pushed: `dvc status` is clean after, and `dvc repro` a no-op."""
    _guarded(lambda: remote.transfer("pull", source, targets or [], jobs))


@app.command("runs")
def show_runs(
    ctx: typer.Context,
    last: Annotated[int, typer.Option(help="How many of the latest pipeline runs.", min=1)] = 10,
    diff: Annotated[
        tuple[str, str] | None, typer.Option(help="Two pipeline run ids (or unique prefixes) to compare.")
    ] = None,
    frontier: Annotated[
        bool,
        typer.Option(
            "--frontier",
            help="Every evaluated student and the teacher, STS Spearman against speed ratio, the Pareto-optimal "
            "ones marked.",
        ),
    ] = False,
    params: ParamsOption = None,
) -> None:
    """The last pipeline runs from MLflow: key params, STS Spearman, separation, retrieval, speed, memory, time.

    --diff compares two runs; --frontier puts every evaluated student beside the teacher on quality and speed.
    """
    params_path, overrides = _settings(ctx, params, None)

    def action() -> None:
        from embedforge import runs

        if frontier and diff:
            raise UserError("runs: --frontier and --diff are two different views; give one of them")
        cfg = load_params(params_path, overrides)
        log = runs.RunLog(tracking.tracking_uri(cfg), cfg.tracking.experiment)
        if frontier:
            if not cfg.evaluate.sts_splits:
                raise UserError("runs --frontier places students by STS Spearman, and evaluate.sts_splits is empty")
            show_frontier(log, cfg.evaluate.sts_splits[0])
            return
        frame = runs.diff(log, *diff) if diff else runs.table(log, last)
        typer.echo(table_text(frame) if not frame.empty else "no pipeline runs yet")

    _guarded(action)


def show_frontier(log, split: str) -> None:
    from embedforge import runs

    found = runs.logged_frontier(log, split)
    typer.echo(runs.frontier_heading(split))
    typer.echo(table_text(runs.frontier_table(found)))
    if found.left_out:
        typer.echo(runs.missing_numbers(found.left_out, split))


def table_text(frame) -> str:
    """A table as the runs views print it: every column, numbers to four significant digits."""
    import pandas as pd

    with pd.option_context("display.width", 250, "display.max_columns", None, "display.float_format", "{:.4g}".format):
        return frame.to_string(index=False)


def entry() -> None:
    """The ``embedforge`` console script: the command, then a quick exit (embedforge.exits says why)."""
    try:
        app()
    except SystemExit as exc:
        exit_now(exc.code)
    exit_now(0)
