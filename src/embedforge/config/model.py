"""The params of the student model: the knobs every family reads, and each family's own section.

``model.kind``'s choices and the family sections (``model.lattice``, ``model.dynamic``, ...) come from the
family registry below: a new family is a choice here without an edit to this module. The built-in families
(and any another package installs) are entry points of the ``embedforge.model_kinds`` group, declared in
pyproject.toml, loaded the first time the registry is read; ``register`` adds one at run time. So config, the
bottom layer, imports nothing above it. A family module imports only ``config.base`` when it loads (no torch).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Annotated, Any, Literal

from pydantic import Field, create_model, field_validator, model_validator

from embedforge.config.base import Section

ENTRY_POINT_GROUP = "embedforge.model_kinds"
DEFAULT_KIND = "encoder"
FAMILIES: dict[str, Any] = {}  # model.kind -> its families.base.Family plugin


def register(family: Any) -> Any:
    """Make ``family`` (a ``families.base.Family``) a choice of ``model.kind``."""
    FAMILIES[family.kind] = family
    return family


def families() -> dict[str, Any]:
    """The registered model families by ``model.kind``, the installed ones loaded on first use."""
    if not FAMILIES:  # the default kind first, then by name: installed metadata keeps no declared order
        for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name != DEFAULT_KIND, e.name)):
            register(entry.load()())
    if not FAMILIES:
        raise ImportError(
            f"no model family is registered (entry point group {ENTRY_POINT_GROUP}): install embedforge "
            f"(pip install -e .) rather than putting its source on the path"
        )
    return FAMILIES


def choices(names: list[str]) -> str:
    quoted = [repr(name) for name in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


class CommonModelParams(Section):
    """The knobs every family reads: its kind, the transformer shape, how it starts."""

    kind: str = DEFAULT_KIND
    hidden_size: int = Field(default=384, gt=0)
    num_layers: int = Field(default=6, gt=0)
    num_heads: int = Field(default=12, gt=0)
    intermediate_size: int = Field(default=1536, gt=0)
    max_positions: int = Field(default=512, ge=8)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    attention: Literal["sdpa", "eager"] = Field(
        default="sdpa",
        description="The attention kernel: torch's scaled_dot_product_attention, or the plain matmul-softmax one.",
    )
    init: Literal["scratch", "teacher_layers", "teacher_tokens"] = "teacher_layers"
    teacher_layers: list[Annotated[int, Field(ge=0)]] = [0, 1, 2, 3, 4, 5]

    @field_validator("kind")
    @classmethod
    def _a_registered_family(cls, kind: str) -> str:
        if kind not in families():
            raise ValueError(f"input should be {choices(list(families()))}")
        return kind

    @model_validator(mode="after")
    def _init_fits_kind(self) -> CommonModelParams:
        """Each family starts from its own ``inits``; one that only another family has is named as theirs."""
        family = families()[self.kind]
        if self.init in family.inits:
            return self
        use = " or ".join(family.inits)
        owner = next((other for other in families().values() if self.init in other.init_descriptions), None)
        if owner is None:
            raise ValueError(f"model.init: a {self.kind} student starts from {use}")
        raise ValueError(
            f"model.init: {self.init} {owner.init_descriptions[self.init]} (model.kind: {owner.kind}), "
            f"not the {self.kind} family; use {use}"
        )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> CommonModelParams:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"model.hidden_size ({self.hidden_size}) must be divisible by model.num_heads ({self.num_heads})"
            )
        return self

    @model_validator(mode="after")
    def _one_teacher_layer_per_layer(self) -> CommonModelParams:
        """With ``init: teacher_layers`` student layer i starts as teacher layer ``teacher_layers[i]`` (a family
        without layers, such as the lattice, copies only the teacher's token embeddings)."""
        if self.init != "teacher_layers" or not families()[self.kind].copies_teacher_layers:
            return self
        if len(self.teacher_layers) != self.num_layers:
            raise ValueError(
                f"model.teacher_layers ({self.teacher_layers}) must name one teacher layer per student layer: "
                f"{len(self.teacher_layers)} given but model.num_layers is {self.num_layers}"
            )
        if len(set(self.teacher_layers)) != len(self.teacher_layers):
            raise ValueError(f"model.teacher_layers ({self.teacher_layers}) must not repeat a layer")
        return self


ModelParams = create_model(
    "ModelParams",
    __base__=CommonModelParams,
    __doc__="The model section: the common knobs and one section per registered family that has knobs.",
    **{kind: (family.params, family.params()) for kind, family in families().items() if family.params is not None},
)
