"""Every benchmark runs end to end at a tiny size and prints the one JSON object it promises.

Each runs as a subprocess, as the README runs it, on the small mirror slice and the tiny
teacher (the student shaped to match through ``--set``), so a broken import, flag or result
key shows up here in minutes rather than at the end of a long measurement.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from unittest.mock import ANY

import pytest
from helpers import REPO_ROOT

from embedforge.config import MIRROR_ENV, load_params

TINY_STUDENT = ["model.hidden_size=64", "model.num_heads=2", "model.intermediate_size=128", "model.max_positions=128"]


def sets(*overrides: str) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def train_args(teacher: Path, workdir: Path, *extra: str) -> list[str]:
    """bench_train.py on a few SNLI rows and a student of two of the tiny teacher's layers."""
    return [
        *["--snli-rows", "120", "--batch-size", "8", "--teacher-layers", "1,0", "--workdir", str(workdir), *extra],
        *sets(f"precompute.teacher={teacher}", *TINY_STUDENT),
    ]


def run_benchmark(script: Path, args: list[str], cwd: Path, mirror: Path | None = None) -> dict:
    """Run ``script`` in ``cwd``; it must exit 0 with nothing on stdout but one JSON object."""
    env = {**os.environ, MIRROR_ENV: str(mirror)} if mirror else dict(os.environ)
    done = subprocess.run(
        [sys.executable, str(script), *args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout)
    assert isinstance(report, dict)
    return report


def test_bench_precompute(small_mirror: Path, tiny_teacher: Path, tmp_path: Path) -> None:
    report = run_benchmark(
        REPO_ROOT / "benchmarks/bench_precompute.py",
        ["--batch-size", "32", "--peak-rows", "10", "30", *sets(f"precompute.teacher={tiny_teacher}")],
        tmp_path,
        small_mirror,
    )
    assert {
        "sentences",
        "unique_sentences",
        "teacher",
        "plain_encode_numpy_save",
        "embedforge_precompute",
        "speedup",
        "min_cosine_to_plain",
        "peak_rss_mb",
    } <= report.keys()
    assert report["min_cosine_to_plain"] > 0.99  # both sides ran the same (tiny) teacher
    assert report["peak_rss_mb"]["small"]["sentences"] < report["peak_rss_mb"]["large"]["sentences"]


def test_bench_train(small_mirror: Path, tiny_teacher: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    report = run_benchmark(
        REPO_ROOT / "benchmarks/bench_train.py",
        train_args(tiny_teacher, workdir, "--steps", "2"),
        tmp_path,
        small_mirror,
    )
    assert {
        "machine",
        "setup",
        "sentence_transformers_trainer",
        "embedforge",
        "speedup_samples_per_s",
        "sts_spearman_delta",
        "targets_met",
    } <= report.keys()
    assert {"samples_per_s", "tokens_per_s", "sts_spearman", "matmul_fraction"} <= report["embedforge"].keys()
    assert load_params(workdir / "params.yaml").preset == "development"


def test_bench_train_ignores_the_projects_params(small_mirror: Path, tiny_teacher: Path, tmp_path: Path) -> None:
    """After the README's `preset: distill-small` step the benchmark still measures its own InfoNCE setup.

    The benchmarks are copied into a project whose params.yaml (beside them and in the working directory)
    has that preset, which used to hand the train stage a distillation objective and no embedding cache.
    """
    project = tmp_path / "project"
    shutil.copytree(REPO_ROOT / "benchmarks", project / "benchmarks")
    params = (REPO_ROOT / "params.yaml").read_text()
    (project / "params.yaml").write_text(re.sub(r"^preset: .*$", "preset: distill-small", params, flags=re.MULTILINE))
    assert load_params(project / "params.yaml").train.distills
    workdir = tmp_path / "work"
    report = run_benchmark(
        project / "benchmarks/bench_train.py",
        train_args(tiny_teacher, workdir, "--steps", "1", "--skip-trainer"),
        project,
        small_mirror,
    )
    assert report["embedforge"]["samples_per_s"] > 0
    measured = load_params(workdir / "params.yaml").train
    assert measured.uses_pairs and not measured.distills


def test_bench_student(small_mirror: Path, tiny_teacher: Path, tmp_path: Path) -> None:
    model, sts = str(tiny_teacher), str(small_mirror / "stsb/validation.parquet")
    report = run_benchmark(
        REPO_ROOT / "benchmarks/bench_student.py",
        ["--student", model, "--teacher", model, "--sts", sts, "--rounds", "1"],
        tmp_path,
    )
    assert {"sts_split", "sentences", "teacher", "student", "speed_ratio", "targets_met"} <= report.keys()
    assert {"sts_spearman", "sentences_per_s", "parameters"} <= report["student"].keys()


def test_bench_export(small_mirror: Path, tiny_teacher: Path, tmp_path: Path) -> None:
    model, sts = str(tiny_teacher), str(small_mirror / "stsb/validation.parquet")
    report = run_benchmark(
        REPO_ROOT / "benchmarks/bench_export.py",
        ["--student", model, "--kind", "encoder", "--sts", sts, "--rounds", "1"],
        tmp_path,
    )
    assert {"pytorch", "onnx_fp32", "onnx_int8", "targets"} <= report.keys()
    assert report["onnx_fp32"]["cosine_min"] >= 0.9999 and report["pytorch"]["speed_vs_pytorch"] == 1.0
    assert report["onnx_int8"]["disk_bytes"] < report["onnx_fp32"]["disk_bytes"]
    assert set(report["targets"]) == {
        "onnx_fp32 cosine_min >= 0.9999",
        "onnx_int8 |spearman - pytorch| <= 0.01",
        "onnx_int8 speed_vs_pytorch >= 1.5",
    }


def test_bench_families(small_mirror: Path, tiny_teacher: Path, tmp_path: Path) -> None:
    overrides = [
        f"precompute.teacher={tiny_teacher}",
        "precompute.backend=torch",
        *TINY_STUDENT,
        "model.teacher_layers=[1, 0]",
        "model.static.dim=32",
        "train.batch_size=8",
    ]
    report = run_benchmark(
        REPO_ROOT / "benchmarks/bench_families.py",
        ["--minutes", "0.02", "--limit", "60", "--rounds", "1", "--workdir", str(tmp_path / "work"), *sets(*overrides)],
        tmp_path,
        small_mirror,
    )
    families = ["encoder", "lattice", "dynamic", "static", "encoder_staged", "encoder_clm"]
    assert {"training_minutes", "sts_split", "teacher", *families} <= report.keys()
    promised = {"sts_spearman", "speed_ratio_vs_teacher", "steps", "train_seconds", "epoch_log"}
    assert all(promised <= report[family].keys() for family in families)


def test_bench_documents(small_mirror: Path, tiny_teacher: Path, tmp_path: Path) -> None:
    overrides = [f"precompute.teacher={tiny_teacher}", "precompute.backend=torch", *TINY_STUDENT, "train.batch_size=8"]
    overrides.append("model.teacher_layers=[1, 0]")
    report = run_benchmark(
        REPO_ROOT / "benchmarks/bench_documents.py",
        [
            *("--steps", "2", "--limit", "60", "--sentences", "5", "8", "--workdir", str(tmp_path / "work")),
            *("--train-seeds", "0", "1"),
            *sets(*overrides, "tokenize.max_length=48"),
        ],
        tmp_path,
        small_mirror,
    )
    assert report["documents"]["test"] > 0 and report["documents"]["train"] > 0 and report["documents"]["validation"]
    assert report["train_seeds"] == [0, 1]
    assert [run["steps"] for t in ("every_chunk", "first_chunk") for run in report[f"train_{t}"]] == [2, 2, 2, 2]
    assert report["train_documents"]["chunked_sentences"] > 0 and report["max_length"] == 48
    for pooling in ("mean", "max_sim"):
        table = report["long_documents"][pooling]
        assert set(table) == {"student_every_chunk", "student_first_chunk", "teacher"}
        for searches in table.values():
            assert {"pooled", "truncated"} == set(searches)
            assert all(0 <= searches[way][measure] <= 1 for way in searches for measure in ("recall@10", "ndcg@10"))
        targets = report["targets"][pooling]
        assert targets["pooled_minus_truncated_ndcg@10"]["every_chunk"] == round(
            table["student_every_chunk"]["pooled"]["ndcg@10"] - table["student_every_chunk"]["truncated"]["ndcg@10"], 4
        )
        assert isinstance(targets["met"], bool) and len(targets["margin_per_seed"]) == 2
        mean_margin = sum(targets["margin_per_seed"]) / 2
        assert abs(targets["every_chunk_minus_first_chunk_pooled_ndcg@10"] - mean_margin) <= 1e-4
    same_search = report["long_documents"]["mean"]["teacher"]["truncated"]
    assert same_search == report["long_documents"]["max_sim"]["teacher"]["truncated"]  # a first chunk pools alike


def test_bench_static(small_mirror: Path, tiny_teacher: Path, tmp_path: Path) -> None:
    report = run_benchmark(
        REPO_ROOT / "benchmarks/bench_static.py",
        [
            *("--dim", "32", "--epochs", "1", "--limit", "60", "--rounds", "1", "--skip-model2vec"),
            *("--workdir", str(tmp_path / "work")),
            *sets(f"precompute.teacher={tiny_teacher}", "precompute.backend=torch", "train.batch_size=16"),
        ],
        tmp_path,
        small_mirror,
    )
    for name in ("teacher", "static_init", "static_trained"):
        assert {"stsb/validation.spearman", "sick/validation.spearman", "speed_ratio_vs_teacher"} <= report[name].keys()
        assert report[name]["bytes_on_disk"] > 0
    assert report["static_trained"]["embedding_dim"] == 32 and report["model2vec_distill_seconds"] is None
    assert "trained_minus_static_init.stsb/validation" in report


def test_bench_scale(small_mirror: Path, tmp_path: Path) -> None:
    report = run_benchmark(
        REPO_ROOT / "benchmarks/bench_scale.py",
        ["--sizes", "1000,3000", "--minilm-max-n", "1000", "--workdir", str(tmp_path / "work")],
        tmp_path,
        small_mirror,
    )
    assert report["sizes"] == [1000, 3000] and [point["sentences"] for point in report["points"]] == [1000, 3000]
    for stage in ("download", "validate", "precompute", "tokenize", "train", "retrieval"):
        for point in report["points"]:
            assert point[stage]["seconds"] > 0 and point[stage]["peak_rss_mb"] > 50, (stage, point[stage])
            assert 0 < point[stage]["anon_peak_mb"] < point[stage]["peak_rss_mb"], (stage, point[stage])
        assert report["ratios"][stage]["peak_rss_largest_vs_100k"] > 0
        assert report["extrapolated"]["stages"][stage].keys() == {"hours", "anon_peak_gb", "bytes_on_disk_gb"}
    assert report["extrapolated"]["sentences"] == 50_000_000 and report["extrapolated"]["from_sizes"] == [1000, 3000]
    for point in report["points"]:
        sentences = point["precompute"]["vector_bytes"] / (2 * 64)  # the corpus's and the pairs', as train reads
        assert 32 + 2 * 64 < point["train"]["data_bytes"] / sentences < 32 + 2 * 64 + 4 * 40  # ids, vectors, tokens
        assert (
            point["precompute"]["shard_bytes"]
            > point["precompute"]["vector_bytes"]
            == point["retrieval"]["corpus_bytes"]
        )
    assert {"anon_gained_vs_data_bytes", "anon_bytes_per_sentence", "data_bytes_per_sentence"} <= report["ratios"][
        "train"
    ].keys()
    assert report["points"][1]["rows"] == 3600  # a fifth of the sentences repeated
    assert report["minilm_precompute"]["1000"]["model_share"] > 0
    assert {"dvc_status_seconds", "dvc_repro_noop_seconds", "flow_cache_keys_seconds"} <= report[
        "no_op_at_largest"
    ].keys()


def test_bench_remote(small_mirror: Path, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    report = run_benchmark(
        REPO_ROOT / "benchmarks/bench_remote.py",
        ["--sentences", "1500", "--status-gb", "0.004", "--workdir", str(workdir), *sets("precompute.shard_size=500")],
        tmp_path,
        small_mirror,
    )
    pushed, status = report["push_pull"], report["status"]
    assert pushed["pulled_sha256_match"] and (pushed["sentences"], pushed["shards"], pushed["files"]) == (1500, 3, 4)
    assert pushed["remote_bytes"] > pushed["bytes"]  # the shards and manifest, and DVC's listing of the folder
    assert pushed["push_seconds"] > 0 and pushed["push_noop_seconds"] > 0 and pushed["pull_seconds"] > 0
    assert status["shards"] > 3 and status["bytes"] == pytest.approx(0.004 * 2**30, rel=0.2)
    assert len(status["status_unchanged_seconds"]) == 2 and status["status_after_rm_site_cache_seconds"] > 0
    assert status["rm_dvc_tmp_started_a_new_hash_cache"]
    assert report["cache"] == {"dtype": "float16", "dim": 384, "shard_size": 500, "bytes_per_sentence": ANY}
    assert not workdir.exists()


def test_bench_distributed(small_mirror: Path, tiny_teacher: Path, tmp_path: Path) -> None:
    student = [*TINY_STUDENT, "model.num_layers=2", "model.teacher_layers=[1, 0]"]
    report = run_benchmark(
        REPO_ROOT / "benchmarks/bench_distributed.py",
        [
            *["--sentences", "64", "--pairs", "120", "--steps", "3", "--batch", "8"],
            *sets(f"precompute.teacher={tiny_teacher}", "precompute.backend=torch", *student),
        ],
        tmp_path,
        small_mirror,
    )
    precompute, train = report["precompute"], report["train"]
    assert precompute["workers_1_sentences_per_s"] > 0 and precompute["workers_2_sentences_per_s"] > 0
    assert train["steps"] == 3 and train["global_batch"] == 8
    assert train["processes_1_samples_per_s"] > 0 and train["processes_2_samples_per_s"] > 0
    assert train["speedup"] == pytest.approx(train["processes_2_samples_per_s"] / train["processes_1_samples_per_s"])


def test_bench_checkpointing(small_mirror: Path, tmp_path: Path) -> None:
    student = [*TINY_STUDENT, "model.num_layers=2", "model.init=scratch"]  # one layer would gain nothing
    report = run_benchmark(
        REPO_ROOT / "benchmarks/bench_checkpointing.py",
        ["--pairs", "120", "--steps", "2", "--batch", "8", "--equal-batch", "4", *sets(*student)],
        tmp_path,
        small_mirror,
    )
    for figures in (report, report["same_micro_batch"]):
        assert {"plain", "checkpointed", "speed_ratio", "peak_rss_ratio"} <= figures.keys()
        assert figures["checkpointed"]["memory_estimate_mb"] < figures["plain"]["memory_estimate_mb"]
    equal = report["same_micro_batch"]
    assert equal["plain"]["micro_batch_examples"] == equal["checkpointed"]["micro_batch_examples"] == 4
    # measured, like for like: checkpointing keeps each layer's input instead of all its activations
    assert 0 < equal["checkpointed"]["saved_activations_mb"] < 0.6 * equal["plain"]["saved_activations_mb"]
    assert equal["saved_activations_ratio"] < 0.6
