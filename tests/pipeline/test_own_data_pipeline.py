"""A user's own corpus and scored pairs through the whole pipeline (`embedforge run`), and an edit to the corpus
re-running download and leaving what it feeds out of date (the stages downstream ran on own data once already)."""

from __future__ import annotations

import json
import math

import pyarrow.parquet as pq
from own_data import DOCUMENTS, OWN, QUERIES, corpus_texts, write_documents, write_pairs, write_tickets


def test_the_whole_pipeline_distils_on_a_corpus_and_documents_and_scores_own_pairs_and_queries(
    tmp_path, small_mirror, tiny
):
    from conftest import make_clone, sh

    own_stages = [
        *OWN,
        DOCUMENTS,
        QUERIES,
        "download.datasets.my_pairs.similar_min_score=0.7",
        "download.datasets.my_pairs.dissimilar_max_score=0.3",
        "precompute.datasets=[tickets, my_pairs, manuals]",
        "tokenize.datasets=[tickets, my_pairs, manuals]",
        "tokenize.max_length=64",
        "train.datasets=[tickets, manuals]",
        "train.objectives={infonce: 0.0, distill: 1.0}",
        "train.sts_validation=my_pairs/validation",
        "evaluate.sts_splits=[my_pairs/validation]",
        "evaluate.separation_splits=[my_pairs/validation]",
        "evaluate.retrieval_split=my_pairs/validation",
        "evaluate.document_retrieval=[questions/test]",
    ]
    repo, env = make_clone(tmp_path / "repo", small_mirror, [*tiny, *own_stages])
    write_tickets(repo, corpus_texts(small_mirror))  # git-ignored, as a user's data is: DVC reads them from disk
    write_pairs(repo, small_mirror)
    queries = write_documents(repo, small_mirror)
    sh("embedforge", "run", cwd=repo, env=env)

    summary = json.loads((repo / "metrics/train.json").read_text())
    evaluation = json.loads((repo / "metrics/eval.json").read_text())
    sentences = set(pq.read_table(repo / "data/tokens/tickets/train.parquet").column("sentence_id").to_pylist())
    chunks = pq.read_table(repo / "data/tokens/manuals/train.parquet").num_rows
    chunked = json.loads((repo / "data/tokens/stats.json").read_text())["splits"]["manuals/train"]
    assert chunks == chunked["chunks"] > chunked["sentences"] >= chunked["chunked_sentences"] > 0
    assert summary["steps"] == math.ceil((len(sentences) + chunks) / 8)  # one epoch over every sentence and chunk
    assert -1 <= evaluation["student"]["sts"]["my_pairs/validation"]["spearman"] <= 1
    assert evaluation["student"]["retrieval"]["queries"] > 0
    searched = evaluation["student"]["documents"]["questions/test"]
    assert searched["queries"] == min(queries, 60) > 0 and searched["units"] > searched["documents"] > 0
    assert 0 < searched["all"]["chunked"]["ndcg@10"] <= 1 and 0 < searched["all"]["first_chunk"]["ndcg@10"] <= 1
    page = (repo / "reports/index.html").read_text()
    assert "my_pairs/validation" in page and "Document retrieval: questions/test (max_sim pooling of chunks)" in page
    assert "<td>manuals/train</td>" in page and "Texts by their length in tokens" in page

    with (repo / "data/external/tickets/b.jsonl").open("a") as handle:
        handle.write(json.dumps({"body": "A brand new ticket about a refund."}) + "\n")
    status = sh("dvc", "status", cwd=repo, env=env).stdout
    assert "download:" in status and "data/external" in status and "params:" not in status, status
    rerun = sh("dvc", "repro", "download", cwd=repo, env=env).stdout
    assert "Running stage 'download'" in rerun and "Running stage 'params'" not in rerun, rerun
    manifest = json.loads((repo / "data/raw/manifest.json").read_text())
    assert manifest["datasets"]["tickets"]["train"]["source_rows"] == len(corpus_texts(small_mirror)) + 1
    status = sh("dvc", "status", cwd=repo, env=env).stdout  # what download feeds is out of date: DVC reruns it
    assert "validate:" in status and "data/raw" in status and "download:" not in status, status
