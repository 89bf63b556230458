"""The run's verdict: what the student keeps of its teacher, at what speed and size, against ``evaluate.goals``.

Relative to the teacher, because that is what distilling buys: the absolute separation targets are a property
of the data as much as of the model (the teacher misses them too on STS-B), so they stay a table beside the
teacher's figures and never make the headline. Each split is named for what it was to the run: a validation
split that early stopping read is not held-out data, and the headline prefers a test split when one was scored.
"""

from __future__ import annotations

from typing import Any

from embedforge.config import Params

TEST_SPLIT = "test"


def split_role(spec: str, cfg: Params) -> str:
    """What ``<dataset>/<split>`` was to this run, in words the report and the card print after its name."""
    dataset, split = spec.split("/", 1)
    if split == "train" and dataset in cfg.train.datasets:
        return "training split (seen in training)"
    if spec == cfg.train.sts_validation:
        return "validation split (used for early stopping)"
    if split == TEST_SPLIT:
        return "test split"
    return f"{split} split (not used in training)"


def headline_order(specs: list[str]) -> list[str]:
    """The STS splits, test splits first: the headline speaks of data the run never chose by."""
    return sorted(specs, key=lambda spec: spec.split("/", 1)[1] != TEST_SPLIT)


def kept_share(student: float | None, teacher: float | None) -> float | None:
    """The student's Spearman as a share of the teacher's; undefined when either is, or the teacher's is not
    positive (a share of nothing says nothing)."""
    if student is None or teacher is None or teacher <= 0:
        return None
    return student / teacher


def check(goal: str, value: float | None, sign: str, target: float) -> dict[str, Any]:
    met = value is not None and (value >= target if sign == "≥" else value <= target)
    return {"goal": goal, "value": value, "target": f"{sign} {target:g}", "met": met}


def quality_checks(evaluation: dict[str, Any], cfg: Params, order: list[str]) -> list[dict[str, Any]]:
    """The share kept on each STS split or, with none, the agreement with the teacher on held-out text."""
    goals = cfg.evaluate.goals
    if order:
        return [
            check(
                f"share of the teacher's STS Spearman kept, {spec}",
                kept_share(
                    evaluation["student"]["sts"][spec]["spearman"], evaluation["teacher"]["sts"][spec]["spearman"]
                ),
                "≥",
                goals.min_sts_kept,
            )
            for spec in order
        ]
    agreement = evaluation.get("agreement") or {}
    return [
        check(
            "Spearman of pairwise cosines, student vs teacher, held-out training text",
            agreement.get("pairwise_spearman"),
            "≥",
            goals.min_agreement_spearman,
        )
    ]


def verdict(evaluation: dict[str, Any], cfg: Params) -> dict[str, Any]:
    """eval.json's ``verdict``: every goal checked, whether all were met, the splits' roles and the sentence the
    report, the flow's summary and the card lead with."""
    goals = cfg.evaluate.goals
    order = headline_order(list(evaluation["student"]["sts"]))
    checks = quality_checks(evaluation, cfg, order)
    checks.append(check("speed, student ÷ teacher", evaluation["speed_ratio"], "≥", goals.min_speed_ratio))
    if goals.max_size_ratio is not None:
        checks.append(check("parameters, student ÷ teacher", evaluation["size_ratio"], "≤", goals.max_size_ratio))
    passed = all(item["met"] for item in checks)
    return {
        "passed": passed,
        "split": order[0] if order else None,
        "split_roles": {spec: split_role(spec, cfg) for spec in order},
        "checks": checks,
        "headline": headline(evaluation, checks, order, passed),
    }


def percent(value: float | None) -> str:
    return "an undefined share" if value is None else f"{value:.1%}"


def figure(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def headline(evaluation: dict[str, Any], checks: list[dict[str, Any]], order: list[str], passed: bool) -> str:
    """One sentence: the quality kept on each STS split (the headline split first), speed and size, and whether the
    goals hold, naming each goal missed."""
    if order:
        kept = f"keeps {percent(checks[0]['value'])} of the teacher's STS Spearman on {order[0]}" + "".join(
            f" and {percent(check['value'])} on {spec}" for spec, check in zip(order[1:], checks[1:], strict=False)
        )
    else:
        agreement = figure(checks[0]["value"])
        kept = f"reproduces the teacher's pairwise cosines on held-out training text with Spearman {agreement}"
    missed = [
        f"{check['goal']}, {figure(check['value'])} (target {check['target']})" for check in checks if not check["met"]
    ]
    outcome = "it meets the run's goals" if passed else "it misses the run's goals: " + "; ".join(missed)
    return (
        f"The student {kept}, at {evaluation['speed_ratio']:.2f}× the teacher's speed and "
        f"{evaluation['size_ratio']:.2f}× its parameters: {outcome}."
    )
