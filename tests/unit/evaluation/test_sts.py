import logging

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from embedforge.errors import DataError
from embedforge.evaluation.sts import STSEvaluator, cosine_scores, sts_correlation


def test_cosine_scores_by_hand_and_zero_vectors():
    first = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    second = np.array([[0.0, 2.0], [2.0, 2.0], [1.0, 0.0]])
    np.testing.assert_allclose(cosine_scores(first, second), [0.0, 1.0, 0.0])


def test_correlations_match_scipy():
    rng = np.random.default_rng(0)
    predicted, gold = rng.normal(size=50), rng.uniform(0, 5, size=50)
    result = sts_correlation(predicted, gold)
    assert result.spearman == pytest.approx(stats.spearmanr(predicted, gold).statistic)
    assert result.pearson == pytest.approx(stats.pearsonr(predicted, gold).statistic)
    assert result.pairs == 50 and result.warning is None
    assert sts_correlation(np.array([0.1, 0.5, 0.9]), np.array([1.0, 2.0, 4.0])).spearman == pytest.approx(1.0)


def test_constant_predictions_are_undefined_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        result = sts_correlation(np.full(4, 0.3), np.array([1.0, 2.0, 3.0, 4.0]), "stsb/validation")
    assert result.spearman is None and result.pearson is None
    assert "all predictions are equal" in result.warning and "stsb/validation" in caplog.text


def test_empty_split_is_an_error(tmp_path):
    with pytest.raises(DataError, match="has no rows"):
        sts_correlation(np.array([]), np.array([]))
    path = tmp_path / "stsb" / "test.parquet"
    path.parent.mkdir()
    pd.DataFrame(
        {"sentence1": pd.Series([], dtype=str), "sentence2": pd.Series([], dtype=str), "score": []}
    ).to_parquet(path)
    with pytest.raises(DataError, match="stsb/test: the split has no rows"):
        STSEvaluator(path)(model=None)


def test_evaluator_scores_a_model_on_any_split_name(tmp_path, tiny_teacher):
    from sentence_transformers import SentenceTransformer

    path = tmp_path / "stsb" / "dev-2024.parquet"
    path.parent.mkdir()
    pd.DataFrame(
        {
            "sentence1": ["A man plays a guitar.", "A cat sleeps.", "Two kids run in a park."],
            "sentence2": ["A man plays a guitar.", "A dog barks loudly.", "Children are running outside."],
            "score": [5.0, 0.5, 3.8],
        }
    ).to_parquet(path)
    result = STSEvaluator(path)(SentenceTransformer(str(tiny_teacher), device="cpu"))
    assert result.pairs == 3 and -1.0 <= result.spearman <= 1.0
    with pytest.raises(DataError, match="STS split not found"):
        STSEvaluator(tmp_path / "stsb" / "missing.parquet")


def test_predictions_equal_up_to_float32_rounding_count_as_constant():
    result = sts_correlation(np.array([1.0, 0.99999994, 1.0000001, 1.0]), np.array([1.0, 2.0, 3.0, 4.0]), "sick")
    assert result.spearman is None and "all predictions are equal" in result.warning
