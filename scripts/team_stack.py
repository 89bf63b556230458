"""A team's tracking stack on one machine: PostgreSQL, an S3 server (moto) and an MLflow server over both.

For trying the team setup on a laptop or in a CI job; embedforge never needs it (point ``tracking.uri``
and the DVC remote at your real services instead). Everything listens on 127.0.0.1 only.

    python scripts/team_stack.py up      # starts the three, prints the environment to export
    python scripts/team_stack.py down    # stops them and deletes their data

Needs the PostgreSQL server binaries (Debian: ``apt-get install postgresql-15``; ``initdb`` and
``pg_ctl`` refuse to run as root, so as root they run as the ``postgres`` user) and the project's
``server`` and ``test`` extras (``psycopg2-binary``, ``boto3``, ``moto[server]``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
STATE_FILE = Path(".team-stack.json")
BUCKET = "embedforge"
S3_CREDENTIALS = {  # moto accepts any; boto3, DVC and MLflow each read these from the environment
    "AWS_ACCESS_KEY_ID": "team-stack",
    "AWS_SECRET_ACCESS_KEY": "team-stack",
    "AWS_DEFAULT_REGION": "us-east-1",
}
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, else Debian's /usr/lib/postgresql/<version>/bin (newest first)."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent  # a link on PATH may stand alone, without createdb beside it
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda path: int(Path(path).parts[-3]))
    return Path(found[-1]).parent if found else None


def _wait_until(ready, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready():
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with code {process.returncode} while starting")
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start within {START_TIMEOUT_S} s")


def _answers_http(url: str) -> bool:
    import requests

    try:
        return requests.get(url, timeout=1).status_code < 500
    except requests.RequestException:
        return False


def _spawn(command: list[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A server in its own process group (it and its workers stop together), its output in ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )


def _started(process: subprocess.Popen, ready, what: str, log_path: Path) -> None:
    try:
        _wait_until(ready, what, process)
    except RuntimeError as error:
        _stop_group(process.pid)
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{error}; its log ({log_path}):\n{tail}") from None


def _stop_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(20):  # nothing to save: the state is in PostgreSQL and S3
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(pid, signal.SIGKILL)


@dataclass
class Postgres:
    """A throwaway cluster in its own directory; trust auth for one user, TCP on 127.0.0.1, a private socket dir."""

    root: str
    port: int
    user: str = "embedforge"

    @classmethod
    def start(cls) -> Postgres:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql-15")
        root = tempfile.mkdtemp(prefix="embedforge-postgres-")  # under /tmp: the postgres user can reach it
        server = cls(root, free_port())
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
        try:
            server._as_owner("initdb", "-D", server.data, "-U", server.user, "--auth=trust", "-E", "UTF8")
            options = f"-h 127.0.0.1 -p {server.port} -k {root}"
            server._as_owner("pg_ctl", "-D", server.data, "-l", f"{root}/log", "-o", options, "-w", "start")
            server.create_database("mlflow")
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def data(self) -> str:
        return f"{self.root}/data"

    def uri(self, database: str = "mlflow") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        self._as_owner("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name)
        return self.uri(name)

    def stop(self) -> None:
        if Path(self.data, "postmaster.pid").exists():
            self._as_owner("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def _as_owner(self, program: str, *args: str) -> None:
        """Run a PostgreSQL program as the cluster's owner (``postgres`` when we are root: initdb refuses root)."""
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        command = [*prefix, str(postgres_bindir() / program), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT_S, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")


@dataclass
class S3Server:
    """moto's S3 in server mode, with the project's bucket created."""

    port: int
    pid: int
    log: str

    @classmethod
    def start(cls, log_dir: Path) -> S3Server:
        port = free_port()
        log_path = log_dir / "s3.log"
        process = _spawn([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log_path)
        server = cls(port, process.pid, str(log_path))
        _started(process, lambda: _answers_http(server.endpoint_url), "moto_server", log_path)
        server.client().create_bucket(Bucket=BUCKET)
        return server

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, **_boto_credentials())

    def stop(self) -> None:
        _stop_group(self.pid)


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_CREDENTIALS["AWS_DEFAULT_REGION"],
    }


@dataclass
class MlflowServer:
    """``mlflow server`` with runs in PostgreSQL and artifacts in S3, proxied: clients need no S3 credentials."""

    port: int
    pid: int
    log: str

    @classmethod
    def start(
        cls, backend_store_uri: str, artifacts_destination: str, log_dir: Path, s3_endpoint_url: str | None = None
    ) -> MlflowServer:
        port = free_port()
        command = [
            str(BIN / "mlflow"),
            "server",
            *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
            *("--backend-store-uri", backend_store_uri, "--artifacts-destination", artifacts_destination),
        ]
        log_path = log_dir / "mlflow.log"
        env = {
            **os.environ,
            **S3_CREDENTIALS,
            **({"MLFLOW_S3_ENDPOINT_URL": s3_endpoint_url} if s3_endpoint_url else {}),
        }
        process = _spawn(command, log_path, env)
        server = cls(port, process.pid, str(log_path))
        _started(process, lambda: _answers_http(f"{server.uri}/health"), "mlflow server", log_path)
        return server

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        _stop_group(self.pid)


@dataclass
class TeamStack:
    postgres: Postgres
    s3: S3Server
    mlflow: MlflowServer

    @classmethod
    def up(cls) -> TeamStack:
        """PostgreSQL, S3 and MLflow on free ports; the servers' logs go beside the cluster, under its root."""
        postgres = Postgres.start()
        log_dir = Path(postgres.root)
        try:
            s3 = S3Server.start(log_dir)
        except BaseException:
            postgres.stop()
            raise
        try:
            mlflow = MlflowServer.start(postgres.uri(), f"s3://{BUCKET}/mlflow", log_dir, s3.endpoint_url)
        except BaseException:
            s3.stop()
            postgres.stop()
            raise
        return cls(postgres, s3, mlflow)

    def environment(self) -> dict[str, str]:
        """What a client exports: the tracking server, and the S3 endpoint and credentials for a DVC remote."""
        return {"MLFLOW_TRACKING_URI": self.mlflow.uri, "AWS_ENDPOINT_URL": self.s3.endpoint_url, **S3_CREDENTIALS}

    def down(self) -> None:
        self.mlflow.stop()
        self.s3.stop()
        self.postgres.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--state", type=Path, default=STATE_FILE, help="where `up` records what `down` stops")
    args = parser.parse_args()
    if args.action == "up":
        if args.state.exists():
            sys.exit(f"{args.state} exists: the stack is up (run `down` first)")
        stack = TeamStack.up()
        args.state.write_text(json.dumps(asdict(stack), indent=2))
        print("\n".join(f"export {key}={value}" for key, value in stack.environment().items()))
        print(f"# DVC: embedforge remote add team s3://{BUCKET}/dvc --endpoint-url {stack.s3.endpoint_url}")
        return
    if not args.state.exists():
        sys.exit(f"{args.state} not found: nothing to stop")
    state = json.loads(args.state.read_text())
    TeamStack(Postgres(**state["postgres"]), S3Server(**state["s3"]), MlflowServer(**state["mlflow"])).down()
    args.state.unlink()


if __name__ == "__main__":
    main()
