"""The model card's tables: the evaluation, student against teacher, speed and size, and the ONNX exports; and how
their numbers read. Each reads only what eval.json and export.json hold, and a table with nothing to show is left
out.
"""

from __future__ import annotations

from typing import Any

from embedforge.report.markdown import MODELS, number

STS_METRICS = (("pearson", "pearson_cosine", "Pearson Cosine"), ("spearman", "spearman_cosine", "Spearman Cosine"))
RETRIEVAL_COUNTS = ("queries", "corpus")  # the task's size, beside its measures in eval.json


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}"]
    return "\n".join([*lines, *(f"| {' | '.join(row)} |" for row in rows)])


def versus(rows: list[tuple[str, list[Any]]]) -> str:
    """A student-against-teacher table of ``(metric, [student's, teacher's])``."""
    return table(["metric", *MODELS], [[name, *(number(value) for value in values)] for name, values in rows])


def sts_table(evaluation: dict[str, Any]) -> str:
    """Each STS split with what it was to the run where the verdict says, student against teacher."""
    roles = (evaluation.get("verdict") or {}).get("split_roles") or {}
    rows = []
    for spec, student in evaluation["student"]["sts"].items():
        teacher = evaluation.get("teacher", {}).get("sts", {}).get(spec, {})
        scores = [number(side.get(key)) for key, _, _ in reversed(STS_METRICS) for side in (student, teacher)]
        rows.append([f"{spec}, {roles[spec]}" if spec in roles else spec, number(student.get("pairs")), *scores])
    header = ["split", "pairs", "Spearman, student", "Spearman, teacher", "Pearson, student", "Pearson, teacher"]
    return "### Semantic Similarity (cosine)\n\n" + table(header, rows)


def goals_table(verdict: dict[str, Any]) -> str:
    rows = [
        [item["goal"], number(item.get("value")), item["target"], "met" if item["met"] else "missed"]
        for item in verdict.get("checks", [])
    ]
    return "### Goals\n\n" + table(["goal", "value", "target", "outcome"], rows) if rows else ""


def evaluation_section(evaluation: dict[str, Any]) -> str:
    student, teacher = (evaluation.get(model, {}) for model in MODELS)
    parts = ["## Evaluation"]
    if evaluation.get("verdict"):
        parts.append(goals_table(evaluation["verdict"]))
    if student.get("sts"):
        parts.append(sts_table(evaluation))
    if agreement := {key: value for key, value in (evaluation.get("agreement") or {}).items() if is_number(value)}:
        rows = [[key, number(value)] for key, value in agreement.items()]
        parts.append("### Agreement with the teacher\n\n" + table(["measure", "value"], rows))
    if student.get("separation"):
        sides = [side.get("separation", {}) for side in (student, teacher)]
        rows = [(key, [side.get(key) for side in sides]) for key in ("similar_mean", "dissimilar_mean", "gap")]
        rows.append(("targets met", ["yes" if side.get("passed") else "no" for side in sides]))
        parts.append("### Separation of similar from dissimilar pairs (mean cosine)\n\n" + versus(rows))
    if retrieval := {key: value for key, value in student.get("retrieval", {}).items() if key not in RETRIEVAL_COUNTS}:
        rows = [(key, [value, teacher.get("retrieval", {}).get(key)]) for key, value in retrieval.items()]
        parts.append("### Retrieval\n\n" + versus(rows))
    for spec, scored in student.get("documents", {}).items():
        theirs = teacher.get("documents", {}).get(spec, {}).get("all", {}).get("chunked", {})
        rows = [(key, [value, theirs.get(key)]) for key, value in scored.get("all", {}).get("chunked", {}).items()]
        pooling = f", {scored['pooling']} pooling of chunks" if scored.get("pooling") else ""
        parts.append(f"### Document retrieval: {spec}{pooling}\n\n" + versus(rows) if rows else "")
    return "\n\n".join(part for part in parts if part) if len(parts) > 1 else ""


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def speed_and_size(evaluation: dict[str, Any], exports: dict[str, Any]) -> str:
    student, teacher = (evaluation.get(model, {}) for model in MODELS)
    if not (student.get("speed") or student.get("size")):
        return ""
    rows = [
        [
            "Sentences encoded per second",
            *(rate(side.get("speed", {}).get("sentences_per_s")) for side in (student, teacher)),
        ],
        ["Parameters", *(count(side.get("size", {}).get("parameters")) for side in (student, teacher))],
        ["Size on disk", *(megabytes(side.get("size", {}).get("disk_bytes")) for side in (student, teacher))],
    ]
    parts = ["## Speed and Size", table(["", *MODELS], rows)]
    if is_number(evaluation.get("speed_ratio")) and is_number(evaluation.get("size_ratio")):
        parts.append(
            f"The student encodes {evaluation['speed_ratio']:.2f}× the teacher's sentences per second with "
            f"{evaluation['size_ratio']:.2f}× its parameters."
        )
    if exports.get("variants"):
        parts.append(exports_table(exports["variants"]))
    if exports.get("not_exported"):
        parts.append(f"Not exported to ONNX: {exports['not_exported']}")
    return "\n\n".join(parts)


def exports_table(variants: dict[str, dict[str, Any]]) -> str:
    """Each ONNX variant in models/export: how closely it reproduces the student, its STS, speed and size."""
    splits = list(dict.fromkeys(split for variant in variants.values() for split in variant.get("sts", {})))
    header = ["variant", "file", "min cosine to the student", *(f"Spearman, {s}" for s in splits)]
    header += ["sentences / s", "× teacher's speed", "size"]
    rows = [
        [
            name,
            f"`{variant['file']}`" if variant.get("file") else "",
            f"{variant['cosine_min']:.6f}" if is_number(variant.get("cosine_min")) else "",
            *(number(variant.get("sts", {}).get(split, {}).get("spearman")) for split in splits),
            rate(variant.get("sentences_per_s")),
            f"{variant['speed_ratio']:.2f}×" if is_number(variant.get("speed_ratio")) else "",
            megabytes(variant.get("disk_bytes")),
        ]
        for name, variant in variants.items()
    ]
    return "### ONNX exports (models/export)\n\n" + table(header, rows)


def rate(value: Any) -> str:
    return f"{value:,.1f}" if is_number(value) else ""


def count(value: Any) -> str:
    return f"{value:,}" if is_number(value) else ""


def megabytes(value: Any) -> str:
    return f"{value / 1e6:,.1f} MB" if is_number(value) else ""


def duration(seconds: Any) -> str:
    if not is_number(seconds):
        return ""
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {rest:02d} s" if minutes else f"{seconds:.1f} s"
