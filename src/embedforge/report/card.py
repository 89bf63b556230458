"""The model card (``models/export/README.md``): what a hub user reads first, from the run's own numbers.

sentence-transformers' layout: YAML front matter, then the model, its usage, the evaluation against the teacher,
speed and size (``card_tables``), how it was trained, its datasets and their licences, and its lineage.
``model_card`` reads nothing: only the metrics it is given (``metrics/eval.json``, ``metrics/train.json``,
``metrics/export.json``), the resolved params and the lineage (``card_lineage``, from ``provenance``), so the card
changes exactly when they do. What the inputs do not hold is left out, never written as unknown.

The front matter's own ``teacher`` key always names the teacher (its spec and fingerprint). ``base_model``, the
Hub's model tree, names its hub id where it has one and the student derives from it (initialised from it or
distilled from its vectors): the packaged all-MiniLM-L6-v2 is sentence-transformers/all-MiniLM-L6-v2's files, so
it is named so there. ``license`` is ``provenance.card_licence``: the datasets' one licence, else ``other``.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from embedforge.config import Params, flatten, split_reference
from embedforge.models.teacher import PACKAGED_PREFIX
from embedforge.report.card_tables import STS_METRICS, count, duration, evaluation_section, rate, speed_and_size, table
from embedforge.report.markdown import number
from embedforge.report.provenance import TRAINING, CardLineage, UsedDataset, card_licence, card_lineage, used_datasets
from embedforge.runs import KEY_PARAMS

__all__ = ["CardLineage", "card_lineage", "model_card"]  # what the export stage calls

CARD_PARAMS = (*KEY_PARAMS, "tokenize.max_length", "train.datasets", "seed")
EXAMPLES = ["A man is playing a guitar.", "Someone is playing music.", "A dog runs through the snow."]
SENTENCE_TRANSFORMERS_USAGE = """from sentence_transformers import SentenceTransformer

model = SentenceTransformer("models/student")
sentences = {sentences}
embeddings = model.encode(sentences)
print(embeddings.shape){shape}
similarities = model.similarity(embeddings, embeddings)"""
EMBEDFORGE_USAGE = """from embedforge import load_model

model = load_model("models/student")
model.similarity("{first}", "{second}")  # cosine, -1..1
model.search("a dog in the snow", ["{first}", "{second}"], top_k=1)"""
ONNX_USAGE = """from embedforge import load_model

model = load_model("models/export", backend="onnx")"""


def model_card(
    cfg: Params, evaluation: dict[str, Any], training: dict[str, Any], exports: dict[str, Any], lineage: CardLineage
) -> str:
    """The whole README.md: front matter, then each section the inputs have something for."""
    datasets = used_datasets(cfg)
    name = card_name(cfg, lineage)
    sections = [
        f"# {name}",
        introduction(cfg, evaluation, training, datasets),
        model_details(cfg, evaluation, training, lineage, datasets),
        usage(training, exports),
        evaluation_section(evaluation),
        speed_and_size(evaluation, exports),
        training_section(cfg, training),
        datasets_section(datasets),
        lineage_section(lineage),
    ]
    matter = yaml.safe_dump(front_matter(cfg, evaluation, lineage, datasets, name), sort_keys=False, allow_unicode=True)
    return f"---\n{matter}---\n\n" + "\n\n".join(section for section in sections if section) + "\n"


def card_name(cfg: Params, lineage: CardLineage) -> str:
    teacher = lineage.teacher_hub_id or cfg.precompute.teacher.removeprefix(PACKAGED_PREFIX)
    return f"embedforge {cfg.model.kind} student of {teacher.rstrip('/').split('/')[-1]}"


def derives_from_teacher(cfg: Params) -> bool:
    """Whether the student's weights come from the teacher: initialised from it, or distilled from its vectors."""
    return cfg.model.init != "scratch" or (cfg.train.objective == "embedding" and cfg.train.objectives["distill"] > 0)


def front_matter(
    cfg: Params, evaluation: dict[str, Any], lineage: CardLineage, datasets: list[UsedDataset], name: str
) -> dict[str, Any]:
    """sentence-transformers' metadata fields in its order, each only where known, and the teacher."""
    matter: dict[str, Any] = {}
    if licence := card_licence(datasets):
        matter["license"] = licence
    matter["library_name"] = "sentence-transformers"
    matter["tags"] = ["sentence-transformers", "sentence-similarity", "feature-extraction", "embedforge"]
    if hub_ids := list(dict.fromkeys(dataset.hub_id for dataset in datasets if dataset.hub_id)):
        matter["datasets"] = hub_ids
    index = model_index(cfg, evaluation, name)
    if index:
        metrics = {metric["type"] for result in index[0]["results"] for metric in result["metrics"]}
        matter["metrics"] = [metric for _, metric, _ in STS_METRICS if metric in metrics]
    matter["pipeline_tag"] = "sentence-similarity"
    if index:
        matter["model-index"] = index
    if lineage.teacher_hub_id and derives_from_teacher(cfg):
        matter["base_model"] = lineage.teacher_hub_id
    teacher = {"model": cfg.precompute.teacher}
    matter["teacher"] = teacher | ({"fingerprint": lineage.teacher_fingerprint} if lineage.teacher_fingerprint else {})
    return matter


def model_index(cfg: Params, evaluation: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The Hub's evaluation results: the student's cosine correlations on each STS split eval.json holds."""
    results = []
    for spec, scores in evaluation.get("student", {}).get("sts", {}).items():
        metrics = [
            {"type": metric, "value": float(scores[key]), "name": label}
            for key, metric, label in STS_METRICS
            if scores.get(key) is not None
        ]
        dataset, split = split_reference(spec)
        source = cfg.download.datasets.get(dataset)
        if metrics:
            results.append(
                {
                    "task": {"type": "semantic-similarity", "name": "Semantic Similarity"},
                    "dataset": {"name": spec, "type": (source and source.hub_id) or dataset, "split": split},
                    "metrics": metrics,
                }
            )
    return [{"name": name, "results": results}] if results else []


def bullets(facts: list[tuple[str, str | None]]) -> str:
    """``- **label:** value`` for each fact that has a value."""
    return "\n".join(f"- **{label}:** {value}" for label, value in facts if value)


def introduction(cfg: Params, evaluation: dict[str, Any], training: dict[str, Any], datasets: list[UsedDataset]) -> str:
    trained_on = [dataset.name for dataset in datasets if TRAINING in dataset.uses]
    dimensions = training.get("embedding_dim")
    text = (
        f"This is a [sentence-transformers](https://www.SBERT.net) model, an embedforge `{cfg.model.kind}` student "
        f"trained on {' and '.join(trained_on)}. It maps sentences"
        + (f" to a {dimensions}-dimensional dense vector space" if dimensions else " to dense vectors")
        + " for semantic textual similarity, semantic search and clustering."
    )
    headline = (evaluation.get("verdict") or {}).get("headline")
    return f"{text}\n\n{headline}" if headline else text


def teacher_role(cfg: Params) -> str:
    """What the teacher was to this run, in words."""
    roles = [] if cfg.model.init == "scratch" else [f"initialised from it (model.init: {cfg.model.init})"]
    if cfg.train.objective == "embedding" and cfg.train.objectives["distill"] > 0:
        roles.append(f"distilled from its embeddings ({cfg.train.distill_loss} loss)")
    return "; ".join([*roles, "scored beside it below"])


def model_details(
    cfg: Params,
    evaluation: dict[str, Any],
    training: dict[str, Any],
    lineage: CardLineage,
    datasets: list[UsedDataset],
) -> str:
    hub_id = lineage.teacher_hub_id
    teacher = f"[{hub_id}](https://huggingface.co/{hub_id}) (`{cfg.precompute.teacher}`)" if hub_id else None
    fingerprint = f", files sha256 `{lineage.teacher_fingerprint}`" if lineage.teacher_fingerprint else ""
    parameters = evaluation.get("student", {}).get("size", {}).get("parameters")
    dimensions = training.get("embedding_dim")
    facts = [
        ("Model Type", f"Sentence Transformer, embedforge family `{cfg.model.kind}`"),
        ("Teacher", f"{teacher or f'`{cfg.precompute.teacher}`'}{fingerprint}: {teacher_role(cfg)}"),
        ("Output Dimensionality", f"{dimensions} dimensions" if dimensions else None),
        ("Parameters", count(parameters)),
        ("Similarity Function", "Cosine Similarity"),
        ("Training Datasets", ", ".join(dataset.name for dataset in datasets if TRAINING in dataset.uses)),
        ("License", card_licence(datasets)),
    ]
    return f"## Model Details\n\n{bullets(facts)}"


def code(language: str, text: str) -> str:
    return f"```{language}\n{text}\n```"


def usage(training: dict[str, Any], exports: dict[str, Any]) -> str:
    """sentence-transformers' snippet, embedforge's, and the ONNX export's where there is one."""
    sentences = json.dumps(EXAMPLES)
    shape = f"  # ({len(EXAMPLES)}, {training['embedding_dim']})" if training.get("embedding_dim") else ""
    parts = [
        "## Usage",
        "### Direct Usage (Sentence Transformers)",
        code("bash", "pip install -U sentence-transformers"),
        code("python", SENTENCE_TRANSFORMERS_USAGE.format(sentences=sentences, shape=shape)),
        "A family that adds modules of its own (modules.json naming `embedforge.*`) loads with embedforge "
        "installed and `trust_remote_code=True`; `load_model` does both.",
        "### With embedforge",
        code("python", EMBEDFORGE_USAGE.format(first=EXAMPLES[0], second=EXAMPLES[1])),
    ]
    if exports.get("variants"):
        parts += ["### ONNX (models/export)", code("python", ONNX_USAGE)]
    return "\n\n".join(parts)


TRAINING_FACTS = (  # train.json's key, its label, how it reads
    ("steps", "Steps", count),
    ("epochs", "Epochs", count),
    ("best_epoch", "Epoch kept (best on validation)", count),
    ("train_seconds", "Training time", duration),
    ("device", "Device", str),
    ("examples_per_s", "Examples per second", rate),
    ("sts_spearman", "Validation STS Spearman of the kept epoch", number),
)


def objectives(cfg: Params) -> str:
    """The objective and its losses in words."""
    train = cfg.train
    if train.objective == "clm":
        return "causal language modelling (next-token prediction)"
    parts = []
    if train.objectives["infonce"] > 0:
        negatives = ", hard negatives" if train.hard_negatives else ""
        parts.append(
            f"InfoNCE on pairs (weight {train.objectives['infonce']:g}, temperature {train.temperature:g}{negatives})"
        )
    if train.objectives["distill"] > 0:
        parts.append(
            f"distillation of the teacher's embeddings ({train.distill_loss}, weight {train.objectives['distill']:g})"
        )
    return " + ".join(parts)


def training_section(cfg: Params, training: dict[str, Any]) -> str:
    facts = [("Objective", objectives(cfg))]
    facts += [(label, text(training[key])) for key, label, text in TRAINING_FACTS if training.get(key) is not None]
    flat = flatten(cfg.to_dict())
    texts = {key: value if isinstance(value, str) else json.dumps(value) for key, value in flat.items()}
    params = "\n".join(f"- `{key}`: {texts[key]}" for key in CARD_PARAMS if key in texts)
    parts = ["## Training Details", bullets(facts), f"### Training Hyperparameters\n\n{params}"]
    if phases := training.get("phases"):
        rows = [
            [phase, count(done.get("epochs")), count(done.get("steps")), duration(done.get("train_seconds"))]
            for phase, done in phases.items()
        ]
        parts.append("### Phases\n\n" + table(["phase", "epochs", "steps", "time"], rows))
    return "\n\n".join(parts)


def datasets_section(datasets: list[UsedDataset]) -> str:
    rows = []
    for dataset in datasets:
        source = (
            f"[{dataset.hub_id}](https://huggingface.co/datasets/{dataset.hub_id})" if dataset.hub_id else "local files"
        )
        licence = dataset.license or f"none declared (`download.datasets.{dataset.name}.license`)"
        note = f": {dataset.license_note}" if dataset.license_note else ""
        rows.append([dataset.name, ", ".join(dataset.uses), source, f"{licence}{note}"])
    parts = ["## Datasets and Licences", table(["dataset", "used for", "source", "licence"], rows)]
    if card_licence(datasets) == "other":
        parts.append(
            "The datasets' licences differ or are not all declared, so this card's licence is `other`: "
            "each dataset's terms above bind the model's use."
        )
    return "\n\n".join(parts)


def lineage_section(lineage: CardLineage) -> str:
    dirty = " (with uncommitted changes)" if lineage.git_dirty else ""
    facts = [
        ("Git commit", f"`{lineage.git_commit}`{dirty}" if lineage.git_commit else None),
        ("MLflow training run", f"`{lineage.training_run_id}`" if lineage.training_run_id else None),
        ("MLflow pipeline run", f"`{lineage.pipeline_run_id}`" if lineage.pipeline_run_id else None),
        (
            "Params hash (md5 of the resolved params behind it)",
            f"`{lineage.params_md5}`" if lineage.params_md5 else None,
        ),
    ]
    sources = "Generated from metrics/eval.json, metrics/train.json, metrics/export.json and the resolved params."
    return "\n\n".join(part for part in ("## Lineage", bullets(facts), sources) if part)
