"""Spec and site models that read ``true``/``false`` as a boolean only.

pydantic's lax mode reads ``true`` as 1 where an int or float belongs, so ``num_classes: true``
trained a one-class model and ``fps: true`` timed a camera at one frame per second, without a
word. OmegaConf, which TAO reads specs with, refuses a boolean for a number too. Text that
spells a number (``num_epochs: "3"``) is still read as the number, as OmegaConf reads it.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationInfo, field_validator

NOT_A_BOOLEAN = "a number, not true/false"


def wants_number(annotation: Any) -> bool:
    """Whether a field of this type takes numbers and no boolean (``int``, ``float | None``,
    ``list[int]``, ``Annotated[float, ...]``, ``Literal[0, 1]``: lax mode matches ``true``
    to the literal 1)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return all(type(arg) in (int, float) for arg in args)
    if origin is Annotated:
        return wants_number(args[0])
    if origin in (Union, types.UnionType):
        return bool not in args and any(wants_number(arg) for arg in args)
    if origin in (list, tuple):
        return bool(args) and all(wants_number(arg) for arg in args if arg is not Ellipsis)
    return annotation in (int, float)


class NumbersNotBooleans(BaseModel):
    """Base of the models users write in YAML: a boolean given for a number is refused."""

    @field_validator("*", mode="before")
    @classmethod
    def _refuse_booleans(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is None or not wants_number(field.annotation):
            return value
        items = value if isinstance(value, list | tuple) else [value]
        if any(isinstance(item, bool) for item in items):
            raise ValueError(NOT_A_BOOLEAN)
        return value
