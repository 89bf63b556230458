"""The verdict: goals relative to the teacher, every check named, each split called what it was to the run."""

import pytest

from embedforge.config import Params
from embedforge.evaluation.verdict import split_role, verdict


def scored(spearmans: dict[str, float | None]) -> dict:
    return {"sts": {split: {"spearman": value} for split, value in spearmans.items()}}


def evaluation(student: dict[str, float | None], teacher: dict[str, float | None], **extra) -> dict:
    return {"student": scored(student), "teacher": scored(teacher), "speed_ratio": 3.0, "size_ratio": 0.7, **extra}


def test_each_split_is_named_for_what_it_was_to_the_run():
    cfg = Params()
    assert split_role("stsb/validation", cfg) == "validation split (used for early stopping)"
    assert split_role("sick/test", cfg) == "test split"
    assert split_role("snli/train", cfg) == "training split (seen in training)"
    assert split_role("sick/validation", cfg) == "validation split (not used in training)"


def test_the_headline_prefers_a_test_split_and_every_split_must_keep_the_share():
    found = verdict(
        evaluation({"stsb/validation": 0.86, "stsb/test": 0.80}, {"stsb/validation": 0.87, "stsb/test": 0.87}), Params()
    )
    assert found["split"] == "stsb/test"
    assert [check["goal"] for check in found["checks"]] == [
        "share of the teacher's STS Spearman kept, stsb/test",
        "share of the teacher's STS Spearman kept, stsb/validation",
        "speed, student ÷ teacher",
    ]
    assert [check["met"] for check in found["checks"]] == [False, True, True]
    assert found["passed"] is False
    assert found["headline"] == (
        "The student keeps 92.0% of the teacher's STS Spearman on stsb/test and 98.9% on stsb/validation, at 3.00× "
        "the teacher's speed and 0.70× its parameters: it misses the run's goals: share of the teacher's STS Spearman "
        "kept, stsb/test, 0.920 (target ≥ 0.95)."
    )
    assert found["split_roles"] == {
        "stsb/test": "test split",
        "stsb/validation": "validation split (used for early stopping)",
    }


@pytest.mark.parametrize("agreement, met", [(0.95, True), (0.85, False), (None, False)])
def test_without_an_sts_split_the_agreement_with_the_teacher_decides(agreement, met):
    found = verdict(evaluation({}, {}, agreement={"pairwise_spearman": agreement}), Params())
    assert found["split"] is None and found["split_roles"] == {}
    assert found["checks"][0] == {
        "goal": "Spearman of pairwise cosines, student vs teacher, held-out training text",
        "value": agreement,
        "target": "≥ 0.9",
        "met": met,
    }
    assert found["passed"] is met
    assert "reproduces the teacher's pairwise cosines on held-out training text" in found["headline"]


def test_a_size_goal_is_checked_only_when_set():
    numbers = evaluation({"stsb/validation": 0.86}, {"stsb/validation": 0.87})
    assert len(verdict(numbers, Params())["checks"]) == 2
    bounded = verdict(numbers, Params.model_validate({"evaluate": {"goals": {"max_size_ratio": 0.5}}}))
    assert bounded["checks"][-1] == {
        "goal": "parameters, student ÷ teacher",
        "value": 0.7,
        "target": "≤ 0.5",
        "met": False,
    }
    assert bounded["passed"] is False


def test_an_undefined_or_non_positive_teacher_spearman_keeps_no_share():
    found = verdict(evaluation({"stsb/validation": 0.5}, {"stsb/validation": -0.1}), Params())
    assert found["checks"][0]["value"] is None and found["checks"][0]["met"] is False
