"""Credentials stay in the process: a user name and password (or a token) inside a URL is masked wherever
params or messages are written down: MLflow params, params.resolved.yaml, the report, logs and warnings."""

from __future__ import annotations

import re
from typing import Any

USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
MASK = "***"


def redact(text: str) -> str:
    """``https://user:secret@host/x`` as ``https://***@host/x``; text without credentials is unchanged."""
    return USERINFO.sub(lambda match: f"{match['scheme']}{MASK}@", text)


def redacted(tree: Any) -> Any:
    """A copy of nested dicts and lists with every string redacted."""
    if isinstance(tree, dict):
        return {key: redacted(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [redacted(value) for value in tree]
    return redact(tree) if isinstance(tree, str) else tree
