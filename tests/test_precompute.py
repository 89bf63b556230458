import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import build_tiny_sentence_model, leftovers
from sentence_transformers import SentenceTransformer

from embedforge import embeddings
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
