"""Dotted keys and nested trees: ``--set train.lr=1e-4`` into the params tree, and the tree back to dotted names.

The same dotted names are what MLflow and DVC show, so a key reads the same on the
command line, in params.yaml's nesting and in the tracking UI.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml

from embedforge.errors import UserError


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``dotted.key=value`` into its key path and a YAML-typed value."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:  # a ReaderError (a control character) has no .problem
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"--set {item!r}: value is not valid YAML ({problem})") from None
    return key.strip().split("."), value


def set_dotted(tree: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``tree[path[0]][path[1]]... = value`` in place, making (or replacing non-mapping) parents as needed."""
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> None:
    """Set every ``dotted.key=value`` of ``overrides`` in ``tree`` in place, later items winning.

    In place, so that a ruamel document keeps its comments and order around the new values.
    """
    for item in overrides:
        key_path, value = parse_override(item)
        set_dotted(tree, key_path, value)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``override`` laid over it, merging nested dicts key by key."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``: the dotted names MLflow and DVC show."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat
