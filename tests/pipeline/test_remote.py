"""`embedforge remote add|list`, `push` and `pull`: DVC remotes, with errors a user can act on."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def embedforge(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "embedforge"), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=tmp_path, check=True)
    return tmp_path


def test_a_folder_remote_is_added_as_the_default_and_round_trips_an_output(repo, tmp_path_factory):
    storage = tmp_path_factory.mktemp("storage")
    assert embedforge("remote", "add", "team", str(storage), cwd=repo).returncode == 0
    assert embedforge("remote", "list", cwd=repo).stdout.split() == ["team", str(storage)]
    assert "remote = team" in (repo / ".dvc/config").read_text()

    (repo / "data").mkdir()
    (repo / "data/vectors.bin").write_bytes(b"\x01" * 4096)
    subprocess.run([str(BIN / "dvc"), "add", "-q", "data/vectors.bin"], cwd=repo, check=True)
    pushed = embedforge("push", cwd=repo)
    assert pushed.returncode == 0, pushed.stderr
    assert sum(1 for path in storage.rglob("*") if path.is_file()) == 1

    (repo / "data/vectors.bin").unlink()
    subprocess.run(["rm", "-rf", str(repo / ".dvc/cache")], check=True)
    pulled = embedforge("pull", cwd=repo)
    assert pulled.returncode == 0, pulled.stderr
    assert (repo / "data/vectors.bin").read_bytes() == b"\x01" * 4096


def test_an_s3_compatible_endpoint_and_a_machine_only_remote_go_where_dvc_reads_them(repo):
    added = embedforge(
        "remote", "add", "minio", "s3://bucket/dvc", "--endpoint-url", "http://10.0.0.5:9000", "--local", cwd=repo
    )
    assert added.returncode == 0, added.stderr
    local = (repo / ".dvc/config.local").read_text()
    assert "url = s3://bucket/dvc" in local and "endpointurl = http://10.0.0.5:9000" in local
    assert "minio" not in (repo / ".dvc/config").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["push"], "no default DVC remote: `embedforge remote add NAME URL` makes one"),
        (["pull", "--remote", "nope"], "no DVC remote named 'nope' (configured: none)"),
        (["remote", "add", "cloud", "gs://bucket/dvc"], "gs:// remotes need DVC's dvc-gs plugin: pip install dvc-gs"),
    ],
)
def test_a_missing_remote_or_plugin_names_the_fix(repo, args, message):
    if "gs://bucket/dvc" in args and importlib.util.find_spec("dvc_gs") is not None:
        pytest.skip("dvc-gs is installed here")
    done = embedforge(*args, cwd=repo)
    assert done.returncode != 0 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_outside_a_dvc_project_push_says_where_to_run_it(tmp_path):
    done = embedforge("push", cwd=tmp_path)
    assert done.returncode != 0 and f"no .dvc/ in {tmp_path}" in done.stderr, done.stderr


def test_adding_a_name_twice_needs_force(repo, tmp_path_factory):
    first, second = (str(tmp_path_factory.mktemp(name)) for name in ("first", "second"))
    assert embedforge("remote", "add", "team", first, cwd=repo).returncode == 0
    refused = embedforge("remote", "add", "team", second, cwd=repo)
    assert refused.returncode != 0 and "dvc remote add failed" in refused.stderr and "already exists" in refused.stderr
    assert embedforge("remote", "add", "team", second, "--force", cwd=repo).returncode == 0
    assert embedforge("remote", "list", cwd=repo).stdout.split() == ["team", second]
