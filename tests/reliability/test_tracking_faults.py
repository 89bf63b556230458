"""A broken MLflow store never stops the pipeline: the stage finishes, one warning, the records kept offline."""

from __future__ import annotations

import json
import logging

from embedforge import tracking
from embedforge.stages import run_stage


def test_a_corrupted_sqlite_store_leaves_the_stage_finished_and_its_records_offline(
    project, mirror_params, caplog, monkeypatch
):
    (project / "mlruns/mlflow.db").write_bytes(b"\x13not a database" * 1000)
    monkeypatch.setattr(tracking, "_warned_offline", False)
    with caplog.at_level(logging.WARNING):
        results = run_stage("download", mirror_params("tracking.enabled=true", "download.limit=10"))

    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING and "tracking" in record.name]
    assert len(warnings) == 1 and "file is not a database" in warnings[0].getMessage()
    records = [json.loads(line) for path in (project / "mlruns/offline").glob("*.jsonl") for line in path.open()]
    logged = {
        key: value for record in records if record["kind"] == "metrics" for key, value in record["values"].items()
    }
    assert logged["rows.total"] == results["rows.total"] > 0
