"""The datasets a run may use: the three built-ins and any a user declares, each of one kind.

A dataset's ``kind`` fixes its common columns (``data.schema``), its expectations and
the stages it can serve: ``sentences`` feed precompute, tokenize and distillation;
``pairs_nli`` (labelled pairs) and ``pairs_score`` (scored pairs) also feed InfoNCE,
separation and retrieval, and scored pairs STS. ``documents`` (long texts with an id) feed
precompute, tokenize and distillation, and are what ``queries`` search in document retrieval:
a queries dataset names its documents dataset (``documents``), whose split ``documents_split``
picks. ``check_dataset_uses`` turns a dataset named where its kind cannot serve into a config
error naming the key.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from embedforge.config.base import Section
from embedforge.config.builtin_datasets import BUILTINS

DatasetKind = Literal["sentences", "pairs_nli", "pairs_score", "documents", "queries"]
PAIR_KINDS = ("pairs_nli", "pairs_score")
NliLabel = Literal["entailment", "neutral", "contradiction"]
NLI_LABELS: tuple[str, ...] = ("entailment", "neutral", "contradiction")
# Names become folders (data/raw/<name>/) and GX asset names, and appear in "<dataset>/<split>" params.
DatasetName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]*$")]
SplitName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
RESERVED_NAMES = {"tokenizer"}  # data/tokens/tokenizer sits beside data/tokens/<dataset>
FileFormat = Literal["auto", "parquet", "csv", "tsv", "jsonl", "txt"]
VALIDATION_SPLIT = "validation"
TRAIN_SPLIT = "train"
# The keys whose datasets are embedded (teacher vectors, token ids, training): any kind of text but queries.
EMBEDDED_KEYS = ("precompute.datasets", "tokenize.datasets", "train.datasets")

# The common columns of each kind, required ones first; ``columns`` maps them onto a file's or hub split's columns.
KIND_COLUMNS: dict[str, tuple[str, ...]] = {
    "sentences": ("text", "text_id"),
    "pairs_nli": ("sentence1", "sentence2", "label", "score", "pair_id", "genre"),
    "pairs_score": ("sentence1", "sentence2", "score", "label", "pair_id", "genre"),
    "documents": ("id", "text", "title"),
    "queries": ("query", "relevant", "query_id"),
}
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "sentences": ("text",),
    "pairs_nli": ("sentence1", "sentence2", "label"),
    "pairs_score": ("sentence1", "sentence2", "score"),
    "documents": ("id", "text"),
    "queries": ("query", "relevant"),
}


class DatasetSource(Section):
    """Where one dataset comes from (the hub, or local files), its kind, and how its columns and splits map."""

    kind: DatasetKind
    hub_id: str | None = Field(default=None, min_length=1)
    hub_config: str | None = None
    hub_revision: str | None = None
    archive: str | None = None
    files: str | list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    format: FileFormat = "auto"
    columns: dict[str, Annotated[str, Field(min_length=1)]] = {}
    labels: dict[str, NliLabel] | None = None
    score_range: tuple[float, float] | None = None
    similar_min_score: float | None = None
    dissimilar_max_score: float | None = None
    splits: list[SplitName] | dict[SplitName, Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    split_column: str | None = Field(default=None, min_length=1)
    validation_fraction: float | None = Field(default=None, gt=0, lt=1)
    documents: DatasetName | None = None  # queries only: the documents dataset their relevant ids refer to
    # The Hub's licence id (cc-by-4.0, apache-2.0, other), which the model card lists; a built-in's is known
    license: Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.+-]*$")] | None = None

    @field_validator("labels", mode="before")
    @classmethod
    def _label_keys_as_text(cls, value: Any) -> Any:
        """A file's labels may be numbers (``0: entailment``); they are compared as text."""
        return {str(key): label for key, label in value.items()} if isinstance(value, dict) else value

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSource:
        if (self.hub_id is None) == (self.files is None):
            raise ValueError("give exactly one of hub_id (a hub dataset) and files (local files)")
        if self.files is None and self.format != "auto":
            raise ValueError("format applies to files only")
        allowed = KIND_COLUMNS[self.kind]
        unknown = sorted(set(self.columns) - set(allowed))
        if unknown:
            raise ValueError(
                f"columns: {', '.join(unknown)} is not a column of a {self.kind} dataset "
                f"(columns: {', '.join(allowed)})"
            )
        if not self.is_pairs and (self.labels is not None or self.score_range is not None):
            raise ValueError(f"labels and score_range apply to pairs, not to a {self.kind} dataset")
        if self.kind == "queries" and self.documents is None:
            raise ValueError(
                "documents: required for a queries dataset: the documents dataset its relevant ids refer to"
            )
        if self.kind != "queries" and self.documents is not None:
            raise ValueError(
                f"documents: names the documents of a queries dataset's relevant ids; a {self.kind} dataset has none"
            )
        if self.kind == "pairs_score" and self.score_range is None:
            raise ValueError("score_range: required for scored pairs, e.g. [0, 5]: scores are checked against it")
        if self.score_range is not None and self.score_range[0] >= self.score_range[1]:
            raise ValueError(f"score_range: {list(self.score_range)} must be [low, high] with low < high")
        thresholds = (self.similar_min_score, self.dissimilar_max_score)
        if any(value is not None for value in thresholds) and not self.has_scores:
            raise ValueError("similar_min_score and dissimilar_max_score apply to scored pairs only")
        self._check_splits()
        return self

    def _check_splits(self) -> None:
        named = list(self.splits)
        if len(set(named)) != len(named):
            raise ValueError(f"splits: {named} names a split twice")
        if self.validation_fraction is not None:
            if TRAIN_SPLIT not in named:
                raise ValueError("validation_fraction carves validation out of train, so splits must name train")
            if VALIDATION_SPLIT in named:
                raise ValueError("validation_fraction: validation is carved out of train, so splits must not name it")
        if self.split_column is not None and self.files is None:
            raise ValueError("split_column applies to files; a hub dataset's splits map onto the hub's split names")
        many_file_splits = self.files is not None and isinstance(self.splits, list) and len(self.splits) > 1
        if many_file_splits and self.split_column is None:
            raise ValueError(
                f"splits: which files are which split? Map each to a glob, e.g. "
                f"{{{', '.join(f'{s}: {chr(34)}*{s}*{chr(34)}' for s in named)}}}, or name a split_column"
            )

    @property
    def has_scores(self) -> bool:
        """Scored pairs: pairs_score, or pairs_nli that also has a score column (declared by its score_range)."""
        return self.score_range is not None

    @property
    def has_labels(self) -> bool:
        """Labelled pairs: pairs_nli, or pairs_score that also maps a label column."""
        return self.kind == "pairs_nli" or (
            self.kind == "pairs_score" and ("label" in self.columns or bool(self.labels))
        )

    @property
    def is_pairs(self) -> bool:
        return self.kind in PAIR_KINDS

    def split_sources(self) -> dict[str, str]:
        """Each split and where it comes from: a hub split name, a file glob, or a value of ``split_column``.

        Splits given as a list come from the split of the same name; a files dataset with one split takes every file.
        """
        if isinstance(self.splits, dict):
            return dict(self.splits)
        if self.files is not None and self.split_column is None:
            return {self.splits[0]: "*"}
        return {split: split for split in self.splits}

    def produced_splits(self) -> list[str]:
        """The splits download writes: those declared, and validation when it is carved out of train."""
        return [*self.split_sources(), *([VALIDATION_SPLIT] if self.validation_fraction is not None else [])]


def default_datasets() -> dict[str, DatasetSource]:
    return {name: DatasetSource.model_validate(builtin.default_entry()) for name, builtin in BUILTINS.items()}


def documents_split(queries_dataset: str, split: str, declared: dict[str, DatasetSource]) -> tuple[str, str]:
    """``(documents dataset, split)`` whose ids the relevant ids of ``queries_dataset``/``split`` are.

    The documents dataset is the queries dataset's ``documents``; its split is the one named like the query
    split, or, when the documents dataset has exactly one split (as download writes them), that one. Anything
    else is a ValueError naming the key to set.
    """
    key = f"download.datasets.{queries_dataset}.documents"
    source = declared.get(queries_dataset)
    if source is None or source.kind != "queries" or source.documents is None:
        kind = "not declared" if source is None else f"a {source.kind} dataset"
        raise ValueError(f"{queries_dataset} is {kind}, not a queries dataset: it names no documents")
    documents = source.documents
    target = declared.get(documents)
    if target is None:
        raise ValueError(f"{key}: dataset {documents!r} is not declared in download.datasets ({', '.join(declared)})")
    if target.kind != "documents":
        raise ValueError(
            f"{key}: {documents} is a {target.kind} dataset (download.datasets.{documents}.kind), but the relevant "
            f"ids of queries must name documents"
        )
    splits = target.produced_splits()
    if split in splits:
        return documents, split
    if len(splits) == 1:
        return documents, splits[0]
    raise ValueError(
        f"{key}: {queries_dataset}/{split} needs the documents split {documents}/{split}, but {documents} has the "
        f"splits {', '.join(splits)}: declare {split} in download.datasets.{documents}.splits, or give {documents} "
        f"one split"
    )


def check_documents(declared: dict[str, DatasetSource]) -> None:
    """Every split of every queries dataset has its documents split (``documents_split``); a ValueError if not."""
    for name, source in declared.items():
        if source.kind == "queries":
            for split in source.produced_splits():
                documents_split(name, split, declared)


def split_reference(spec: str) -> tuple[str, str]:
    """``stsb/validation`` -> ("stsb", "validation"); the split part may be empty when malformed."""
    dataset, _, split = spec.partition("/")
    return dataset, split


def check_dataset_uses(params: Any) -> None:
    """Every dataset a stage names is declared and of a kind that can serve there.

    Whether a split was downloaded is the stage's to check when it runs: a split may be optional.

    ``params`` is the whole ``Params``: the uses span sections. Raises ValueError naming the key.
    """
    declared: dict[str, DatasetSource] = params.download.datasets
    references = split_references(params)
    names = [("precompute.datasets", name) for name in params.precompute.datasets]
    names += [("tokenize.datasets", name) for name in params.tokenize.datasets]
    names += [("train.datasets", name) for name in params.train.datasets]
    names += [(key, split_reference(spec)[0]) for key, spec in references]
    for key, dataset in names:
        if dataset not in declared:
            raise ValueError(f"{key}: dataset {dataset!r} is not declared in download.datasets ({', '.join(declared)})")
        if key in EMBEDDED_KEYS and declared[dataset].kind == "queries":
            refuse(key, dataset, declared[dataset], "texts to embed (queries serve evaluate.document_retrieval only)")
    if params.train.uses_pairs:
        check_training_pairs(params.train, declared)
    for key, spec in references:
        if key == "evaluate.document_retrieval":
            check_document_retrieval(key, spec, declared)
        else:
            check_reference(key, split_reference(spec)[0], declared, params.evaluate)


def split_references(params: Any) -> list[tuple[str, str]]:
    """Every ``<dataset>/<split>`` a stage names, with its key; one not of that form is an error."""
    train, evaluate = params.train, params.evaluate
    references = [("evaluate.sts_splits", spec) for spec in evaluate.sts_splits]
    references += [("evaluate.separation_splits", spec) for spec in evaluate.separation_splits]
    references += [("evaluate.retrieval_split", evaluate.retrieval_split)]
    references += [("evaluate.document_retrieval", spec) for spec in evaluate.document_retrieval]
    if train.sts_validation is not None:
        references.append(("train.sts_validation", train.sts_validation))
    for key, spec in references:
        if not split_reference(spec)[1]:
            raise ValueError(f"{key}: {spec!r} is not <dataset>/<split>")
    return references


def refuse(key: str, dataset: str, source: DatasetSource, needs: str) -> None:
    raise ValueError(
        f"{key}: {dataset} is a {source.kind} dataset (download.datasets.{dataset}.kind), but {key} needs {needs}"
    )


def check_training_pairs(train: Any, declared: dict[str, DatasetSource]) -> None:
    """InfoNCE trains on pairs; unlabelled ones are positives from train.similar_min_score up, within their range."""
    for dataset in train.datasets:
        source = declared[dataset]
        if not source.is_pairs:
            refuse(
                "train.datasets",
                dataset,
                source,
                "pairs while train.objectives.infonce > 0 (InfoNCE trains on pairs): use pairs_nli or "
                "pairs_score, or distil alone (train.objectives.infonce: 0)",
            )
        if not source.has_labels:
            within_range("train.similar_min_score", train.similar_min_score, dataset, source, "similar_min_score")


def check_reference(key: str, dataset: str, declared: dict[str, DatasetSource], evaluate: Any) -> None:
    """A split named at ``key`` is of a kind that serves there, and the thresholds used on it fit its scores."""
    source = declared[dataset]
    if key in ("evaluate.sts_splits", "train.sts_validation") and not source.has_scores:
        refuse(key, dataset, source, "scored pairs: pairs_score, or pairs_nli with a score column")
    if key in ("evaluate.separation_splits", "evaluate.retrieval_split") and not source.is_pairs:
        hint = " (queries search their documents in evaluate.document_retrieval)" if source.kind == "queries" else ""
        refuse(key, dataset, source, f"pairs: pairs_nli or pairs_score{hint}")
    similar = ("evaluate.similar_min_score", evaluate.similar_min_score, dataset, source, "similar_min_score")
    if key == "evaluate.separation_splits" and source.has_scores:
        within_range(*similar)
        within_range(
            "evaluate.dissimilar_max_score", evaluate.dissimilar_max_score, dataset, source, "dissimilar_max_score"
        )
    if key == "evaluate.retrieval_split" and not source.has_labels:
        within_range(*similar)


def check_document_retrieval(key: str, spec: str, declared: dict[str, DatasetSource]) -> None:
    """A ``<queries dataset>/<split>`` of document retrieval: a queries dataset whose documents split is known."""
    dataset, split = split_reference(spec)
    source = declared[dataset]
    if source.kind != "queries":
        refuse(key, dataset, source, "queries: a queries dataset, whose documents names the documents it searches")
    try:
        documents_split(dataset, split, declared)
    except ValueError as exc:
        raise ValueError(f"{key}: {spec}: {exc}") from None


def within_range(key: str, default: float, dataset: str, source: DatasetSource, own: str) -> None:
    """A score threshold (the dataset's own, else the stage's ``key``) must lie inside the dataset's score range."""
    value = getattr(source, own)
    low, high = source.score_range or (float("-inf"), float("inf"))
    if low <= (default if value is None else value) <= high:
        return
    if value is not None:
        raise ValueError(f"download.datasets.{dataset}.{own} ({value}) is outside its score_range [{low:g}, {high:g}]")
    raise ValueError(
        f"{key} ({default}) is outside download.datasets.{dataset}.score_range [{low:g}, {high:g}]: "
        f"set download.datasets.{dataset}.{own} in that dataset's own units"
    )


def threshold(source: DatasetSource, own: str, default: float) -> float:
    """A dataset's own score threshold, else the stage's."""
    value = getattr(source, own)
    return default if value is None else value
