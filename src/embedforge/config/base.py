"""The base every params section shares."""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


def loose_number(annotation: Any, value: Any) -> str | None:
    """Why ``value`` is no number where ``annotation`` wants one, when pydantic's lax mode would take it anyway:
    a bool (``limit: true`` would count as 1) or, for a count, text (``"5"``). A float may come as text:
    YAML 1.1 reads ``1e-4`` as a string."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return loose_number(args[0], value)
    if origin in (Union, types.UnionType):
        if bool in args or (str in args and isinstance(value, str)):
            return None
        return next((why for arg in args if (why := loose_number(arg, value))), None)
    if annotation in (int, float) and isinstance(value, bool):
        return "must be a number, not true or false"
    if annotation is int and isinstance(value, str):
        return "must be a whole number, not text"
    if origin in (list, tuple) and isinstance(value, (list, tuple)) and args:
        element = args[0] if origin is list or (len(args) == 2 and args[1] is Ellipsis) else None
        pairs = [(element, item) for item in value] if element else list(zip(args, value, strict=False))
        return next((why for arg, item in pairs if (why := loose_number(arg, item))), None)
    if origin is dict and isinstance(value, dict):
        return next((why for item in value.values() if (why := loose_number(args[1], item))), None)
    return None


class Section(BaseModel):
    """Base of every params section: unknown keys are errors, not silently ignored, and a count, size or rate
    must be written as a number (see ``loose_number``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        why = loose_number(cls.model_fields[info.field_name].annotation, value)
        if why:
            raise ValueError(why)
        return value
