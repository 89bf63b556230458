"""Great Expectations' results as plain data: one dict per expectation, merged over a split's batches, and
one readable sentence per failure."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from great_expectations.core.expectation_validation_result import ExpectationValidationResult

from embedforge.config import ValidateParams
from embedforge.data.row_hashes import ID_COLUMNS

OBSERVED_KEYS = ("observed_value", "element_count", "unexpected_count", "unexpected_percent", "missing_count")
SHOWN_TEXT_CHARS = 80
ROW_COUNT = "expect_table_row_count_to_be_between"  # its batches' observed counts add up to the split's


def json_ready(value: Any) -> Any:
    """A JSON-ready copy of a value from pandas or GX: numpy scalars unwrapped, NaN as None."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):  # an array: a list cell (a query's relevant ids) as read
        return [json_ready(item) for item in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return None if pd.isna(value) else str(value)


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
