"""The data contract of a raw split, as one Great Expectations suite per dataset.

Suites are built in code from ``DatasetSpec`` and ``ValidateParams`` so the
contract changes with the params, not with files on disk. Validation runs in
an in-memory GX context: GX writes nothing except the Data Docs site, and only
when one is asked for. Results come back as plain dicts that name the failed
expectation, its columns and a few offending rows, ready for JSON and for a
readable summary.

A split is validated in batches of ``validate.batch_rows`` rows, so a corpus of millions of
rows never sits in memory whole; the checks that span rows (duplicates, leakage
into train) are computed over the whole split first, from 8-byte row hashes (``row_hashes``), and
reach each batch as a flag column. The batches' results merge into one per split (``validation_results``).
A queries split's relevant ids are checked against its documents split the same way (``relevance``), so its
suite names that split and is built for each queries split.
"""

from __future__ import annotations

import os

# GX reads this when a context is made; set it before the import so no run phones home.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from pathlib import Path
from typing import Any

import great_expectations as gx
import numpy as np
import pandas as pd
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

from embedforge.config import NLI_LABELS, DatasetSource, ValidateParams
from embedforge.data.relevance import NO_RELEVANT_COLUMN, UNKNOWN_RELEVANT_COLUMN, DocumentIds, relevance_flags
from embedforge.data.row_hashes import in_sorted, read_batches, repeats_in_split, row_hashes
from embedforge.data.schema import raw_schema, raw_split_path
from embedforge.data.validation_results import describe_outcome, merge_outcomes

PAIR_COLUMNS = ["sentence1", "sentence2"]
KIND_TEXT_COLUMNS = {"documents": ["text"], "queries": ["query"]}  # else a pair's two sides, or a corpus' text
LEAK_COLUMN = "row_in_train"
REPEATED_COLUMN = "row_repeated"
ID_REPEATED_COLUMN = "id_repeated"
NUMERIC_TYPES = ["float64", "float32", "int64", "int32"]
DOCS_SITE = "embedforge"


def text_columns(source: DatasetSource) -> list[str]:
    return KIND_TEXT_COLUMNS.get(source.kind, PAIR_COLUMNS if source.is_pairs else ["text"])


def id_column(source: DatasetSource) -> str:
    """The column that names a row (``pair_id``, ``text_id``, ``id``, ``query_id``): its schema's first."""
    return raw_schema(source.kind).names[0]


def build_suite(
    name: str, source: DatasetSource, params: ValidateParams, documents: DocumentIds | None = None
) -> gx.ExpectationSuite:
    """Every check a raw split of dataset ``name`` must pass before anything trains on it, from its kind; a
    queries split's also checks its relevant ids against ``documents``, and the suite is named for the split."""
    expectations = shape_expectations(source, params) + text_expectations(source, params)
    if source.has_labels:
        expectations += label_expectations(name, source)
    if source.score_range:
        expectations += score_expectations(name, source.score_range)
    expectations += repeat_expectations(source, params)
    if documents is not None:
        expectations += relevance_expectations(documents)
    return gx.ExpectationSuite(name=name, expectations=expectations)


def shape_expectations(source: DatasetSource, params: ValidateParams) -> list[Any]:
    """Its kind's columns are all there, and (unless allowed) there is a row at all."""
    schema_columns = raw_schema(source.kind).names
    expectations: list[Any] = [gx.expectations.ExpectColumnToExist(column=column) for column in schema_columns]
    if not params.allow_empty_splits:  # 0 rows satisfy every other expectation
        expectations.append(
            gx.expectations.ExpectTableRowCountToBeBetween(
                min_value=1, description="Rows: a split has at least one (validate.allow_empty_splits: true allows 0)"
            )
        )
    return expectations


def text_expectations(source: DatasetSource, params: ValidateParams) -> list[Any]:
    """Every text is a non-blank string of validate.min_chars to validate.max_chars characters; documents are long,
    so validate.max_chars (a sentence's bound) does not apply to them."""
    expect = gx.expectations
    expectations: list[Any] = []
    max_chars = None if source.kind == "documents" else params.max_chars
    for column in text_columns(source):
        expectations += [
            expect.ExpectColumnValuesToBeOfType(column=column, type_="str"),
            expect.ExpectColumnValuesToNotBeNull(column=column),
            expect.ExpectColumnValuesToMatchRegex(
                column=column, regex=r"\S", description=f"{column} is not empty or whitespace only"
            ),
            expect.ExpectColumnValueLengthsToBeBetween(column=column, min_value=params.min_chars, max_value=max_chars),
        ]
    return expectations


def label_expectations(name: str, source: DatasetSource) -> list[Any]:
    mapping = f" (download.datasets.{name}.labels maps the data's own values onto them)" if source.labels else ""
    return [
        gx.expectations.ExpectColumnValuesToNotBeNull(column="label"),
        gx.expectations.ExpectColumnValuesToBeInSet(
            column="label",
            value_set=list(NLI_LABELS),
            description=f"Labels: every label is one of {', '.join(NLI_LABELS)}{mapping}",
        ),
    ]


def score_expectations(name: str, score_range: tuple[float, float]) -> list[Any]:
    low, high = score_range
    return [
        gx.expectations.ExpectColumnValuesToBeInTypeList(column="score", type_list=NUMERIC_TYPES),
        gx.expectations.ExpectColumnValuesToNotBeNull(column="score"),
        gx.expectations.ExpectColumnValuesToBeBetween(
            column="score",
            min_value=low,
            max_value=high,
            description=f"Scores: within download.datasets.{name}.score_range [{low:g}, {high:g}]",
        ),
    ]


def repeat_expectations(source: DatasetSource, params: ValidateParams) -> list[Any]:
    """Duplicates, leaks into train and repeated ids, read from the flag columns ``SplitValidator`` adds."""
    texts = text_columns(source)
    what = "(sentence1, sentence2) pair" if source.is_pairs else texts[0]
    return [
        gx.expectations.ExpectColumnValuesToBeInSet(
            column=REPEATED_COLUMN,
            value_set=[False],
            mostly=1 - params.max_duplicate_pair_rate,
            description=(
                f"Duplicates: at most {params.max_duplicate_pair_rate:.1%} of rows share their {what} with another row"
            ),
            meta={"check": "duplicates", "shown_columns": texts},
        ),
        gx.expectations.ExpectColumnValuesToBeInSet(
            column=LEAK_COLUMN,
            value_set=[False],
            mostly=1 - params.max_leaked_pair_rate,
            description=(
                f"Leakage: at most {params.max_leaked_pair_rate:.1%} of rows repeat a {what} "
                "of the train split (whitespace and case ignored)"
            ),
            meta={"check": "leakage", "shown_columns": texts},
        ),
        gx.expectations.ExpectColumnValuesToBeInSet(
            column=ID_REPEATED_COLUMN,
            value_set=[False],
            description=f"Ids: every {id_column(source)} occurs once in its split",
            meta={"check": "ids", "shown_columns": texts},
        ),
    ]


def relevance_expectations(documents: DocumentIds) -> list[Any]:
    """Every query has a relevant id, and each is a document of its documents split, read from the flag columns
    ``relevance_flags`` adds."""
    missing = "" if documents.hashes is not None else f", but {documents.path} was not downloaded"
    shown = {"shown_columns": ["query", "relevant"]}
    return [
        gx.expectations.ExpectColumnValuesToBeInSet(
            column=NO_RELEVANT_COLUMN,
            value_set=[False],
            description="Relevant: every query has at least one relevant id",
            meta={"check": "relevant", **shown},
        ),
        gx.expectations.ExpectColumnValuesToBeInSet(
            column=UNKNOWN_RELEVANT_COLUMN,
            value_set=[False],
            description=f"Relevant: every relevant id is a document of {documents.name}{missing}",
            meta={"check": "relevant_documents", **shown},
        ),
    ]


def leaked_rows(frame: pd.DataFrame, columns: list[str], train: np.ndarray | None) -> np.ndarray:
    """Which rows of a batch repeat a train row (``train``: its sorted ``row_hashes``; None: nothing to leak into)."""
    if train is None or not len(train):
        return np.zeros(len(frame), dtype=bool)
    return in_sorted(row_hashes(frame, columns, exact=False), train)


class SplitValidator:
    """One GX context for a validation run: a suite per dataset, every split's result, and their Data Docs.

    ``docs_dir`` is where ``build_docs`` renders the Data Docs site; without it no file is written.
    """

    def __init__(
        self, params: ValidateParams, datasets: dict[str, DatasetSource], docs_dir: Path | None = None
    ) -> None:
        self.params = params
        self.datasets = datasets
        sites = {}
        if docs_dir is not None:
            sites[DOCS_SITE] = {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir.resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        config = DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            data_docs_sites=sites,
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
        )
        self.context = gx.get_context(mode="ephemeral", project_config=config)
        self.datasource = self.context.data_sources.add_pandas("raw")
        self.suites: dict[str, gx.ExpectationSuite] = {}

    def suite(self, dataset: str, split: str, documents: DocumentIds | None = None) -> gx.ExpectationSuite:
        """The dataset's suite; a queries split's own, as it names the documents split of that split."""
        name = dataset if documents is None else f"{dataset}.{split}"
        if name not in self.suites:
            suite = build_suite(name, self.datasets[dataset], self.params, documents)
            self.suites[name] = self.context.suites.add(suite)
        return self.suites[name]

    def validate(
        self,
        dataset: str,
        split: str,
        path: Path,
        train: np.ndarray | None = None,
        documents: DocumentIds | None = None,
    ) -> dict[str, Any]:
        """Validate one raw split, batch by batch, against its dataset's suite; ``train`` holds the sorted
        ``row_hashes`` of the train split it must not leak into (None: nothing to leak into), ``documents`` the ids
        a queries split's relevant ids must be (None for any other kind).

        Returns ``{dataset, split, file, rows, success, expectations}`` where each expectation
        is ``{expectation, columns, description, success, observed, failing_rows, error}``
        and ``failing_rows`` holds up to ``failed_rows_shown`` of ``{row, values}``.
        """
        suite = self.suite(dataset, split, documents)
        columns = text_columns(self.datasets[dataset])
        repeated, repeated_ids = repeats_in_split(path, columns, self.params.batch_rows)
        # "/" is not allowed in GX store keys, which Data Docs build from the asset name.
        asset = self.datasource.add_dataframe_asset(f"{dataset}.{split}")
        batch_definition = asset.add_batch_definition_whole_dataframe("whole")
        parts: list[list[dict[str, Any]]] = []
        rows = 0
        for index, frame in enumerate(read_batches(path, self.params.batch_rows)):
            rows_here = frame.index.to_numpy()
            flags = {
                LEAK_COLUMN: leaked_rows(frame, columns, train),
                REPEATED_COLUMN: repeated[rows_here] if len(frame) else False,
                ID_REPEATED_COLUMN: repeated_ids[rows_here] if len(frame) else False,
            }
            if documents is not None:
                flags[NO_RELEVANT_COLUMN], flags[UNKNOWN_RELEVANT_COLUMN] = relevance_flags(frame, documents)
            name = f"{dataset}.{split}" if index == 0 else f"{dataset}.{split}.{index}"
            parts.append(self.run_batch(name, batch_definition, suite, frame.assign(**flags)))
            rows += len(frame)
        expectations = [
            merge_outcomes([part[order] for part in parts], getattr(expectation, "mostly", None), self.params)
            for order, expectation in enumerate(suite.expectations)
        ]
        return {
            "dataset": dataset,
            "split": split,
            "file": str(raw_split_path(dataset, split)),
            "rows": rows,
            "success": all(outcome["success"] for outcome in expectations),
            "expectations": expectations,
        }

    def run_batch(
        self, name: str, batch_definition: Any, suite: gx.ExpectationSuite, flagged: pd.DataFrame
    ) -> list[dict[str, Any]]:
        """One batch's outcomes, in the suite's order, with their failing rows read back from ``flagged``."""
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch_definition, suite=suite)
        )
        result = definition.run(
            batch_parameters={"dataframe": flagged},
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": self.params.failed_rows_shown},
        )
        # GX returns results grouped by metric, not in suite order; restore the order the suite reads in.
        position = {expectation.id: order for order, expectation in enumerate(suite.expectations)}
        ordered = sorted(result.results, key=lambda outcome: position[outcome.expectation_config.id])
        return [describe_outcome(outcome, flagged) for outcome in ordered]

    def build_docs(self) -> None:
        self.context.build_data_docs(site_names=[DOCS_SITE])
