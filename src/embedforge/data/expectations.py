"""The data contract of a raw split, as one Great Expectations suite per dataset.

Suites are built in code from ``DatasetSpec`` and ``ValidateParams`` so the
contract changes with the params, not with files on disk. Validation runs in
an in-memory GX context: GX writes nothing except the Data Docs site, and only
when one is asked for. Results come back as plain dicts that name the failed
expectation, its columns and a few offending rows, ready for JSON and for a
readable summary.

A split is validated in batches of ``validate.batch_rows`` rows, so a corpus of millions of
rows never sits in memory whole; the checks that span rows (duplicates, leakage
into train) are computed over the whole split first, from 8-byte row hashes, and
reach each batch as a flag column. The batches' results merge into one per split.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

# GX reads this when a context is made; set it before the import so no run phones home.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

from pathlib import Path
from typing import Any

import great_expectations as gx
import numpy as np
import pandas as pd
import pyarrow as pa
from great_expectations.core.expectation_validation_result import ExpectationValidationResult
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)

from embedforge.config import NLI_LABELS, DatasetSource, ValidateParams
from embedforge.data.schema import RAW_COLUMNS, SENTENCES_COLUMNS, raw_split_path, row_keys
from embedforge.errors import DataError
from embedforge.files import stream_parquet

PAIR_COLUMNS = ["sentence1", "sentence2"]
ID_COLUMNS = ["pair_id", "text_id"]  # shown with every failing row: the source's own row id, e.g. train-17
LEAK_COLUMN = "row_in_train"
REPEATED_COLUMN = "row_repeated"
ID_REPEATED_COLUMN = "id_repeated"
NUMERIC_TYPES = ["float64", "float32", "int64", "int32"]
DOCS_SITE = "embedforge"
OBSERVED_KEYS = ("observed_value", "element_count", "unexpected_count", "unexpected_percent", "missing_count")
SHOWN_TEXT_CHARS = 80
ROW_COUNT = "expect_table_row_count_to_be_between"  # its batches' observed counts add up to the split's


def text_columns(source: DatasetSource) -> list[str]:
    return PAIR_COLUMNS if source.is_pairs else ["text"]


def row_hashes(frame: pd.DataFrame, columns: list[str], exact: bool) -> np.ndarray:
    """A 64-bit hash of each row's texts: as written (``exact``), or as ``row_keys`` compares them.

    Missing columns, null texts and non-text values are the column expectations' to report, so they must
    not crash this nor count as repeats or leaks: texts are cast to strings, and a row with a null text
    (every row, when a column is missing) hashes as its position in the split, which no other row has.
    """
    positions = frame.index.to_numpy(dtype=np.uint64)
    if any(column not in frame for column in columns):
        return positions
    texts = frame[columns].astype("str")
    null = texts.isna().any(axis=1).to_numpy()
    filled = texts.fillna("")
    keys = filled.agg("\t".join, axis=1) if exact else row_keys(filled)
    hashes = pd.util.hash_pandas_object(keys.astype("str"), index=False).to_numpy(dtype=np.uint64, copy=True)
    hashes[null] = positions[null]
    return hashes


def read_batches(path: Path, batch_rows: int) -> Iterator[pd.DataFrame]:
    """A raw split in frames of ``batch_rows`` rows, indexed by their rows' positions in the
    split; an empty split gives one empty frame, so its expectations still run."""
    try:
        parquet = stream_parquet(path)
        start = 0
        for batch in parquet.iter_batches(batch_size=batch_rows):
            frame = batch.to_pandas()
            frame.index = pd.RangeIndex(start, start + len(frame))
            start += len(frame)
            yield frame
        if start == 0:
            yield parquet.schema_arrow.empty_table().to_pandas()
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read parquet ({exc}): run `embedforge download` again") from None


def split_hashes(path: Path, columns: list[str], exact: bool, batch_rows: int) -> np.ndarray:
    """``row_hashes`` of every row of a raw split, streamed."""
    parts = [row_hashes(frame, columns, exact) for frame in read_batches(path, batch_rows)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def repeats_in_split(path: Path, columns: list[str], batch_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """For every row of a raw split, streamed once: does its texts' exact ``row_hashes`` occur again, and
    does its id (``pair_id`` or ``text_id``, whichever it has)?"""
    texts, ids = [], []
    for frame in read_batches(path, batch_rows):
        texts.append(row_hashes(frame, columns, exact=True))
        ids.append(row_hashes(frame, [next((c for c in ID_COLUMNS if c in frame), ID_COLUMNS[0])], exact=True))
    return repeated_rows(np.concatenate(texts)), repeated_rows(np.concatenate(ids))


def repeated_rows(hashes: np.ndarray) -> np.ndarray:
    """True for every row whose hash occurs more than once."""
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    return counts[inverse] > 1


def build_suite(name: str, source: DatasetSource, params: ValidateParams) -> gx.ExpectationSuite:
    """Every check a raw split of dataset ``name`` must pass before anything trains on it, from its kind."""
    expect = gx.expectations
    texts = text_columns(source)
    schema_columns = RAW_COLUMNS if source.is_pairs else SENTENCES_COLUMNS
    expectations: list[Any] = [expect.ExpectColumnToExist(column=column) for column in schema_columns]
    if not params.allow_empty_splits:  # 0 rows satisfy every other expectation
        expectations.append(
            expect.ExpectTableRowCountToBeBetween(
                min_value=1, description="Rows: a split has at least one (validate.allow_empty_splits: true allows 0)"
            )
        )
    for column in texts:
        expectations += [
            expect.ExpectColumnValuesToBeOfType(column=column, type_="str"),
            expect.ExpectColumnValuesToNotBeNull(column=column),
            expect.ExpectColumnValuesToMatchRegex(
                column=column, regex=r"\S", description=f"{column} is not empty or whitespace only"
            ),
            expect.ExpectColumnValueLengthsToBeBetween(
                column=column, min_value=params.min_chars, max_value=params.max_chars
            ),
        ]
    if source.has_labels:
        mapping = f" (download.datasets.{name}.labels maps the data's own values onto them)" if source.labels else ""
        expectations += [
            expect.ExpectColumnValuesToNotBeNull(column="label"),
            expect.ExpectColumnValuesToBeInSet(
                column="label",
                value_set=list(NLI_LABELS),
                description=f"Labels: every label is one of {', '.join(NLI_LABELS)}{mapping}",
            ),
        ]
    if source.score_range:
        low, high = source.score_range
        expectations += [
            expect.ExpectColumnValuesToBeInTypeList(column="score", type_list=NUMERIC_TYPES),
            expect.ExpectColumnValuesToNotBeNull(column="score"),
            expect.ExpectColumnValuesToBeBetween(
                column="score",
                min_value=low,
                max_value=high,
                description=f"Scores: within download.datasets.{name}.score_range [{low:g}, {high:g}]",
            ),
        ]
    what = "(sentence1, sentence2) pair" if source.is_pairs else "text"
    expectations += [
        expect.ExpectColumnValuesToBeInSet(
            column=REPEATED_COLUMN,
            value_set=[False],
            mostly=1 - params.max_duplicate_pair_rate,
            description=(
                f"Duplicates: at most {params.max_duplicate_pair_rate:.1%} of rows share their {what} with another row"
            ),
            meta={"check": "duplicates", "shown_columns": texts},
        ),
        expect.ExpectColumnValuesToBeInSet(
            column=LEAK_COLUMN,
            value_set=[False],
            mostly=1 - params.max_leaked_pair_rate,
            description=(
                f"Leakage: at most {params.max_leaked_pair_rate:.1%} of rows repeat a {what} "
                "of the train split (whitespace and case ignored)"
            ),
            meta={"check": "leakage", "shown_columns": texts},
        ),
        expect.ExpectColumnValuesToBeInSet(
            column=ID_REPEATED_COLUMN,
            value_set=[False],
            description=f"Ids: every {'pair_id' if source.is_pairs else 'text_id'} occurs once in its split",
            meta={"check": "ids", "shown_columns": texts},
        ),
    ]
    return gx.ExpectationSuite(name=name, expectations=expectations)


def json_ready(value: Any) -> Any:
    """A JSON-ready copy of a value from pandas or GX: numpy scalars unwrapped, NaN as None."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return None if pd.isna(value) else str(value)


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

    def suite(self, dataset: str) -> gx.ExpectationSuite:
        if dataset not in self.suites:
            suite = build_suite(dataset, self.datasets[dataset], self.params)
            self.suites[dataset] = self.context.suites.add(suite)
        return self.suites[dataset]

    def validate(self, dataset: str, split: str, path: Path, train: np.ndarray | None = None) -> dict[str, Any]:
        """Validate one raw split, batch by batch, against its dataset's suite; ``train`` holds the sorted
        ``row_hashes`` of the train split it must not leak into (None: nothing to leak into).

        Returns ``{dataset, split, file, rows, success, expectations}`` where each expectation
        is ``{expectation, columns, description, success, observed, failing_rows, error}``
        and ``failing_rows`` holds up to ``failed_rows_shown`` of ``{row, values}``.
        """
        suite = self.suite(dataset)
        columns = text_columns(self.datasets[dataset])
        repeated, repeated_ids = repeats_in_split(path, columns, self.params.batch_rows)
        # "/" is not allowed in GX store keys, which Data Docs build from the asset name.
        asset = self.datasource.add_dataframe_asset(f"{dataset}.{split}")
        batch_definition = asset.add_batch_definition_whole_dataframe("whole")
        parts: list[list[dict[str, Any]]] = []
        rows = 0
        for index, frame in enumerate(read_batches(path, self.params.batch_rows)):
            leaked = np.zeros(len(frame), dtype=bool)
            if train is not None and len(train):
                leaked = np.isin(row_hashes(frame, columns, exact=False), train)
            rows_here = frame.index.to_numpy()
            flagged = frame.assign(
                **{
                    LEAK_COLUMN: leaked,
                    REPEATED_COLUMN: repeated[rows_here] if len(frame) else False,
                    ID_REPEATED_COLUMN: repeated_ids[rows_here] if len(frame) else False,
                }
            )
            name = f"{dataset}.{split}" if index == 0 else f"{dataset}.{split}.{index}"
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
            parts.append([describe_outcome(outcome, flagged) for outcome in ordered])
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

    def build_docs(self) -> None:
        self.context.build_data_docs(site_names=[DOCS_SITE])


def merge_outcomes(batches: list[dict[str, Any]], mostly: float | None, params: ValidateParams) -> dict[str, Any]:
    """One expectation's result over a whole split from its results on the split's batches.

    Counts add up; an expectation with ``mostly`` passes on the share over all rows (as GX computes it: over
    the non-missing ones), any other passes when every batch passed.
    """
    if len(batches) == 1:
        return batches[0]
    first = batches[0]
    observed: dict[str, Any] = {}
    for key in ("element_count", "unexpected_count", "missing_count"):
        if any(key in batch["observed"] for batch in batches):
            observed[key] = sum(batch["observed"].get(key) or 0 for batch in batches)
    counted = observed.get("element_count", 0) - observed.get("missing_count", 0)
    if "unexpected_count" in observed:
        observed["unexpected_percent"] = 100 * observed["unexpected_count"] / counted if counted else 0.0
    failed = [batch for batch in batches if not batch["success"]]
    if first["expectation"] == ROW_COUNT:
        observed["observed_value"] = sum(batch["observed"]["observed_value"] for batch in batches)
    elif any("observed_value" in batch["observed"] for batch in batches):
        observed["observed_value"] = (failed or batches)[0]["observed"].get("observed_value")
    if mostly is not None and "unexpected_count" in observed and not any(batch["error"] for batch in batches):
        success = not counted or (counted - observed["unexpected_count"]) / counted >= mostly
    else:
        success = not failed
    failing_rows = [row for batch in batches for row in batch["failing_rows"]][: params.failed_rows_shown]
    return {
        **first,
        "success": success,
        "observed": observed,
        "failing_rows": failing_rows if not success else [],
        "error": next((batch["error"] for batch in batches if batch["error"]), None),
    }


def describe_outcome(outcome: ExpectationValidationResult, frame: pd.DataFrame) -> dict[str, Any]:
    """One expectation's result as plain data, with the offending rows read back from ``frame``."""
    config = outcome.expectation_config
    kwargs = config.kwargs
    columns = kwargs.get("column_list") or ([kwargs["column"]] if "column" in kwargs else [])
    named = (config.meta or {}).get("shown_columns", columns)
    shown = [column for column in dict.fromkeys([*ID_COLUMNS, *named]) if column in frame]
    indices = [] if outcome.success else outcome.result.get("partial_unexpected_index_list") or []
    return {
        "expectation": config.type,
        "columns": list(columns),
        "description": config.description,
        "success": bool(outcome.success),
        "observed": {key: json_ready(outcome.result[key]) for key in OBSERVED_KEYS if key in outcome.result},
        "failing_rows": [
            {"row": json_ready(index), "values": {column: json_ready(frame.at[index, column]) for column in shown}}
            for index in indices
        ],
        "error": exception_message(outcome),
    }


def exception_message(outcome: ExpectationValidationResult) -> str | None:
    """Why GX could not evaluate an expectation (e.g. its column is missing), if it could not.

    GX reports either one ``{raised_exception, exception_message}`` dict or one per failed metric.
    """
    info = outcome.exception_info or {}
    reports = [info] if "raised_exception" in info else list(info.values())
    messages = [report.get("exception_message") for report in reports if isinstance(report, dict)]
    return next((message for message in messages if message), None)


def describe_failures(split_result: dict[str, Any]) -> list[str]:
    """One readable sentence per failed expectation of a ``SplitValidator.validate`` result."""
    lines = []
    for outcome in split_result["expectations"]:
        if outcome["success"]:
            continue
        where = f"{split_result['dataset']}/{split_result['split']} ({split_result['file']})"
        what = f"{outcome['expectation']}({', '.join(outcome['columns'])})"
        observed = outcome["observed"]
        if outcome["error"]:
            how = f"could not be evaluated: {outcome['error'].rstrip('.')}"
        elif "unexpected_count" in observed:
            how = f"failed for {observed['unexpected_count']} of {split_result['rows']} rows"
        elif "observed_value" in observed:
            how = f"failed (observed {_shorten(observed['observed_value'])})"
        else:
            how = "failed"
        line = f"{where}: {what} {how}"
        if outcome["description"]:
            line += f" [{outcome['description']}]"
        if outcome["failing_rows"]:
            rows = "; ".join(
                f"row {failing['row']}: "
                + ", ".join(f"{column}={_shorten(value)}" for column, value in failing["values"].items())
                for failing in outcome["failing_rows"]
            )
            line += f"; e.g. {rows}"
        lines.append(line)
    return lines


def _shorten(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN_TEXT_CHARS else text[: SHOWN_TEXT_CHARS - 3] + "..."
