"""The report page: one self-contained HTML file from the numbers, the figures and the run's lineage.

Every figure is embedded as a data URI and the CSS is inline, so the file can be
mailed or opened from an artifact store without anything beside it. Every
value goes through jinja2's autoescape: sentences, split names and params are
data, and a ``<script>`` in them must show as text. The markup and CSS live in
``page.html.j2`` beside this module, shipped as package data.
"""

from __future__ import annotations

import base64
import json
import math
import operator
from dataclasses import dataclass, field
from typing import Any

import jinja2

from embedforge.config import flatten

MODELS = ("student", "teacher")
SHA_SHOWN = 12
COMPARISONS = {"≥": operator.ge, "≤": operator.le}
SEPARATION_CHECKS = (  # label, key in eval.json, its target in eval.json's targets, how it must compare
    ("Similar pairs, mean cosine", "similar_mean", "similar_min", "≥"),
    ("Dissimilar pairs, mean cosine", "dissimilar_mean", "dissimilar_max", "≤"),
    ("Gap (similar − dissimilar)", "gap", "min_gap", "≥"),
)
TEMPLATE_NAME = "page.html.j2"
# autoescape=True, not select_autoescape: that goes by file extension and would leave a .j2 file unescaped
ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("embedforge.report", "."), autoescape=True, undefined=jinja2.StrictUndefined
)


@dataclass(frozen=True)
class Cell:
    """One model's value of a metric; ``passed`` adds a PASS/FAIL badge where the value has a target."""

    text: str
    passed: bool | None = None


@dataclass(frozen=True)
class Row:
    metric: str
    student: Cell
    teacher: Cell
    target: str = ""


@dataclass(frozen=True)
class Group:
    name: str
    rows: list[Row]


@dataclass(frozen=True)
class Verdict:
    """The run's goals met or missed: the headline, each goal's check, and what each STS split was to the run."""

    passed: bool
    headline: str
    checks: list[Row]
    scored_on: str


@dataclass(frozen=True)
class DvcOut:
    stage: str
    path: str
    md5: str


@dataclass(frozen=True)
class Lineage:
    """Where this report's numbers come from: its MLflow runs, the code's commit and the data's DVC hashes."""

    report_run_id: str | None
    parent_run_id: str | None
    git_commit: str
    git_dirty: str
    dvc_outs: list[DvcOut] | None


@dataclass(frozen=True)
class Page:
    """Everything the page shows; ``figures`` maps a figure's name to its PNG bytes (absent: not drawn).

    ``notes`` holds, by figure name (or "generations"), the sentences that stand for what the data was too
    thin to show; a figure without PNG or notes is "not available" for the reason in ``missing_figures``.
    ``frontier`` holds the sentences under the quality/speed figure: where this run sits among the others.
    """

    title: str
    teacher: str
    evaluation: dict[str, Any]
    training: dict[str, Any]
    figures: dict[str, bytes]
    missing_figures: dict[str, str]
    params: dict[str, Any]
    lineage: Lineage
    map_examples: list[tuple[str, str]]
    manifest: dict[str, Any] | None
    validation: dict[str, Any] | None
    tokens: dict[str, Any] | None = None
    generations: list[tuple[int, str, str]] = ()
    notes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    frontier: tuple[str, ...] = ()


def number(value: Any, digits: int = 3) -> str:
    """A value as the page shows it: None and NaN are "undefined", never "None" or "nan"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "undefined"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value and abs(value) < 10**-digits:
            return f"{value:.2e}"
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.{digits}f}"
    return str(value)


def checked(value: float | None, sign: str, target: float) -> Cell:
    """A value with its PASS/FAIL badge against ``sign target``; an undefined value gets no badge."""
    if value is None or math.isnan(value):
        return Cell(number(value))
    return Cell(number(value), COMPARISONS[sign](value, target))


def sts_rows(evaluation: dict[str, Any]) -> list[Row]:
    student, teacher = (evaluation[model]["sts"] for model in MODELS)
    return [
        Row(
            f"{measure.capitalize()}, {split} ({number(scores.get('pairs'))} pairs)",
            Cell(number(scores.get(measure))),
            Cell(number(teacher.get(split, {}).get(measure))),
        )
        for split, scores in student.items()
        for measure in ("spearman", "pearson")
    ]


def separation_rows(evaluation: dict[str, Any]) -> list[Row]:
    targets = evaluation["targets"]
    sides = [evaluation[model]["separation"] for model in MODELS]
    rows = []
    for label, key, target, sign in SEPARATION_CHECKS:
        cells = [checked(side[key], sign, targets[target]) for side in sides]
        shared = " (the teacher misses it too)" if all(cell.passed is False for cell in cells) else ""
        rows.append(Row(label, *cells, f"{sign} {targets[target]:g}{shared}"))
    both_missed = not any(side["passed"] for side in sides)
    rows.append(
        Row(
            "Separation targets",
            *(Cell("all met" if side["passed"] else "missed", bool(side["passed"])) for side in sides),
            "all three" + (" (the teacher misses them too)" if both_missed else ""),
        )
    )
    rows.append(
        Row(
            "Pairs (similar / dissimilar)",
            *(Cell(f"{number(side.get('similar_pairs'))} / {number(side.get('dissimilar_pairs'))}") for side in sides),
        )
    )
    return rows


def agreement_rows(evaluation: dict[str, Any]) -> list[Row]:
    """How closely the student reproduces the teacher on text training never saw (the teacher agrees with itself)."""
    agreement = evaluation.get("agreement") or {}
    if agreement.get("reason"):
        return [Row("Not measured", Cell(agreement["reason"]), Cell(""))]
    return [
        Row("10 nearest neighbours shared with the teacher", Cell(number(agreement.get("knn@10_overlap"))), Cell("1")),
        Row(
            "Spearman of pairwise cosines, student vs teacher",
            Cell(number(agreement.get("pairwise_spearman"))),
            Cell("1"),
        ),
        Row("Held-out texts", Cell(number(agreement.get("units"))), Cell(number(agreement.get("units")))),
    ]


def measure_name(key: str) -> str:
    return key.replace("mrr", "MRR").replace("ndcg", "nDCG")


def retrieval_rows(evaluation: dict[str, Any]) -> list[Row]:
    student, teacher = (evaluation[model]["retrieval"] for model in MODELS)
    measures = [key for key in student if key.startswith(("recall@", "ndcg@"))] + ["mrr"]
    rows = [Row(measure_name(key), Cell(number(student.get(key))), Cell(number(teacher.get(key)))) for key in measures]
    rows.append(
        Row(
            "Queries / corpus",
            *(Cell(f"{number(side.get('queries'))} / {number(side.get('corpus'))}") for side in (student, teacher)),
        )
    )
    return rows


DOCUMENT_WAYS = {"chunked": "from its chunks", "first_chunk": "first chunk only (truncated)"}
DOCUMENT_SUBSETS = {"all": "all queries", "long": "queries for documents of several chunks"}


def document_rows(evaluation: dict[str, Any], spec: str) -> list[Row]:
    """Each measure of one document set, a document scored from its chunks beside its first chunk alone."""
    student, teacher = (evaluation[model]["documents"][spec] for model in MODELS)
    rows = []
    for subset, subset_name in DOCUMENT_SUBSETS.items():
        if subset not in student:
            continue
        for measure in student[subset]["chunked"]:
            rows += [
                Row(
                    f"{measure_name(measure)}, {subset_name}, {way_name}",
                    *(Cell(number(side[subset][way].get(measure))) for side in (student, teacher)),
                )
                for way, way_name in DOCUMENT_WAYS.items()
            ]
    counts = f"{number(student['queries'])} / {number(student['documents'])} / {number(student['units'])}"
    return [*rows, Row("Queries / documents / chunks", Cell(counts), Cell(counts))]


def megabytes(size: Any) -> str:
    return "undefined" if size is None else f"{size / 1e6:,.1f} MB"


def cost_rows(evaluation: dict[str, Any]) -> list[Row]:
    student, teacher = (evaluation[model] for model in MODELS)
    return [
        Row(
            "Sentences encoded per second",
            *(Cell(number(side["speed"].get("sentences_per_s"))) for side in (student, teacher)),
        ),
        Row("Speed, student ÷ teacher", Cell(f"{number(evaluation['speed_ratio'], 2)}×"), Cell("1×")),
        Row("Parameters", *(Cell(number(side["size"].get("parameters"))) for side in (student, teacher))),
        Row("Parameters, student ÷ teacher", Cell(f"{number(evaluation['size_ratio'], 2)}×"), Cell("1×")),
        Row("Size on disk", *(Cell(megabytes(side["size"].get("disk_bytes"))) for side in (student, teacher))),
    ]


def summary(evaluation: dict[str, Any]) -> list[Group]:
    return [
        Group("STS: agreement with human similarity scores", sts_rows(evaluation)),
        Group("Separation of similar from dissimilar pairs", separation_rows(evaluation)),
        Group("Retrieval: premise to entailed hypothesis", retrieval_rows(evaluation)),
        *(
            [Group("Agreement with the teacher on held-out training text", agreement_rows(evaluation))]
            if "agreement" in evaluation
            else []
        ),
        *(
            Group(
                f"Document retrieval: {spec} ({sets['pooling']} pooling of chunks)",
                document_rows(evaluation, spec),
            )
            for spec, sets in evaluation["student"].get("documents", {}).items()
        ),
        Group("Speed and size", cost_rows(evaluation)),
    ]


def verdict(evaluation: dict[str, Any]) -> Verdict:
    """evaluate's verdict (eval.json): the goals relative to the teacher, each check and what each split was."""
    found = evaluation["verdict"]
    checks = [
        Row(item["goal"], Cell(number(item["value"]), bool(item["met"])), Cell(""), item["target"])
        for item in found["checks"]
    ]
    return Verdict(bool(found["passed"]), found["headline"], checks, scored_on(found["split_roles"]))


def scored_on(roles: dict[str, str]) -> str:
    """Which splits the verdict stands on, and what each was to the run: a validation split that early stopping
    read chose the student, so it is not held-out data."""
    if not roles:
        return ""
    sentence = "Scored on " + "; ".join(f"{spec}, {role}" for spec, role in roles.items()) + "."
    if any("early stopping" in role for role in roles.values()):
        sentence += " The student was chosen by the split early stopping read: it is not held-out data."
    return sentence


def manifest_view(manifest: dict[str, Any]) -> dict[str, Any]:
    """The download manifest as its settings and one row per split (file hashes shortened, full on hover)."""
    about = [
        (key, "null" if value is None else str(value)) for key, value in manifest.items() if not isinstance(value, dict)
    ]
    splits = [
        {
            "name": f"{dataset}/{split}",
            "rows": number(record.get("rows")),
            "source_rows": number(record.get("source_rows")),
            "sha256": str(record.get("output_sha256", "")),
        }
        for dataset, records in manifest.get("datasets", {}).items()
        for split, record in records.items()
    ]
    skipped = [f"{dataset}: {json.dumps(what)}" for dataset, what in manifest.get("skipped", {}).items()]
    return {"about": about, "splits": splits, "skipped": skipped}


def validation_view(results: dict[str, Any]) -> dict[str, Any]:
    """Whether validation passed, its summary sentence and, per split, how many expectations held."""
    splits = [
        {
            "name": f"{split.get('dataset')}/{split.get('split')}",
            "rows": number(split.get("rows")),
            "met": f"{sum(bool(e.get('success')) for e in split.get('expectations', []))} / "
            f"{len(split.get('expectations', []))}",
            "passed": bool(split.get("success")),
        }
        for split in results.get("splits", [])
    ]
    return {"passed": results.get("success") is True, "summary": results.get("summary", ""), "splits": splits}


def texts_view(stats: dict[str, Any]) -> list[dict[str, str]]:
    """Per split (data/tokens/stats.json): its texts, how many were cut into chunks, and what cutting them to the
    first chunk would have dropped."""
    return [
        {
            "name": name,
            "texts": number(split.get("sentences")),
            "chunked": number(split.get("chunked_sentences")),
            "chunks": number(split.get("chunks")),
            "dropped": f"{split.get('truncation_dropped_share', 0.0):.1%}",
            "truncated": number(split.get("truncated_chunks")),
        }
        for name, split in stats.get("splits", {}).items()
    ]


def param_text(value: Any) -> str:
    """A param as params.yaml-like text: lists and nulls in JSON, strings as they are."""
    return value if isinstance(value, str) else json.dumps(value)


def param_groups(params: dict[str, Any]) -> list[tuple[str, list[tuple[str, str]]]]:
    """Dotted params grouped by their section (``train.lr`` under train); top-level keys under "run"."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for name, value in params.items():
        section = name.split(".")[0] if "." in name else "run"
        groups.setdefault(section, []).append((name, param_text(value)))
    return list(groups.items())


def render(page: Page) -> str:
    """The whole page as one HTML string."""
    return ENVIRONMENT.get_template(TEMPLATE_NAME).render(
        title=page.title,
        teacher=page.teacher,
        verdict=verdict(page.evaluation),
        summary=summary(page.evaluation),
        figures={name: base64.b64encode(png).decode("ascii") for name, png in page.figures.items()},
        missing_figures=page.missing_figures,
        notes=page.notes,
        frontier=page.frontier,
        training=[(name, number(value)) for name, value in flatten(page.training).items()],
        generations=page.generations,
        map_examples=page.map_examples,
        manifest=manifest_view(page.manifest) if page.manifest is not None else None,
        validation=validation_view(page.validation) if page.validation is not None else None,
        texts=texts_view(page.tokens) if page.tokens is not None else None,
        max_length=page.tokens.get("max_length") if page.tokens is not None else None,
        params=param_groups(page.params),
        lineage=page.lineage,
        sha_shown=SHA_SHOWN,
    )
