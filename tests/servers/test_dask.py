"""Dask: precompute's shards on a LocalCluster of worker processes or at a scheduler's address, and the flow's
stage tasks on a cluster; what one worker writes, a kill resumed, an address that does not answer."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from distributed import Client
from helpers import cache_dir, distinct_sentences, leftovers
from prefect_dask import DaskTaskRunner
from team_stack import free_port

from embedforge import tracking
from embedforge.errors import UserError
from embedforge.flow import stage_runner
from embedforge.stages import precompute
from embedforge.stages.precompute import local_cluster


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_two_dask_workers_write_what_one_worker_writes(prepared, precompute_params, dtype):
    one = precompute.run(precompute_params("precompute.backend=torch", f"precompute.dtype={dtype}"))
    expected = cache_contents(cache_dir(prepared))
    cache_dir(prepared).rename(prepared / "one-worker")

    two = precompute.run(dask_params(precompute_params, f"precompute.dtype={dtype}"))

    shards, ids, vectors = cache_contents(cache_dir(prepared))
    assert shards == expected[0] and ids == expected[1] and len(shards) > 1
    if dtype == "float16":
        assert np.array_equal(vectors, expected[2])
    else:
        assert np.abs(vectors - expected[2]).max() <= 1e-6
    assert two["precompute.workers_used"] == 2 and one["precompute.workers_used"] == 1
    varying = {"precompute.workers_used", *(["precompute.bytes_on_disk"] if dtype == "float32" else [])}  # last bits
    same = [key for key in one if "per_s" not in key and key not in varying]
    assert {key: two[key] for key in same} == {key: one[key] for key in same}
    assert not (cache_dir(prepared) / precompute.SPILL_DIR).exists() and leftovers(prepared) == []


def test_a_killed_dask_client_resumes_from_its_finished_shards(
    prepared, precompute_params, small_mirror, tiny_teacher, tmp_path
):
    small_shards = ["precompute.shard_size=10"]  # many shards of a few batches: a run long enough to kill inside
    partitions = -(-len(distinct_sentences(prepared)) // 10)
    command = precompute_command(
        small_mirror,
        tiny_teacher,
        "precompute.workers=2",
        "precompute.backend=torch",
        "precompute.batch_size=1",
        *small_shards,
    )
    with (tmp_path / "client.log").open("w") as client_log:
        client = subprocess.Popen(command, cwd=prepared, stdout=client_log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not list(cache_dir(prepared).glob("part-*.parquet")):
            assert client.poll() is None and time.monotonic() < deadline, (tmp_path / "client.log").read_text()
            time.sleep(0.005)
        os.kill(client.pid, signal.SIGKILL)
    finally:
        client.wait()
    written = len(list(cache_dir(prepared).glob("part-*.parquet")))
    assert 1 <= written < partitions and not (cache_dir(prepared) / "manifest.json").exists()

    resumed = precompute.run(dask_params(precompute_params, "precompute.batch_size=1", *small_shards))
    assert written <= resumed["precompute.shards_reused"] < partitions == resumed["precompute.shards"]
    resumed_cache = cache_contents(cache_dir(prepared))
    shutil.rmtree(cache_dir(prepared))
    precompute.run(dask_params(precompute_params, "precompute.batch_size=1", *small_shards))
    clean = cache_contents(cache_dir(prepared))
    assert resumed_cache[:2] == clean[:2] and np.array_equal(resumed_cache[2], clean[2])
    assert leftovers(prepared) == []


def test_a_dask_address_runs_the_stage_tasks_on_that_cluster_with_the_flows_environment(project, monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    with local_cluster(1) as cluster, stage_runner(cluster.scheduler_address, "the-parent-run") as runner:
        assert isinstance(runner, DaskTaskRunner) and runner.address == cluster.scheduler_address
        seen = runner.client.run(lambda: (os.environ.get(tracking.PARENT_RUN_ENV), os.environ.get("PREFECT_API_URL")))
    assert list(seen.values()) == [("the-parent-run", "http://127.0.0.1:4200/api")]


def test_an_unreachable_dask_address_fails_the_flow_naming_it(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    address = f"tcp://127.0.0.1:{free_port()}"
    with (
        pytest.raises(UserError, match=f"dask_address: no Dask scheduler answered at '{address}'"),
        stage_runner(address, None),
    ):
        pass


def cache_contents(directory: Path) -> tuple[list[tuple[str, int]], list[str], np.ndarray]:
    """(manifest's (file, rows) in order, every id in shard order, every vector as stored)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    table = pq.read_table([directory / shard["file"] for shard in manifest["shards"]])
    vectors = table.column("embedding").combine_chunks().values.to_numpy().reshape(len(table), -1)
    return [(s["file"], s["rows"]) for s in manifest["shards"]], table.column("sentence_id").to_pylist(), vectors


def dask_params(precompute_params, *overrides: str):
    """Params of a run on a LocalCluster of two worker processes, torch backend (no ONNX export per worker)."""
    return precompute_params("precompute.workers=2", "precompute.backend=torch", *overrides)


def test_more_workers_inside_a_dask_task_need_that_clusters_address(prepared, precompute_params):
    """A Dask worker process cannot start a LocalCluster of its own (the flow on a Dask cluster runs stages there)."""
    with (
        precompute.local_cluster(1) as cluster,
        Client(cluster) as client,
        pytest.raises(UserError, match="set precompute.dask_address to that cluster's scheduler"),
    ):
        client.submit(precompute.run, dask_params(precompute_params)).result()


def precompute_command(small_mirror: Path, tiny_teacher: Path, *overrides: str) -> list[str]:
    """`embedforge --set ... precompute` on the small mirror and the tiny teacher: the stage as its own process."""
    settings = [
        "download.source=mirror",
        f"download.mirror={small_mirror}",
        "tracking.enabled=false",
        f"precompute.teacher={tiny_teacher}",
        *overrides,
    ]
    return [
        str(Path(sys.executable).with_name("embedforge")),
        *(f"--set={setting}" for setting in settings),
        "precompute",
    ]


def test_an_unreachable_dask_address_fails_fast_naming_the_key(prepared, small_mirror, tiny_teacher):
    address = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    done = subprocess.run(
        precompute_command(small_mirror, tiny_teacher, f"precompute.dask_address={address}"),
        cwd=prepared,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: precompute.dask_address: no Dask scheduler answered at '{address}'"
    )
    assert time.monotonic() - started < 60
    assert not (prepared / "data/embeddings").exists()
