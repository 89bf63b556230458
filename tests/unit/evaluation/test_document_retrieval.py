import math

import numpy as np
import pytest

from embedforge.errors import DataError
from embedforge.evaluation import retrieval as module
from embedforge.evaluation.retrieval import document_retrieval, retrieval

POOLINGS = ("mean", "max_sim", "first")


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def reference_scores(queries, chunks, chunk_document, documents, pooling) -> np.ndarray:
    """Queries x documents scores from the whole matrix, in float64."""
    queries, chunks = unit(np.asarray(queries, np.float64)), unit(np.asarray(chunks, np.float64))
    members = [np.flatnonzero(chunk_document == document) for document in range(documents)]
    if pooling == "mean":
        return queries @ unit(np.stack([chunks[rows].sum(axis=0) for rows in members])).T
    if pooling == "max_sim":
        return np.stack([(queries @ chunks[rows].T).max(axis=1) for rows in members], axis=1)
    return queries @ chunks[[rows[0] for rows in members]].T


def reference(queries, chunks, chunk_document, documents, relevant, pooling, ks) -> dict:
    """recall@k, MRR and nDCG@10 by the definitions, query by query over the full score matrix."""
    scores = reference_scores(queries, chunks, chunk_document, documents, pooling)
    recall, reciprocal, gain = dict.fromkeys(ks, 0.0), 0.0, 0.0
    for row, wanted in enumerate(relevant):
        wanted = sorted(set(wanted))
        others = np.delete(scores[row], wanted)
        ordered = sorted(scores[row][wanted], reverse=True)
        ranks = [1 + int((others > score).sum()) + before for before, score in enumerate(ordered)]
        for k in ks:
            recall[k] += sum(rank <= k for rank in ranks) / len(ranks)
        reciprocal += 1 / ranks[0]
        ideal = sum(1 / math.log2(i + 1) for i in range(1, min(len(ranks), 10) + 1))
        gain += sum(1 / math.log2(rank + 1) for rank in ranks if rank <= 10) / ideal
    total = len(relevant)
    return {"recall": {k: v / total for k, v in recall.items()}, "mrr": reciprocal / total, "ndcg": gain / total}


# Three documents of 2-D chunks; the query is [1, 0]. A: chunks [0, 1], [1, 0]; B: [0.8, 0.6]; C: [0.6, 0.8],
# [0.6, -0.8]. first: B .8 > C .6 > A 0; max_sim: A 1 > B .8 > C .6; mean: C 1 > B .8 > A .707.
HAND_CHUNKS = np.array([[0.0, 1.0], [1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.6, -0.8]])
HAND_DOCUMENTS = np.array([0, 0, 1, 2, 2])


@pytest.mark.parametrize(
    ("pooling", "ranks_of_a_b_c"),
    [("first", (3, 1, 2)), ("max_sim", (1, 2, 3)), ("mean", (3, 2, 1))],
)
def test_each_pooling_ranks_the_hand_made_documents_its_own_way(pooling, ranks_of_a_b_c):
    for document, rank in enumerate(ranks_of_a_b_c):
        found = document_retrieval(
            np.array([[1.0, 0.0]]), HAND_CHUNKS, HAND_DOCUMENTS, 3, [[document]], pooling, ks=(1, 2)
        )
        assert found.mrr == pytest.approx(1 / rank)
        assert found.recall == {1: float(rank <= 1), 2: float(rank <= 2)}
        assert found.ndcg == pytest.approx(1 / math.log2(rank + 1))
        assert (found.queries, found.corpus) == (1, 3)


def random_documents(rng: np.random.Generator, documents: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunk vectors of ``documents`` documents of 1-6 chunks, and one of 12, so some run across several blocks."""
    sizes = rng.integers(1, 7, size=documents)
    sizes[documents // 2] = 12
    chunk_document = np.repeat(np.arange(documents), sizes)
    return rng.normal(size=(len(chunk_document), 8)), chunk_document


@pytest.mark.parametrize("pooling", POOLINGS)
@pytest.mark.parametrize(("query_block", "corpus_block"), [(256, 16_384), (7, 5), (3, 1), (16, 13)])
def test_blocks_agree_with_the_full_matrix(monkeypatch, pooling, query_block, corpus_block):
    monkeypatch.setattr(module, "QUERY_BLOCK", query_block)
    monkeypatch.setattr(module, "CORPUS_BLOCK", corpus_block)
    rng = np.random.default_rng(0)
    chunks, chunk_document = random_documents(rng, 40)
    queries = rng.normal(size=(30, 8))
    relevant = [rng.choice(40, size=rng.integers(1, 4), replace=False).tolist() for _ in range(30)]
    found = document_retrieval(queries, chunks, chunk_document, 40, relevant, pooling, ks=(1, 3, 10))
    expected = reference(queries, chunks, chunk_document, 40, relevant, pooling, (1, 3, 10))
    assert found.recall == pytest.approx(expected["recall"])
    assert found.mrr == pytest.approx(expected["mrr"]) and found.ndcg == pytest.approx(expected["ndcg"])
    assert 0 < found.mrr < 1


@pytest.mark.parametrize("pooling", POOLINGS)
def test_float16_chunks_in_a_memory_map(tmp_path, monkeypatch, pooling):
    monkeypatch.setattr(module, "CORPUS_BLOCK", 16)
    rng = np.random.default_rng(1)
    chunks, chunk_document = random_documents(rng, 50)
    stored = np.memmap(tmp_path / "chunks.f16", dtype=np.float16, mode="w+", shape=chunks.shape)
    stored[:] = chunks
    stored.flush()
    mapped = np.memmap(tmp_path / "chunks.f16", dtype=np.float16, mode="r", shape=chunks.shape)
    queries = rng.normal(size=(20, 8)).astype(np.float32)
    relevant = [[int(document)] for document in rng.integers(0, 50, size=20)]
    found = document_retrieval(queries, mapped, chunk_document, 50, relevant, pooling)
    expected = reference(queries, np.asarray(mapped), chunk_document, 50, relevant, pooling, (1, 10))
    assert found.recall == pytest.approx(expected["recall"]) and found.mrr == pytest.approx(expected["mrr"])


def test_ndcg_with_several_relevant_documents_by_hand():
    # one-chunk documents on a half circle: the query [1, 0] ranks them 0, 1, 2, ... 11
    angles = np.linspace(0, 3, 12)
    corpus = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    found = retrieval(np.array([[1.0, 0.0]] * 3), corpus, [[0, 2], [11], [4, 9, 10]], ks=(1, 10))
    first = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    third = (1 / math.log2(6) + 1 / math.log2(11)) / (1 + 1 / math.log2(3) + 1 / math.log2(4))  # rank 11: no gain
    assert found.ndcg == pytest.approx((first + 0 + third) / 3)
    assert found.mrr == pytest.approx((1 + 1 / 12 + 1 / 5) / 3)
    assert found.recall == pytest.approx({1: (1 / 2) / 3, 10: (1 + 0 + 2 / 3) / 3})


def test_retrieval_is_the_one_chunk_case():
    queries = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    corpus = np.array([[1.0, 0.1], [0.1, 1.0], [1.0, 0.9], [-1.0, 0.0]])
    relevant = [[2], [1, 3], [3]]  # ranks: 2; 1 and 4; 4
    found = retrieval(queries, corpus, relevant, ks=(1, 2))
    ideal_of_two = 1 + 1 / math.log2(3)
    expected_ndcg = (1 / math.log2(3) + (1 + 1 / math.log2(5)) / ideal_of_two + 1 / math.log2(5)) / 3
    assert found.ndcg == pytest.approx(expected_ndcg)
    for pooling in POOLINGS:
        assert document_retrieval(queries, corpus, np.arange(4), 4, relevant, pooling, (1, 2)) == found


@pytest.mark.parametrize("pooling", POOLINGS)
def test_ties_go_to_the_relevant_documents(pooling):
    # documents 0, 1 and 2 are the same two chunks, so every query scores them alike
    chunks = np.array([[1.0, 0.0], [0.0, 1.0]] * 3 + [[-1.0, 0.0]])
    chunk_document = np.array([0, 0, 1, 1, 2, 2, 3])
    queries = np.array([[1.0, 0.0], [1.0, 0.0]])
    found = document_retrieval(queries, chunks, chunk_document, 4, [[1], [2, 0]], pooling, ks=(1, 2))
    assert found.mrr == 1.0 and found.ndcg == pytest.approx(1.0)
    assert found.recall == {1: (1 + 1 / 2) / 2, 2: 1.0}


@pytest.mark.parametrize("pooling", ["first", "max_sim"])
def test_a_relevant_document_compares_equal_to_itself_across_blocks(monkeypatch, pooling):
    """Each query is the chunk 0 of its relevant document, scored in blocks that cut documents apart: its score
    is computed twice (the pair's and the block's), and counts once."""
    monkeypatch.setattr(module, "CORPUS_BLOCK", 3)
    rng = np.random.default_rng(2)
    chunks, chunk_document = random_documents(rng, 60)
    first_rows = np.flatnonzero(np.diff(chunk_document, prepend=-1))
    found = document_retrieval(
        chunks[first_rows], chunks, chunk_document, 60, [[document] for document in range(60)], pooling
    )
    assert found.mrr == 1.0 and found.recall[1] == 1.0


@pytest.mark.parametrize(
    ("queries", "chunk_document", "documents", "relevant", "message"),
    [
        (np.zeros((0, 2)), [0, 1, 2], 3, [], "nothing to search"),
        (np.ones((1, 2)), [], 0, [[0]], "nothing to search"),
        (np.ones((1, 2)), [0, 1, 2], 3, [[]], "at least one relevant"),
        (np.ones((2, 2)), [0, 1, 2], 3, [[0]], "1 lists of relevant documents for 2 queries"),
        (np.ones((1, 2)), [0, 1, 2], 3, [[3]], "outside the 3 documents"),
        (np.ones((1, 2)), [0, 1, 0], 2, [[0]], "grouped by document"),
        (np.ones((1, 2)), [0, 2, 2], 3, [[0]], "grouped by document"),
        (np.ones((1, 2)), [0, 0, 1], 3, [[0]], "grouped by document"),
        (np.ones((1, 2)), [0, 1], 2, [[0]], "2 chunk documents for 3 chunk vectors"),
    ],
)
def test_refuses_what_cannot_be_scored(queries, chunk_document, documents, relevant, message):
    chunks = np.ones((3, 2)) if documents else np.zeros((0, 2))
    with pytest.raises(DataError, match=message):
        document_retrieval(queries, chunks, np.array(chunk_document), documents, relevant)


def test_an_unknown_pooling_is_refused():
    with pytest.raises(ValueError, match="one of mean, max_sim, first"):
        document_retrieval(np.ones((1, 2)), np.ones((1, 2)), np.array([0]), 1, [[0]], "sum")
