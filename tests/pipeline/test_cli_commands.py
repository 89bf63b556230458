"""Stages run through the console script as a user types them: exit codes and what they print."""

import pandas as pd
from helpers import assert_user_error, embedforge, log_evaluation
from typer.testing import CliRunner

from embedforge.cli import app


def test_download_then_validate_from_the_command_line(project, small_mirror):
    done = embedforge("download", "--set", "download.limit=40", cwd=project, EMBEDFORGE_MIRROR=str(small_mirror))
    assert done.returncode == 0, done.stderr
    assert "rows.snli.train: 40" in done.stdout
    done = embedforge("validate", cwd=project)
    assert done.returncode == 0, done.stderr
    assert (project / "data/validation/results.json").is_file()


def test_failed_validation_exits_3_with_the_summary(project, small_mirror):
    done = embedforge("download", "--set", "download.limit=40", cwd=project, EMBEDFORGE_MIRROR=str(small_mirror))
    assert done.returncode == 0, done.stderr
    split = project / "data/raw/stsb/validation.parquet"
    frame = pd.read_parquet(split)
    frame.loc[4, "score"] = 7.5
    frame.to_parquet(split, index=False)

    done = embedforge("validate", cwd=project)

    assert done.returncode == 3 and "Traceback" not in done.stderr
    assert (
        "stsb/validation (data/raw/stsb/validation.parquet): expect_column_values_to_be_between(score) failed for "
        "1 of 40 rows" in done.stderr
    )
    assert "row 4: pair_id=" in done.stderr and "score=7.5" in done.stderr


def test_missing_mirror_exits_non_zero_and_writes_nothing(project):
    done = embedforge("download", cwd=project, EMBEDFORGE_MIRROR=str(project / "no-such-mirror"))
    assert_user_error(done, "no-such-mirror does not exist", "EMBEDFORGE_MIRROR")
    assert not (project / "data").exists()


def test_runs_without_any_pipeline_run_is_a_user_error(project):
    done = embedforge("runs", cwd=project)
    assert_user_error(done, "no MLflow experiment 'embedforge'", "run the pipeline first")


def test_runs_frontier_lists_every_point_by_speed_and_marks_the_pareto_optimal(project):
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    encoder = log_evaluation(uri, "encoder", 0.858, 2.83, started_s=0, teacher=0.867)
    beaten = log_evaluation(uri, "encoder", 0.84, 2.5, started_s=10, teacher=0.867)
    static = log_evaluation(uri, "static", 0.71, 14.0, started_s=20, teacher=0.867)
    tied = log_evaluation(uri, "dynamic", 0.71, 9.0, started_s=30, teacher=0.867)  # static's quality, slower
    no_speed = log_evaluation(uri, "lattice", 0.90, None, started_s=40, teacher=0.867)

    done = embedforge("runs", "--frontier", cwd=project)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("STS Spearman on stsb/validation against speed") and lines[1].split() == [
        "run",
        "family",
        "sts_spearman",
        "speed_ratio",
        "pareto",
    ]
    rows = [line.split() for line in lines[2:-1]]
    assert [(row[0], row[1], row[-1]) for row in rows] == [
        ("teacher", "teacher", "yes"),
        (beaten[:8], "encoder", "no"),
        (encoder[:8], "encoder", "yes"),
        (tied[:8], "dynamic", "no"),
        (static[:8], "static", "yes"),
    ]
    assert lines[-1] == f"1 left out for want of an STS Spearman on stsb/validation or a speed ratio: {no_speed[:8]}"


def test_runs_frontier_without_an_evaluated_run_or_beside_diff_is_a_user_error(project):
    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    no_speed = log_evaluation(uri, "encoder", 0.85, None, started_s=0, teacher=0.867)
    done = embedforge("runs", "--frontier", cwd=project)
    assert_user_error(
        done,
        "no evaluate run in MLflow experiment 'embedforge' has both an STS Spearman on stsb/validation and a speed",
        f"left out for want of an STS Spearman on stsb/validation or a speed ratio: {no_speed[:8]}",
        "run the pipeline through evaluate first (`embedforge run`)",
    )
    result = CliRunner().invoke(app, ["runs", "--frontier", "--diff", no_speed[:8], no_speed[:8]])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert "error: runs: --frontier and --diff are two different views; give one of them" in result.stderr
