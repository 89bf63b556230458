import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import build_tiny_sentence_model, leftovers
from distributed import Client
from sentence_transformers import SentenceTransformer
from team_stack import free_port

from embedforge import devices, embeddings
from embedforge.config import flatten, load_params
from embedforge.data.sentences import normalize_text, sentence_id
from embedforge.errors import DataError, UserError
from embedforge.models import teacher as teachers
from embedforge.stages import precompute

SHARD_SIZE = 80


@pytest.fixture
def params(prepared, mirror_params, tiny_teacher):
    def build(*overrides: str):
        return mirror_params(
            f"precompute.teacher={tiny_teacher}",
            f"precompute.shard_size={SHARD_SIZE}",
            "precompute.batch_size=16",
            *overrides,
        )

    return build


def distinct_sentences(project: Path) -> dict[str, str]:
    texts = {}
    for dataset in ("snli", "stsb", "sick"):
        for split in ("train", "validation"):
            frame = pd.read_parquet(project / "data/raw" / dataset / f"{split}.parquet")
            for text in pd.concat([frame["sentence1"], frame["sentence2"]]):
                normalized = normalize_text(text)
                texts[sentence_id(normalized)] = normalized
    return texts


def cache_dir(project: Path) -> Path:
    return project / "data/embeddings/model"


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_one_row_per_distinct_sentence_matching_the_teacher(prepared, params, tiny_teacher, backend):
    results = precompute.run(params(f"precompute.backend={backend}"))
    assert results["precompute.backend_used"] == backend

    expected = distinct_sentences(prepared)
    manifest = json.loads((cache_dir(prepared) / "manifest.json").read_text())
    assert manifest["dim"] == 64 and manifest["dtype"] == "float16" and manifest["normalized"] is True
    assert manifest["unique_sentences"] == len(expected) < manifest["sentences"]
    assert len(manifest["shards"]) == results["precompute.shards"] == -(-len(expected) // SHARD_SIZE)
    assert manifest["teacher"]["fingerprint"] == results["teacher.fingerprint"]

    table = pq.read_table(sorted(cache_dir(prepared).glob("part-*.parquet")))
    ids = table.column("sentence_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(expected) and set(ids) == set(expected)
    assert str(table.schema.field("embedding").type) == "fixed_size_list<element: halffloat>[64]"
    for shard in manifest["shards"]:
        assert pq.ParquetFile(cache_dir(prepared) / shard["file"]).metadata.num_rows == shard["rows"]

    cache = embeddings.load(cache_dir(prepared))
    sample = list(expected.values())[:50]
    reference = SentenceTransformer(str(tiny_teacher), device="cpu").encode(sample, normalize_embeddings=True)
    cached = cache.encode(sample)
    cosine = (cached * reference).sum(1) / np.linalg.norm(cached, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() >= 0.999
    assert len(cache) == len(expected) and sentence_id(normalize_text(sample[0])) in cache
    with pytest.raises(KeyError, match="not in the embedding cache"):
        cache.vectors([sentence_id("never seen")])
    assert sum(len(ids) for ids, _ in cache.iter_shards()) == len(expected)


def test_unchanged_rerun_reuses_every_shard(prepared, params):
    first = precompute.run(params())
    again = precompute.run(params())
    assert again["precompute.shards_reused"] == first["precompute.shards"] > 1


def kill_after(batches: int):
    """A batch hook that raises once ``batches`` batches have been encoded, as a kill would stop the run."""
    seen = []

    def hook(batch_index: int) -> None:
        seen.append(batch_index)
        if len(seen) == batches:
            raise RuntimeError("injected kill")

    return hook


def test_killed_run_resumes_and_ends_exact(prepared, params):
    with pytest.raises(RuntimeError, match="injected kill"):
        precompute.run(params(), on_batch=kill_after(8))  # shard 0 is 5 batches of 16: die inside shard 1
    assert not (cache_dir(prepared) / "manifest.json").exists()
    assert [p.name for p in cache_dir(prepared).glob("part-*.parquet")] == ["part-00000.parquet"]
    assert leftovers(prepared) == []
    with pytest.raises(UserError, match="no finished embedding cache"):
        embeddings.load(cache_dir(prepared))

    resumed = precompute.run(params())

    assert resumed["precompute.shards_reused"] == 1
    ids = pq.read_table(sorted(cache_dir(prepared).glob("part-*.parquet"))).column("sentence_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(distinct_sentences(prepared))


def test_missing_teacher_fails_before_any_shard(prepared, params, tmp_path):
    with pytest.raises(UserError, match="teacher directory .*/no-model does not exist"):
        precompute.run(params(f"precompute.teacher={tmp_path / 'no-model'}"))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="is not a sentence-transformers model"):
        precompute.run(params(f"precompute.teacher={tmp_path / 'plain'}"))
    assert not (prepared / "data/embeddings").exists()


def test_dimension_mismatch_with_a_partial_cache_is_refused(prepared, params, tmp_path):
    with pytest.raises(RuntimeError, match="injected kill"):
        precompute.run(params(), on_batch=kill_after(8))
    narrower = build_tiny_sentence_model(tmp_path / "narrow", hidden_size=32)
    with pytest.raises(UserError) as raised:
        precompute.run(params(f"precompute.teacher={narrower}"))
    assert "dim 64 (now 32)" in str(raised.value) and f"rm -r {Path('data/embeddings/model')}" in str(raised.value)


def test_non_finite_embedding_names_the_sentence(prepared, params, tiny_teacher, tmp_path):
    model = SentenceTransformer(str(tiny_teacher), device="cpu")
    backbone = model[0].auto_model
    with __import__("torch").no_grad():
        backbone.embeddings.word_embeddings.weight[model.tokenizer.cls_token_id] = float("nan")
    model.save(str(tmp_path / "model"))

    with pytest.raises(DataError) as raised:
        precompute.run(params(f"precompute.teacher={tmp_path / 'model'}"))
    message = str(raised.value)
    assert "non-finite (NaN/inf) embedding for sentence" in message
    assert any(text in message for text in distinct_sentences(prepared).values())
    assert not list(cache_dir(prepared).glob("part-*.parquet"))


def test_precompute_refuses_data_that_failed_validation(prepared, params):
    results = prepared / "data/validation/results.json"
    results.write_text(json.dumps({"success": False, "summary": "stsb/validation: bad"}))
    with pytest.raises(UserError, match="failed validation"):
        precompute.run(params())


def test_resolving_a_teacher_hashes_its_files_only_when_asked(tiny_teacher):
    ref = teachers.resolve(str(tiny_teacher))
    assert "fingerprint" not in vars(ref)
    assert len(ref.fingerprint) == 64 and "fingerprint" in vars(ref)


def test_the_teacher_fingerprint_is_names_and_bytes_of_weights_and_configs_only(tmp_path):
    """Embedding caches record this hash, so its recipe must stay put: a changed one would invalidate them all."""
    model = tmp_path / "model"
    (model / "1_Pooling").mkdir(parents=True)
    files = {"1_Pooling/config.json": b'{"mean": true}', "model.safetensors": b"weights", "vocab.txt": b"[PAD]"}
    for name, content in files.items():
        (model / name).write_bytes(content)
    ref = teachers.TeacherRef(spec=str(model), path=model, name="model")
    assert ref.fingerprint == hashlib.sha256(b"".join(n.encode() + c for n, c in sorted(files.items()))).hexdigest()

    (model / "README.md").write_text("a new model card")
    (model / "handler.py").write_text("print('not a weight')")
    assert teachers.TeacherRef(spec=str(model), path=model, name="model").fingerprint == ref.fingerprint
    (model / "model.safetensors").write_bytes(b"other weights")
    assert teachers.TeacherRef(spec=str(model), path=model, name="model").fingerprint != ref.fingerprint


def dask_params(params, *overrides: str):
    """Params of a run on a LocalCluster of two worker processes, torch backend (no ONNX export per worker)."""
    return params("precompute.workers=2", "precompute.backend=torch", *overrides)


def cache_contents(directory: Path) -> tuple[list[tuple[str, int]], list[str], np.ndarray]:
    """(manifest's (file, rows) in order, every id in shard order, every vector as stored)."""
    manifest = json.loads((directory / "manifest.json").read_text())
    table = pq.read_table([directory / shard["file"] for shard in manifest["shards"]])
    vectors = table.column("embedding").combine_chunks().values.to_numpy().reshape(len(table), -1)
    return [(s["file"], s["rows"]) for s in manifest["shards"]], table.column("sentence_id").to_pylist(), vectors


@pytest.mark.parametrize("dtype", [pytest.param("float32", marks=pytest.mark.slow), "float16"])
def test_two_dask_workers_write_what_one_worker_writes(prepared, params, dtype):
    one = precompute.run(params("precompute.backend=torch", f"precompute.dtype={dtype}"))
    expected = cache_contents(cache_dir(prepared))
    cache_dir(prepared).rename(prepared / "one-worker")

    two = precompute.run(dask_params(params, f"precompute.dtype={dtype}"))

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


def test_more_workers_inside_a_dask_task_need_that_clusters_address(prepared, params):
    """A Dask worker process cannot start a LocalCluster of its own (the flow on a Dask cluster runs stages there)."""
    with (
        precompute.local_cluster(1) as cluster,
        Client(cluster) as client,
        pytest.raises(UserError, match="set precompute.dask_address to that cluster's scheduler"),
    ):
        client.submit(precompute.run, dask_params(params)).result()


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


@pytest.mark.slow
def test_a_killed_dask_client_resumes_from_its_finished_shards(prepared, params, small_mirror, tiny_teacher, tmp_path):
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

    resumed = precompute.run(dask_params(params, "precompute.batch_size=1", *small_shards))
    assert written <= resumed["precompute.shards_reused"] < partitions == resumed["precompute.shards"]
    resumed_cache = cache_contents(cache_dir(prepared))
    shutil.rmtree(cache_dir(prepared))
    precompute.run(dask_params(params, "precompute.batch_size=1", *small_shards))
    clean = cache_contents(cache_dir(prepared))
    assert resumed_cache[:2] == clean[:2] and np.array_equal(resumed_cache[2], clean[2])
    assert leftovers(prepared) == []


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


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        (["precompute.workers=0"], "precompute.workers: must be >= 1"),
        (["precompute.device=cuda:0,cuda:1"], "precompute.workers (1) must equal the number of GPUs"),
        (["precompute.device=cuda:0,cpu", "precompute.workers=2"], "each cuda:N"),
        (["precompute.device=gpu"], "precompute.device: must be auto, cpu, mps, cuda, cuda:N"),
        (
            ["precompute.device=cuda:0,cuda:1", "precompute.workers=2", "precompute.dask_address=tcp://h:8786"],
            "CUDA_VISIBLE_DEVICES",
        ),
    ],
)
def test_bad_worker_and_device_settings_are_refused_naming_the_key(project, settings, error):
    with pytest.raises(UserError) as raised:
        load_params(project / "params.yaml", settings)
    assert error in str(raised.value)


def test_one_worker_per_listed_gpu_is_accepted(project):
    cfg = load_params(project / "params.yaml", ["precompute.device=cuda:0, cuda:1", "precompute.workers=2"])
    assert cfg.precompute.devices == ["cuda:0", "cuda:1"]
    assert flatten(cfg.to_dict())["precompute.workers"] == 2


def test_each_worker_of_a_multi_gpu_run_takes_the_gpu_at_its_index():
    assert [precompute.worker_device(["cuda:0", "cuda:1"], name) for name in (0, 1)] == ["cuda:0", "cuda:1"]
    assert precompute.worker_device(["auto"], 1) == "auto"


def test_a_gpu_index_this_machine_lacks_is_refused():
    with pytest.raises(UserError, match="precompute.device is 'cuda:7' but this machine has no CUDA GPU"):
        devices.pick("cuda:7", "precompute.device")
