"""The model families a student can be (``model.kind``), each a ``Family`` plugin.

A new family is one module with a ``Family`` subclass (and its ``model.<kind>`` params section, if it has
knobs) plus one line in ``BUILT_IN`` below; ``register`` adds one at run time (a test does, from its own file).
The schema takes ``model.kind``'s choices and the family sections from ``FAMILIES``. Importing this package
loads no torch: the families import their models inside their hooks.
"""

from __future__ import annotations

from embedforge.errors import UserError
from embedforge.families.base import Family
from embedforge.families.dynamic import DynamicFamily
from embedforge.families.encoder import EncoderFamily
from embedforge.families.lattice import LatticeFamily
from embedforge.families.static import StaticFamily

BUILT_IN: tuple[Family, ...] = (EncoderFamily(), LatticeFamily(), DynamicFamily(), StaticFamily())
FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Make ``family`` a choice of ``model.kind``."""
    FAMILIES[family.kind] = family
    return family


def family(kind: str) -> Family:
    """The family of ``model.kind``."""
    try:
        return FAMILIES[kind]
    except KeyError:
        raise UserError(f"model.kind: no family {kind!r}; choose one of {', '.join(FAMILIES)}") from None


for built_in in BUILT_IN:
    register(built_in)
