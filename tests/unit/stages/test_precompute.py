"""The precompute stage in this process on the tiny teacher: one row per distinct sentence, shards, resume,
the ONNX and torch backends, the teacher's fingerprint. Dask's executors are in tests/servers/test_dask.py."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from common import build_tiny_sentence_model
from helpers import PRECOMPUTE_SHARD_SIZE, cache_dir, distinct_sentences, leftovers
from sentence_transformers import SentenceTransformer

from embedforge import devices, embeddings
from embedforge.config import flatten, load_params
from embedforge.data.sentences import normalize_text, sentence_id
from embedforge.embeddings.shards import ROW_GROUP_ROWS, SHARD_FORMAT_KEY
from embedforge.errors import DataError, UserError
from embedforge.models import teacher as teachers
from embedforge.stages import precompute


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_one_row_per_distinct_sentence_matching_the_teacher(prepared, precompute_params, tiny_teacher, backend):
    results = precompute.run(precompute_params(f"precompute.backend={backend}"))
    assert results["precompute.backend_used"] == backend

    expected = distinct_sentences(prepared)
    manifest = json.loads((cache_dir(prepared) / "manifest.json").read_text())
    assert manifest["dim"] == 64 and manifest["dtype"] == "float16" and manifest["normalized"] is True
    assert manifest["unique_sentences"] == len(expected) < manifest["sentences"]
    assert len(manifest["shards"]) == results["precompute.shards"] == -(-len(expected) // PRECOMPUTE_SHARD_SIZE)
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
    shards = list(cache.iter_shards())
    assert sum(len(ids) for ids, _ in shards) == len(expected)
    assert all(ids.dtype == "S32" and vectors.dtype == np.float16 for ids, vectors in shards)  # as stored
    corpus = cache.matrix()
    assert corpus.dtype == np.float16 and np.array_equal(corpus, np.concatenate([v for _, v in shards]))
    first = shards[0][0][:5]
    assert np.array_equal(cache.vectors([i.decode() for i in first]), corpus[:5].astype(np.float32))


def test_unchanged_rerun_reuses_every_shard(prepared, precompute_params):
    first = precompute.run(precompute_params())
    again = precompute.run(precompute_params())
    assert again["precompute.shards_reused"] == first["precompute.shards"] > 1


def dictionary_encoded(path) -> bool:
    metadata = pq.ParquetFile(path).metadata
    return any(
        metadata.row_group(group).column(column).has_dictionary_page
        for group in range(metadata.num_row_groups)
        for column in range(metadata.num_columns)
    )


def test_shards_are_written_plain_and_a_format_1_cache_is_reused_and_read_alike(prepared, precompute_params):
    """Format 2 shards carry no dictionary pages; a shard written before (format 1: parquet's default dictionary
    encoding, no format key) still counts as finished, is kept as it is, and reads the same vectors."""
    precompute.run(precompute_params())
    shards = sorted(cache_dir(prepared).glob("part-*.parquet"))
    assert not any(dictionary_encoded(shard) for shard in shards)
    manifest = json.loads((cache_dir(prepared) / "manifest.json").read_text())
    assert [shard["format"] for shard in manifest["shards"]] == [2] * len(shards)
    ids = pq.read_table(shards[0]).column("sentence_id").to_pylist()
    written = embeddings.load(cache_dir(prepared)).vectors(ids)

    table = pq.read_table(shards[0])
    old_metadata = {key: value for key, value in table.schema.metadata.items() if key != SHARD_FORMAT_KEY}
    pq.write_table(
        table.replace_schema_metadata(old_metadata), shards[0], row_group_size=ROW_GROUP_ROWS, compression="zstd"
    )
    old_bytes = shards[0].read_bytes()
    assert dictionary_encoded(shards[0])

    again = precompute.run(precompute_params())
    assert again["precompute.shards_reused"] == len(shards) and shards[0].read_bytes() == old_bytes
    manifest = json.loads((cache_dir(prepared) / "manifest.json").read_text())
    assert [shard["format"] for shard in manifest["shards"]] == [1] + [2] * (len(shards) - 1)
    assert np.array_equal(embeddings.load(cache_dir(prepared)).vectors(ids), written)


def kill_after(batches: int):
    """A batch hook that raises once ``batches`` batches have been encoded, as a kill would stop the run."""
    seen = []

    def hook(batch_index: int) -> None:
        seen.append(batch_index)
        if len(seen) == batches:
            raise RuntimeError("injected kill")

    return hook


def test_killed_run_resumes_and_ends_exact(prepared, precompute_params):
    with pytest.raises(RuntimeError, match="injected kill"):
        precompute.run(precompute_params(), on_batch=kill_after(8))  # shard 0 is 5 batches of 16: die inside shard 1
    assert not (cache_dir(prepared) / "manifest.json").exists()
    assert [p.name for p in cache_dir(prepared).glob("part-*.parquet")] == ["part-00000.parquet"]
    assert leftovers(prepared) == []
    with pytest.raises(UserError, match="no finished embedding cache"):
        embeddings.load(cache_dir(prepared))

    resumed = precompute.run(precompute_params())

    assert resumed["precompute.shards_reused"] == 1
    ids = pq.read_table(sorted(cache_dir(prepared).glob("part-*.parquet"))).column("sentence_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(distinct_sentences(prepared))


def test_missing_teacher_fails_before_any_shard(prepared, precompute_params, tmp_path):
    with pytest.raises(UserError, match="teacher directory .*/no-model does not exist"):
        precompute.run(precompute_params(f"precompute.teacher={tmp_path / 'no-model'}"))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text("{}")
    with pytest.raises(UserError, match="is not a sentence-transformers model"):
        precompute.run(precompute_params(f"precompute.teacher={tmp_path / 'plain'}"))
    assert not (prepared / "data/embeddings").exists()


def test_dimension_mismatch_with_a_partial_cache_is_refused(prepared, precompute_params, tmp_path):
    with pytest.raises(RuntimeError, match="injected kill"):
        precompute.run(precompute_params(), on_batch=kill_after(8))
    narrower = build_tiny_sentence_model(tmp_path / "narrow", hidden_size=32)
    with pytest.raises(UserError) as raised:
        precompute.run(precompute_params(f"precompute.teacher={narrower}"))
    assert "dim 64 (now 32)" in str(raised.value) and f"rm -r {Path('data/embeddings/model')}" in str(raised.value)


def test_non_finite_embedding_names_the_sentence(prepared, precompute_params, tiny_teacher, tmp_path):
    model = SentenceTransformer(str(tiny_teacher), device="cpu")
    backbone = model[0].auto_model
    with __import__("torch").no_grad():
        backbone.embeddings.word_embeddings.weight[model.tokenizer.cls_token_id] = float("nan")
    model.save(str(tmp_path / "model"))

    with pytest.raises(DataError) as raised:
        precompute.run(precompute_params(f"precompute.teacher={tmp_path / 'model'}"))
    message = str(raised.value)
    assert "non-finite (NaN/inf) embedding for sentence" in message
    assert any(text in message for text in distinct_sentences(prepared).values())
    assert not list(cache_dir(prepared).glob("part-*.parquet"))


def test_precompute_refuses_data_that_failed_validation(prepared, precompute_params):
    results = prepared / "data/validation/results.json"
    results.write_text(json.dumps({"success": False, "summary": "stsb/validation: bad"}))
    with pytest.raises(UserError, match="failed validation"):
        precompute.run(precompute_params())


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
