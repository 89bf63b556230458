"""Launching the processes of a distributed training run, and what each of them runs.

``embedforge train`` (so ``dvc repro`` and the Prefect task too) launches the world itself through
``torch.distributed.run``'s launcher when the params ask for more than one process; each process runs
``worker``, which trains through the train stage (found in the stage registry, as the CLI finds it) as one
rank, and rank 0 leaves the results for the launcher. The collectives the ranks train with live in
``training.distributed``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from embedforge import tracking
from embedforge.config import Params
from embedforge.errors import UserError
from embedforge.exits import exit_now
from embedforge.stages import STAGES
from embedforge.stages.train_phases import resumable
from embedforge.training.distributed import wanted_size

log = logging.getLogger(__name__)

RENDEZVOUS_ID = "embedforge-train"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(cfg: Params, run_id: str | None) -> dict[str, Any]:
    """Start the world ``cfg.train`` asks for (this machine's share of it) through torch's elastic launcher, each
    worker running ``train`` on ``cfg``; wait for it and return rank 0's results.

    Workers log into the MLflow run ``run_id`` (the one this process opened), so a
    distributed run is one run, as a single-process one is.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    params = cfg.train
    endpoint = params.rdzv_endpoint or f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="embedforge-train-") as scratch:
        config_path, result_path = Path(scratch) / "params.json", Path(scratch) / "result.json"
        config_path.write_text(json.dumps(cfg.to_dict()), encoding="utf-8")
        arguments = ["-m", __name__, str(config_path), str(result_path), "--launcher-pid", str(os.getpid())]
        arguments += ["--run-id", run_id] if run_id else []
        launch_config = LaunchConfig(
            min_nodes=params.nnodes,
            max_nodes=params.nnodes,
            nproc_per_node=params.nproc_per_node,
            run_id=RENDEZVOUS_ID,
            rdzv_backend="c10d",
            rdzv_endpoint=endpoint,
            max_restarts=params.max_restarts,
            monitor_interval=0.5,
        )
        log.info(
            "train: launching %d process(es) on this node of %d node(s), rendezvous at %s",
            params.nproc_per_node,
            params.nnodes,
            endpoint,
        )
        try:
            elastic_launch(launch_config, sys.executable)(*arguments)
        except ChildFailedError as failure:
            raise UserError(worker_error(result_path) or f"train: a training process failed: {failure}") from None
        if not result_path.is_file():  # this node ran no rank 0: its results live on the node that did
            return {"result.world_size": wanted_size(params)}
        return json.loads(result_path.read_text(encoding="utf-8"))["results"]


def worker_error(result_path: Path) -> str | None:
    """The message a worker left for a user error (bad data, bad params), so the launcher can report it."""
    if not result_path.is_file():
        return None
    return json.loads(result_path.read_text(encoding="utf-8")).get("error")


def die_with(launcher_pid: int) -> None:
    """End this worker when its launcher dies, even by SIGKILL (``kill -9`` of ``dvc repro``): torch starts each
    worker in its own session, so nothing else would stop it training on. Linux only (``PR_SET_PDEATHSIG``)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    set_parent_death_signal = 1  # PR_SET_PDEATHSIG
    ctypes.CDLL(None, use_errno=True).prctl(set_parent_death_signal, signal.SIGKILL)
    if os.getppid() != launcher_pid:  # it died before the signal was armed
        os._exit(1)


def worker(argv: list[str] | None = None) -> int:
    """One training process of a launched world: read the params, train, and (rank 0) leave the results."""
    parser = argparse.ArgumentParser(prog="embedforge-train-worker")
    parser.add_argument("params")
    parser.add_argument("result")
    parser.add_argument("--run-id")
    parser.add_argument("--launcher-pid", type=int)
    arguments = parser.parse_args(argv)
    if arguments.launcher_pid:
        die_with(arguments.launcher_pid)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(  # the other ranks would repeat rank 0's progress: they report only warnings
        level=logging.INFO if rank == "0" else logging.WARNING, format=f"[rank {rank}] %(levelname)s %(message)s"
    )
    cfg = Params.model_validate(json.loads(Path(arguments.params).read_text(encoding="utf-8")))
    train = STAGES["train"].module()  # the stage as the CLI and the flow find it
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0 and resumable(cfg):
        log.warning("train: the launcher restarted this world (train.max_restarts): resuming from checkpoints/last")
        cfg.train.resume = True
    is_main = rank == "0"
    try:
        with tracking.attach(cfg, arguments.run_id if is_main else None):
            results = train.run(cfg)
    except UserError as error:
        Path(arguments.result).write_text(json.dumps({"error": str(error)}), encoding="utf-8")
        log.error("%s", error)
        return error.exit_code
    if is_main:
        Path(arguments.result).write_text(json.dumps({"results": results}), encoding="utf-8")
    return 0


if __name__ == "__main__":
    exit_now(worker())
