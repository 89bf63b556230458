"""A broken MLflow store never stops the pipeline: the stage finishes, one warning, the records kept offline."""

from __future__ import annotations

import json
import logging

from embedforge import tracking
from embedforge.stages import run_stage


def offline_metrics(project) -> dict[str, float]:
    """Every metric the offline log under mlruns/offline holds."""
    records = [json.loads(line) for path in (project / "mlruns/offline").glob("*.jsonl") for line in path.open()]
    return {key: value for record in records if record["kind"] == "metrics" for key, value in record["values"].items()}


def test_a_corrupted_sqlite_store_leaves_the_stage_finished_and_its_records_offline(
    project, mirror_params, caplog, monkeypatch
):
    (project / "mlruns/mlflow.db").write_bytes(b"\x13not a database" * 1000)
    monkeypatch.setattr(tracking, "_warned_offline", False)
    with caplog.at_level(logging.WARNING):
        results = run_stage("download", mirror_params("tracking.enabled=true", "download.limit=10"))

    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING and "tracking" in record.name]
    assert len(warnings) == 1 and "file is not a database" in warnings[0].getMessage()
    assert offline_metrics(project)["rows.total"] == results["rows.total"] > 0


def test_a_read_only_store_leaves_the_stage_finished_and_its_records_offline(
    project, mirror_params, caplog, monkeypatch
):
    """SQLite's read-only mode, which refuses writes as a read-only mount or another user's file does
    (file modes alone would not do: the tests may run as root, whom they do not stop)."""
    writable = f"sqlite:///{project / 'mlruns/mlflow.db'}"
    run_stage("download", mirror_params("tracking.enabled=true", f"tracking.uri={writable}", "download.limit=10"))
    read_only = f"sqlite:///file:{project / 'mlruns/mlflow.db'}?mode=ro&uri=true"
    monkeypatch.setattr(tracking, "_warned_offline", False)
    with caplog.at_level(logging.WARNING):
        results = run_stage(
            "download", mirror_params("tracking.enabled=true", f"tracking.uri={read_only}", "download.limit=12")
        )

    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING and "tracking" in record.name]
    assert len(warnings) == 1 and "attempt to write a readonly database" in warnings[0].getMessage()
    assert offline_metrics(project)["rows.total"] == results["rows.total"] > 0
