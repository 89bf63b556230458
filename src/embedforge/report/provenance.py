"""Where a model comes from, as its card tells it: the code's commit, the MLflow runs, DVC's hash of the params,
the teacher, and the datasets it learned from and was scored on, with their licences.

``card_lineage`` reads the project directory (git, MLflow, dvc.lock, the teacher's files); ``used_datasets`` and
``card_licence`` read the params alone. A part that cannot be found is None, and the card leaves it out.

The teacher's hub id: its spec where ``resolve`` fetched it from the hub; for a packaged bundle, the model it
bundles (``packaged:all-MiniLM-L6-v2`` is sentence-transformers/all-MiniLM-L6-v2's files, for offline use; the
fingerprint, the sha256 of its weights, configs and vocabulary, says which files); none for a local directory.

Licences: each dataset's is its declared ``download.datasets.<name>.license`` (known for the built-ins). The card's
is theirs when every dataset declares one and all agree; ``other`` when they differ or one is undeclared, since
no single licence then covers the model; none when no dataset declares one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from embedforge import tracking
from embedforge.config import DatasetSource, Params, documents_split, split_reference
from embedforge.config.builtin_datasets import BUILTINS
from embedforge.config.datasets import split_references
from embedforge.errors import UserError
from embedforge.files import sha256_tree
from embedforge.models import teacher as teachers
from embedforge.paths import STUDENT_DIR

PACKAGED_HUB_IDS = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}  # the model each bundle holds
TRAINING, EVALUATION = "training", "evaluation"


@dataclass(frozen=True)
class CardLineage:
    """Where the model comes from; a part that cannot be found is None, and the card leaves it out."""

    git_commit: str | None = None
    git_dirty: bool | None = None
    training_run_id: str | None = None  # the MLflow run that trained and registered models/student
    pipeline_run_id: str | None = None  # the MLflow parent run of the invocation that wrote the card
    params_md5: str | None = None  # md5 of the resolved params that shape the student (CARD_PARAMS)
    teacher_hub_id: str | None = None
    teacher_fingerprint: str | None = None


def card_lineage(cfg: Params) -> CardLineage:
    """Everything the card says of the model's origin that the metrics do not hold, read from the project."""
    tags = tracking.lineage_tags()
    try:
        teacher = teachers.resolve(cfg.precompute.teacher)
    except UserError:  # its files cannot be found: the card names the teacher by its spec alone
        teacher = None
    return CardLineage(
        git_commit=None if tags["git.commit"] == "unknown" else tags["git.commit"],  # unknown: no git here
        git_dirty={"true": True, "false": False}.get(tags["git.dirty"]),
        training_run_id=training_run_id(cfg),
        pipeline_run_id=os.environ.get(tracking.PARENT_RUN_ENV) or None,
        params_md5=params_md5(cfg),
        teacher_hub_id=teacher_hub_id(teacher) if teacher else None,
        teacher_fingerprint=teacher.fingerprint if teacher else None,
    )


def teacher_hub_id(teacher: teachers.TeacherRef) -> str | None:
    """A packaged bundle's original, or the spec when ``resolve`` fetched it from the hub (no local directory)."""
    if teacher.spec.startswith(teachers.PACKAGED_PREFIX):
        return PACKAGED_HUB_IDS.get(teacher.spec.removeprefix(teachers.PACKAGED_PREFIX))
    return teacher.spec if teacher.path != Path(teacher.spec).expanduser() else None


def training_run_id(cfg: Params) -> str | None:
    """The MLflow run that trained models/student: the one whose registered version carries the directory's hash
    (``StageRun.log_sentence_transformer`` tags it). None with tracking or the registry off, or no store to read."""
    registered = cfg.tracking.registered_model
    if not (cfg.tracking.enabled and registered and STUDENT_DIR.is_dir()):
        return None
    uri = tracking.tracking_uri(cfg)
    if uri.startswith(tracking.SQLITE_PREFIX) and not Path(uri.removeprefix(tracking.SQLITE_PREFIX)).is_file():
        return None  # nothing was tracked here, and asking would create an empty store
    if tracking.server_unreachable(uri, cfg.tracking.timeout_s) is not None:
        return None
    from mlflow.tracking import MlflowClient  # seconds to import: only once tracking is known to be on

    try:
        versions = MlflowClient(uri).search_model_versions(f"name = '{registered}'")
    except tracking.tracking_errors():
        return None
    model_hash = sha256_tree(STUDENT_DIR)
    return next((found.run_id for found in versions if found.tags.get(tracking.MODEL_HASH_TAG) == model_hash), None)


CARD_PARAMS = ("preset", "seed", "download", "precompute", "tokenize", "model", "train", "evaluate", "export")


def params_md5(cfg: Params) -> str:
    """md5 of the resolved params that made, scored and exported the student: the sections the export stage declares
    in dvc.yaml (all but validate, report and tracking, which change neither the model nor its numbers), so the
    card changes exactly when DVC re-runs export."""
    resolved = cfg.to_dict()
    chosen = {section: resolved[section] for section in CARD_PARAMS}
    return hashlib.md5(json.dumps(chosen, sort_keys=True).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class UsedDataset:
    """A dataset the run trained or was scored on, where it comes from and its licence."""

    name: str
    uses: tuple[str, ...]  # training, evaluation
    hub_id: str | None
    license: str | None
    license_note: str  # what a built-in's "other" licence is made of


def used_datasets(cfg: Params) -> list[UsedDataset]:
    """Each dataset the run trained on (train.datasets), then each it was scored on (evaluate.*,
    train.sts_validation, and the documents that evaluate.document_retrieval searches)."""
    declared = cfg.download.datasets
    uses: dict[str, list[str]] = {name: [TRAINING] for name in cfg.train.datasets}
    scored = [split_reference(spec)[0] for _, spec in split_references(cfg)]
    scored += [documents_split(*split_reference(spec), declared)[0] for spec in cfg.evaluate.document_retrieval]
    for name in scored:
        if EVALUATION not in uses.setdefault(name, []):
            uses[name].append(EVALUATION)
    return [
        UsedDataset(name, tuple(roles), declared[name].hub_id, declared[name].license, licence_note(declared[name]))
        for name, roles in uses.items()
    ]


def licence_note(source: DatasetSource) -> str:
    """What a built-in's licence is made of, where ``source`` reads that built-in's data under its licence."""
    same = (b for b in BUILTINS.values() if b.hub_id == source.hub_id and b.license == source.license)
    return next((builtin.license_note for builtin in same), "")


def card_licence(datasets: list[UsedDataset]) -> str | None:
    declared = {dataset.license for dataset in datasets if dataset.license}
    if not declared:
        return None
    return declared.pop() if len(declared) == 1 and all(dataset.license for dataset in datasets) else "other"
