"""The model families a student can be (``model.kind``), each a ``Family`` plugin.

A new family is one module with a ``Family`` subclass (and its ``model.<kind>`` params section, if it has
knobs) plus one line in pyproject.toml's ``embedforge.model_kinds`` entry points; ``register`` adds one at
run time (a test does, from its own file). The registry lives with the schema (``config.model``), which takes
``model.kind``'s choices and the family sections from it. Loading a family imports no torch: the families
import their models inside their hooks.
"""

from __future__ import annotations

from embedforge.config.model import FAMILIES, families, register
from embedforge.errors import UserError
from embedforge.families.base import Family

__all__ = ["FAMILIES", "Family", "family", "register"]


def family(kind: str) -> Family:
    """The family of ``model.kind``."""
    try:
        return families()[kind]
    except KeyError:
        raise UserError(f"model.kind: no family {kind!r}; choose one of {', '.join(FAMILIES)}") from None
