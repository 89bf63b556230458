"""No secret reaches anything a run writes: a password inside tracking.uri, HF_TOKEN and AWS_SECRET_ACCESS_KEY
never appear in MLflow (server and offline records), the report, the resolved params, or the logs."""

from __future__ import annotations

import logging
from pathlib import Path

from team_stack import MlflowServer
from typer.testing import CliRunner

from embedforge import tracking
from embedforge.cli import app
from embedforge.stages import run_stage

SECRETS = {
    "tracking.uri password": "pw-3f9a1c7e",
    "HF_TOKEN": "hf_fake_5d2b8e41c0",
    "AWS_SECRET_ACCESS_KEY": "aws-fake-9c4e7a12",
}
QUICK_EVALUATION = ["evaluate.speed_sentences=40", "evaluate.speed_rounds=1", "evaluate.map_sentences=30"]


def written_with_a_secret(*roots: Path) -> list[str]:
    found = []
    for root in roots:
        for path in (item for item in root.rglob("*") if item.is_file()):
            content = path.read_bytes()
            found += [f"{path}: {name}" for name, secret in SECRETS.items() if secret.encode() in content]
    return found


def test_no_secret_reaches_mlflow_the_report_the_resolved_params_or_the_logs(
    ready, project, tmp_path, monkeypatch, caplog, capsys, request
):
    server_root = tmp_path / "server"
    server_root.mkdir()
    server = MlflowServer.start(f"sqlite:///{server_root / 'mlflow.db'}", str(server_root / "artifacts"), server_root)
    request.addfinalizer(server.stop)
    monkeypatch.setenv("HF_TOKEN", SECRETS["HF_TOKEN"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRETS["AWS_SECRET_ACCESS_KEY"])
    monkeypatch.setattr(tracking, "_warned_offline", False)
    uri = f"http://embedforge:{SECRETS['tracking.uri password']}@127.0.0.1:{server.port}"
    overrides = ["tracking.enabled=true", f"tracking.uri={uri}", *QUICK_EVALUATION]

    with caplog.at_level(logging.DEBUG):
        for stage in ("train", "evaluate", "report"):
            run_stage(stage, ready(*overrides))
        server.stop()  # the offline records and the warning must not carry it either
        run_stage("report", ready(*overrides))
        resolved = CliRunner().invoke(
            app, ["params", *(f"--set={item}" for item in overrides), "--out", "resolved.yaml"]
        )
    assert resolved.exit_code == 0, resolved.output

    assert (project / "mlruns/offline").is_dir() and "is unreachable or failing" in caplog.text
    assert "http://***@127.0.0.1" in caplog.text and "http://***@127.0.0.1" in (project / "resolved.yaml").read_text()
    assert written_with_a_secret(project, server_root) == []
    printed = capsys.readouterr()
    for name, secret in SECRETS.items():
        assert secret not in caplog.text + printed.out + printed.err + resolved.output, name
