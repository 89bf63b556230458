import numpy as np
import pandas as pd
import pytest

from embedforge.errors import DataError
from embedforge.evaluation.retrieval import retrieval
from embedforge.evaluation.separation import pair_kinds, separation


def test_pair_kinds_use_the_score_where_there_is_one_and_the_label_otherwise():
    frame = pd.DataFrame(
        {
            "score": [4.5, 4.0, 2.5, 1.0, 0.2, None, None, None, 1.0],
            "label": [None, None, None, None, None, "entailment", "neutral", "contradiction", "entailment"],
        }
    )
    kinds = pair_kinds(frame, similar_min_score=4.0, dissimilar_max_score=1.0).tolist()
    assert kinds == [
        "similar",
        "similar",
        None,
        "dissimilar",
        "dissimilar",
        "similar",
        None,
        "dissimilar",
        "dissimilar",
    ]  # the last is SICK-like: a score of 1 outranks its entailment label


def test_separation_by_hand_and_its_verdict():
    result = separation(np.array([0.9, 0.7]), np.array([0.1, 0.3]), similar_min=0.7, dissimilar_max=0.5, min_gap=0.2)
    assert result.similar_mean == pytest.approx(0.8) and result.dissimilar_mean == pytest.approx(0.2)
    assert result.gap == pytest.approx(0.6) and result.passed
    assert (result.similar_pairs, result.dissimilar_pairs) == (2, 2)
    close = separation(np.array([0.75]), np.array([0.6]), similar_min=0.7, dissimilar_max=0.5, min_gap=0.2)
    assert not close.passed


def test_separation_without_dissimilar_pairs_is_a_data_error():
    with pytest.raises(DataError, match="no dissimilar pairs"):
        separation(np.array([0.9]), np.array([]), 0.7, 0.5, 0.2)


def test_retrieval_recall_and_mrr_by_hand():
    queries = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    corpus = np.array([[1.0, 0.1], [0.1, 1.0], [1.0, 0.9], [-1.0, 0.0]])
    # cosine order -- query 0: 0, 2, 1, 3; query 1: 1, 2, 0, 3; query 2: 2, 0 / 1 (tie), 3
    relevant = [[2], [1, 3], [3]]
    result = retrieval(queries, corpus, relevant, ks=(1, 2))
    assert result.recall[1] == pytest.approx((0 + 0.5 + 0) / 3)
    assert result.recall[2] == pytest.approx((1 + 0.5 + 0) / 3)
    assert result.mrr == pytest.approx((1 / 2 + 1 / 1 + 1 / 4) / 3)
    assert (result.queries, result.corpus) == (3, 4)


def test_retrieval_blocks_agree_with_one_pass(monkeypatch):
    from embedforge.evaluation import retrieval as module

    rng = np.random.default_rng(0)
    queries, corpus = rng.normal(size=(50, 8)), rng.normal(size=(80, 8))
    relevant = [sorted(rng.choice(80, size=2, replace=False).tolist()) for _ in range(50)]
    whole = retrieval(queries, corpus, relevant)
    monkeypatch.setattr(module, "QUERY_BLOCK", 7)
    blocked = retrieval(queries, corpus, relevant)
    assert blocked.recall == pytest.approx(whole.recall) and blocked.mrr == pytest.approx(whole.mrr)


@pytest.mark.parametrize(
    ("queries", "corpus", "relevant", "message"),
    [
        (np.zeros((0, 2)), np.ones((3, 2)), [], "nothing to search"),
        (np.ones((1, 2)), np.ones((3, 2)), [[]], "at least one relevant"),
    ],
)
def test_retrieval_refuses_what_cannot_be_scored(queries, corpus, relevant, message):
    with pytest.raises(DataError, match=message):
        retrieval(queries, corpus, relevant)


def test_retrieval_over_corpus_blocks_agrees_with_one_block(monkeypatch):
    """A corpus of any size is searched a block of rows at a time, with the same ranks as one product."""
    from embedforge.evaluation import retrieval as module

    rng = np.random.default_rng(1)
    queries, corpus = rng.normal(size=(30, 8)), rng.normal(size=(500, 8)).astype(np.float16)
    relevant = [sorted(rng.choice(500, size=3, replace=False).tolist()) for _ in range(30)]
    whole = retrieval(queries, corpus, relevant, (1, 5, 10))
    monkeypatch.setattr(module, "CORPUS_BLOCK", 64)
    blocked = retrieval(queries, corpus, relevant, (1, 5, 10))
    assert blocked.recall == pytest.approx(whole.recall) and blocked.mrr == pytest.approx(whole.mrr)
    assert 0 < whole.mrr < 1
