"""The validation gate: a later stage refuses raw data that `embedforge validate` did not pass.

Its own small module, so a gated stage reads data/validation/results.json (which dvc.yaml
declares as its dependency) without importing the validate stage and Great Expectations.
"""

from __future__ import annotations

import json
from pathlib import Path

from embedforge.errors import UserError
from embedforge.paths import VALIDATION_RESULTS_PATH


def require_passed(path: Path = VALIDATION_RESULTS_PATH) -> None:
    """Stop a later stage from using raw data that has not passed validation."""
    if not path.is_file():
        raise UserError(f"{path}: no validation results: run `embedforge validate` first")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable validation results ({exc}): run `embedforge validate` again") from None
    if not isinstance(results, dict) or results.get("success") is not True:
        summary = results.get("summary", "") if isinstance(results, dict) else ""
        raise UserError(
            f"{path}: raw data failed validation: fix the data and run `embedforge validate` again. {summary}".strip()
        )
