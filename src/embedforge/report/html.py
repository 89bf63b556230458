"""The report page: one self-contained HTML file from the numbers, the figures and the run's lineage.

Every figure is embedded as a data URI and the CSS is inline, so the file can be
mailed or opened from an artifact store without anything beside it. Every
value goes through jinja2's autoescape: sentences, split names and params are
data, and a ``<script>`` in them must show as text.
"""

from __future__ import annotations

import base64
import json
import math
import operator
from dataclasses import dataclass
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
TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2327; background: #f6f7f9;
         margin: 0; line-height: 1.5; }
  main { max-width: 1120px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
  h1 { margin: 0 0 4px; font-size: 1.9em; }
  h2 { margin-top: 40px; padding-bottom: 4px; border-bottom: 2px solid #e3e6ea; }
  h3 { margin: 24px 0 8px; }
  nav { font-size: 0.9em; margin: 12px 0 20px; }
  nav a { margin-right: 14px; color: #2a6f97; text-decoration: none; }
  .lead { color: #50575e; margin: 4px 0 16px; }
  .verdict { font-size: 1.15em; padding: 12px 16px; border-radius: 6px; border-left: 6px solid; }
  .verdict.pass { background: #e8f5ee; border-color: #2e8540; }
  .verdict.fail { background: #fdecea; border-color: #c62828; }
  table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.92em; }
  th, td { padding: 5px 12px; text-align: left; border-bottom: 1px solid #e3e6ea; vertical-align: top; }
  th { background: #f0f2f5; }
  th.num { text-align: right; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
  tr.group td { background: #f8f9fb; font-weight: 600; padding-top: 10px; }
  table.summary { width: 100%; }
  table.params td:first-child, code { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace;
                                      font-size: 0.95em; }
  table.params { width: 100%; }
  table.params td { overflow-wrap: anywhere; }
  table.params td:first-child { white-space: nowrap; }
  .param-groups { columns: 2 440px; column-gap: 32px; }
  .param-groups > div { break-inside: avoid; }
  .badge { display: inline-block; min-width: 3.2em; margin-left: 6px; padding: 0 6px; border-radius: 4px;
           font-size: 0.8em; font-weight: 700; text-align: center; color: #fff; }
  .badge.pass { background: #2e8540; }
  .badge.fail { background: #c62828; }
  .missing { color: #8a6d3b; background: #fcf8e3; padding: 8px 12px; border-radius: 4px; }
  figure { margin: 12px 0 24px; }
  figure img { max-width: 100%; height: auto; border: 1px solid #e3e6ea; }
  figcaption { color: #50575e; font-size: 0.92em; margin-top: 6px; }
  .columns { display: flex; flex-wrap: wrap; gap: 32px; }
  .columns > div { flex: 1 1 440px; min-width: 0; }
</style>
</head>
<body>
{% macro cell(value) -%}
<td class="num">{{ value.text }}{% if value.passed is not none %}<span class="badge {{ 'pass' if value.passed else 'fail' }}">
{{- 'PASS' if value.passed else 'FAIL' }}</span>{% endif %}</td>
{%- endmacro %}
{% macro image(name, caption) -%}
{% if name in figures %}<figure><img src="data:image/png;base64,{{ figures[name] }}" alt="{{ caption }}">
<figcaption>{{ caption }}</figcaption></figure>
{% else %}<p class="missing">Not available: {{ missing_figures[name] }}</p>{% endif %}
{%- endmacro %}
<main>
<h1>{{ title }}</h1>
<p class="lead">A small sentence encoder (the <b>student</b>) trained to embed sentences like a larger pretrained
one (the <b>teacher</b>, <code>{{ teacher }}</code>). Both were scored on the same held-out data; the student is
worth using if it keeps the teacher's quality while being faster and smaller.</p>
<nav>
  <a href="#summary">Summary</a><a href="#training">Training</a><a href="#separation">Separation</a>
  <a href="#sts">STS</a><a href="#map">Embedding map</a><a href="#data">Data</a><a href="#lineage">Lineage</a>
  <a href="#params">Params</a>
</nav>

<section id="summary">
<h2>Summary</h2>
<p class="verdict {{ 'pass' if verdict.passed else 'fail' }}"><b>{{ 'PASS' if verdict.passed else 'FAIL' }}:</b>
{{ verdict.headline }}</p>
<p>{{ verdict.detail }}</p>
<table class="summary">
  <tr><th>Metric</th><th class="num">Student</th><th class="num">Teacher</th><th>Target</th></tr>
  {% for group in summary %}
  <tr class="group"><td colspan="4">{{ group.name }}</td></tr>
  {% for row in group.rows %}
  <tr><td>{{ row.metric }}</td>{{ cell(row.student) }}{{ cell(row.teacher) }}<td>{{ row.target }}</td></tr>
  {% endfor %}
  {% endfor %}
</table>
<p class="lead"><b>STS</b>: rank (Spearman) and linear (Pearson) correlation of the cosine of sentence pairs with
human similarity scores; "undefined" when the predictions are constant. <b>Separation</b>: mean cosine of pairs
people call similar and dissimilar, and the gap between them. <b>Retrieval</b>: for each premise, whether an
entailed hypothesis is among the k nearest of all hypotheses (recall@k) and the mean reciprocal rank of the first
one (MRR).</p>
</section>

<section id="training">
<h2>Training</h2>
{{ image("training_curves", "Training loss and learning rate against optimiser step. Validation loss, where
measured, is marked at the step each epoch ended.") }}
{% if training %}
<h3>Training summary (metrics/train.json)</h3>
<table>{% for name, value in training %}<tr><td><code>{{ name }}</code></td><td class="num">{{ value }}</td></tr>{% endfor %}
</table>
{% endif %}
{% if generations %}
<h3>Causal LM continuations (plots/train/generations.csv)</h3>
<p>Greedy continuations of fixed prompts (train.clm.prompts) after each epoch: what the language model learned.</p>
<table><tr><th>Epoch</th><th>Prompt</th><th>Continuation</th></tr>
{% for epoch, prompt, continuation in generations %}<tr><td class="num">{{ epoch }}</td><td>{{ prompt }}</td>
<td>{{ continuation }}</td></tr>{% endfor %}
</table>
{% endif %}
</section>

<section id="separation">
<h2>Similar against dissimilar pairs</h2>
{{ image("cosine_histograms", "Cosine similarity of pairs labelled similar and dissimilar, per model. The two
humps should sit apart, on either side of the dashed targets for their means.") }}
</section>

<section id="sts">
<h2>Predicted against human similarity</h2>
{{ image("sts_scatter", "The student's cosine for each pair against its human (gold) score, one panel per
split. A narrow rising band means the student orders pairs as people do.") }}
</section>

<section id="map">
<h2>Embedding map</h2>
{{ image("embedding_map", "Student embeddings of sample sentences, projected to two dimensions with t-SNE and
coloured by label (STS-B genre or dataset). Sentences with a label in common should gather.") }}
{% if map_examples %}
<h3>Example sentences per label</h3>
<table>
  <tr><th>Label</th><th>Sentence</th></tr>
  {% for label, text in map_examples %}<tr><td>{{ label }}</td><td>{{ text }}</td></tr>{% endfor %}
</table>
{% endif %}
</section>

<section id="data">
<h2>Data</h2>
<div class="columns">
<div>
<h3>Download manifest (data/raw/manifest.json)</h3>
{% if manifest %}
<table>{% for name, value in manifest.about %}<tr><td>{{ name }}</td><td><code>{{ value }}</code></td></tr>{% endfor %}
</table>
<table>
  <tr><th>Dataset/split</th><th>Rows</th><th>Source rows</th><th>sha256</th></tr>
  {% for split in manifest.splits %}
  <tr><td>{{ split.name }}</td><td class="num">{{ split.rows }}</td><td class="num">{{ split.source_rows }}</td>
      <td><code title="{{ split.sha256 }}">{{ split.sha256[:sha_shown] }}</code></td></tr>
  {% endfor %}
</table>
{% for note in manifest.skipped %}<p>Skipped: {{ note }}</p>{% endfor %}
{% else %}
<p class="missing">Not available: no data/raw/manifest.json (run <code>embedforge download</code>).</p>
{% endif %}
</div>
<div>
<h3>Validation (data/validation/results.json)</h3>
{% if validation %}
<p><span class="badge {{ 'pass' if validation.passed else 'fail' }}">{{ 'PASS' if validation.passed else 'FAIL' }}</span>
{{ validation.summary }}</p>
<table>
  <tr><th>Dataset/split</th><th>Rows</th><th>Expectations met</th><th></th></tr>
  {% for split in validation.splits %}
  <tr><td>{{ split.name }}</td><td class="num">{{ split.rows }}</td><td class="num">{{ split.met }}</td>
      <td><span class="badge {{ 'pass' if split.passed else 'fail' }}">{{ 'PASS' if split.passed else 'FAIL' }}</span></td></tr>
  {% endfor %}
</table>
{% else %}
<p class="missing">Not available: no data/validation/results.json (run <code>embedforge validate</code>).</p>
{% endif %}
</div>
</div>
</section>

<section id="lineage">
<h2>Lineage</h2>
<table>
  <tr><td>MLflow run of this report</td><td><code>{{ lineage.report_run_id or "not tracked" }}</code></td></tr>
  <tr><td>MLflow pipeline (parent) run</td><td><code>{{ lineage.parent_run_id or "none" }}</code></td></tr>
  <tr><td>Git commit</td><td><code>{{ lineage.git_commit }}</code>{% if lineage.git_dirty == "true" %}
      (with uncommitted changes){% endif %}</td></tr>
</table>
<h3>DVC revision (dvc.lock)</h3>
{% if lineage.dvc_outs %}
<table>
  <tr><th>Stage</th><th>Output</th><th>md5</th></tr>
  {% for out in lineage.dvc_outs %}<tr><td>{{ out.stage }}</td><td><code>{{ out.path }}</code></td>
      <td><code>{{ out.md5 }}</code></td></tr>{% endfor %}
</table>
{% else %}
<p class="missing">Not available: no dvc.lock (the pipeline was not run with <code>embedforge run</code> or
<code>dvc repro</code>).</p>
{% endif %}
</section>
<section id="params">
<h2>Resolved params</h2>
<p class="lead">Every setting of this run after presets and overrides, by dotted name
(<code>--set name=value</code> changes one).</p>
<div class="param-groups">
{% for section, rows in params %}
<div><h3>{{ section }}</h3>
<table class="params">{% for name, value in rows %}<tr><td>{{ name }}</td><td><code>{{ value }}</code></td></tr>{% endfor %}
</table></div>
{% endfor %}
</div>
</section>

</main>
</body>
</html>
"""


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
    passed: bool
    headline: str
    detail: str


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
    """Everything the page shows; ``figures`` maps a figure's name to its PNG bytes (absent: not drawn)."""

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
    generations: list[tuple[int, str, str]] = ()


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
    rows = [
        Row(label, *(checked(side[key], sign, targets[target]) for side in sides), f"{sign} {targets[target]:g}")
        for label, key, target, sign in SEPARATION_CHECKS
    ]
    rows.append(
        Row(
            "Separation targets",
            *(Cell("all met" if side["passed"] else "missed", bool(side["passed"])) for side in sides),
            "all three",
        )
    )
    rows.append(
        Row(
            "Pairs (similar / dissimilar)",
            *(Cell(f"{number(side.get('similar_pairs'))} / {number(side.get('dissimilar_pairs'))}") for side in sides),
        )
    )
    return rows


def retrieval_rows(evaluation: dict[str, Any]) -> list[Row]:
    student, teacher = (evaluation[model]["retrieval"] for model in MODELS)
    measures = [key for key in student if key.startswith("recall@")] + ["mrr"]
    rows = [
        Row(key.replace("mrr", "MRR"), Cell(number(student.get(key))), Cell(number(teacher.get(key))))
        for key in measures
    ]
    rows.append(
        Row(
            "Queries / corpus",
            *(Cell(f"{number(side.get('queries'))} / {number(side.get('corpus'))}") for side in (student, teacher)),
        )
    )
    return rows


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
        Group("Speed and size", cost_rows(evaluation)),
    ]


def verdict(evaluation: dict[str, Any]) -> Verdict:
    """PASS when the student meets the separation targets; the detail puts its quality beside its cost."""
    separated = evaluation["student"]["separation"]
    targets = evaluation["targets"]
    means = (
        f"similar-pair mean {number(separated['similar_mean'])} (target ≥ {targets['similar_min']:g}), "
        f"dissimilar-pair mean {number(separated['dissimilar_mean'])} (target ≤ {targets['dissimilar_max']:g}), "
        f"gap {number(separated['gap'])} (target ≥ {targets['min_gap']:g})"
    )
    passed = bool(separated["passed"])
    headline = f"the student {'meets' if passed else 'misses'} the separation targets: {means}."
    detail = (
        f"It encodes {number(evaluation['speed_ratio'], 2)}× as many sentences per second as the teacher with "
        f"{number(evaluation['size_ratio'], 2)}× its parameters."
    )
    split = next(iter(evaluation["student"]["sts"]), None)
    if split is not None:
        spearman = [evaluation[model]["sts"].get(split, {}).get("spearman") for model in MODELS]
        detail += f" STS Spearman on {split}: student {number(spearman[0])}, teacher {number(spearman[1])}."
    return Verdict(passed, headline, detail)


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
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE).render(
        title=page.title,
        teacher=page.teacher,
        verdict=verdict(page.evaluation),
        summary=summary(page.evaluation),
        figures={name: base64.b64encode(png).decode("ascii") for name, png in page.figures.items()},
        missing_figures=page.missing_figures,
        training=[(name, number(value)) for name, value in flatten(page.training).items()],
        generations=page.generations,
        map_examples=page.map_examples,
        manifest=manifest_view(page.manifest) if page.manifest is not None else None,
        validation=validation_view(page.validation) if page.validation is not None else None,
        params=param_groups(page.params),
        lineage=page.lineage,
        sha_shown=SHA_SHOWN,
    )
