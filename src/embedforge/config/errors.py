"""Pydantic's validation errors as a user reads them: one ``dotted.key: what is wrong, got value`` per line.

Pydantic names a location as a tuple and a bound as ``greater_than``; people edit
params.yaml by dotted key and think in ``>``, so every message is rewritten that way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from embedforge.errors import UserError

BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def format_error(error: dict[str, Any]) -> str:
    """One pydantic error as ``dotted.key: what is wrong, got value``."""
    loc = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"{loc}: unknown key"
    if error["type"] in BOUNDS:
        name, symbol = BOUNDS[error["type"]]
        message = f"must be {symbol} {error['ctx'][name]}"
    else:
        message = error["msg"].removeprefix("Value error, ")
        message = message[0].lower() + message[1:]
    if not loc or message.startswith(f"{loc}."):
        return message
    if "input" in error and not isinstance(error["input"], dict):
        return f"{loc}: {message}, got {error['input']!r}"
    return f"{loc}: {message}"


def invalid_params(source: Path, exc: ValidationError) -> UserError:
    """Every error of ``exc`` on its own line under ``source``, so one run reports all the bad keys at once."""
    lines = "\n".join(f"  {format_error(error)}" for error in exc.errors())
    return UserError(f"{source}: invalid params\n{lines}")
