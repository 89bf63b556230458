"""Params keys that were renamed: an old key is refused, naming its new one, rather than read as unknown.

One table, so that a params migration can rewrite what this refuses.
"""

from __future__ import annotations

from typing import Any

from embedforge.config.overrides import flatten, parse_override
from embedforge.errors import UserError

RENAMED_KEYS: dict[str, str] = {
    "train.stsb_min_score": "train.similar_min_score",
}


def renamed(key: str) -> str | None:
    """Why dotted ``key`` is refused, if it is (or lies under) a renamed key."""
    for old, new in RENAMED_KEYS.items():
        if key == old or key.startswith(f"{old}."):
            return f"{old} was renamed {new}"
    return None


def refuse_renamed_keys(source: Any, tree: dict[str, Any], overrides: list[str]) -> None:
    """A UserError for the first renamed key in the params file ``source`` (``tree``) or in ``--set``."""
    for key in flatten(tree):
        if why := renamed(key):
            raise UserError(f"{source}: {why}")
    for item in overrides:
        if why := renamed(".".join(parse_override(item)[0])):
            raise UserError(f"--set {item!r}: {why}")
