"""The evaluation as a short markdown table: what a Prefect flow run shows as its artifact."""

from __future__ import annotations

from typing import Any

MODELS = ("student", "teacher")


def number(value: Any) -> str:
    return "undefined" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def evaluation_summary(evaluation: dict[str, Any], run_link: str | None) -> str:
    """The verdict and its goals, then student vs teacher: STS Spearman per split, separation, retrieval, speed
    ratio; then the MLflow run."""
    found = evaluation["verdict"]
    lines = [f"**{'Goals met' if found['passed'] else 'Goals missed'}:** {found['headline']}", ""]
    lines += ["| goal | student | target | met |", "|---|---|---|---|"]
    lines += [
        f"| {item['goal']} | {number(item['value'])} | {item['target']} | {'yes' if item['met'] else 'no'} |"
        for item in found["checks"]
    ]
    lines += ["", *(f"- {spec}: {role}" for spec, role in found["split_roles"].items()), ""]
    rows = [
        (f"STS Spearman, {split}", [evaluation[m]["sts"][split]["spearman"] for m in MODELS])
        for split in evaluation["student"]["sts"]
    ]
    rows.append(("Separation gap", [evaluation[m]["separation"]["gap"] for m in MODELS]))
    rows.append(
        (
            "Separation targets (absolute)",
            ["met" if evaluation[m]["separation"]["passed"] else "missed" for m in MODELS],
        )
    )
    rows += [
        (key.replace("@", " @ "), [evaluation[m]["retrieval"][key] for m in MODELS])
        for key in evaluation["student"]["retrieval"]
        if key.startswith("recall@") or key == "mrr"
    ]
    rows.append(("Sentences / s", [evaluation[m]["speed"]["sentences_per_s"] for m in MODELS]))
    lines += ["| metric | student | teacher |", "|---|---|---|"]
    lines += [f"| {name} | {' | '.join(number(value) for value in values)} |" for name, values in rows]
    lines.append("")
    lines.append(f"The student encodes **{evaluation['speed_ratio']:.2f}x** the teacher's sentences per second.")
    if run_link:
        lines.append(f"MLflow run: {run_link}")
    return "\n".join(lines)
