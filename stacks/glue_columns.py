"""Glue (Athena) column types derived from the audit records' pydantic models.

The archive holds the records as the models dump them to JSON, so the tables' columns are
computed from the models, never written out by hand: a field added to AuditEvent is a
column at the next synth, and a field of a type with no mapping here stops the synth.
"""

from __future__ import annotations

import types
from datetime import datetime
from enum import Enum
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

# bool before int: bool is a subclass of int.
_SCALARS: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "bigint"),
    (float, "double"),
    (str, "string"),  # StrEnum members are str too
    # ISO 8601 text, as the JSON holds it; queries use from_iso8601_timestamp.
    (datetime, "string"),
)


class UnmappedFieldType(TypeError):
    """A model field's type has no Glue equivalent here; the message names the field."""


def athena_type(annotation: Any, *, where: str) -> str:
    """The Hive/Athena type of a field annotated ``annotation`` (``where`` names it)."""
    origin = get_origin(annotation)
    arguments = get_args(annotation)
    if origin in (Union, types.UnionType):
        present = [argument for argument in arguments if argument is not type(None)]
        if len(present) != 1:
            raise UnmappedFieldType(
                f"{where}: a union of {present} has no single Glue type; give the field one "
                "type (optionally None), or map it in stacks/glue_columns.py"
            )
        return athena_type(present[0], where=where)
    if origin is tuple and len(arguments) == 2 and arguments[1] is Ellipsis:
        return f"array<{athena_type(arguments[0], where=where)}>"
    if origin is dict and len(arguments) == 2:
        key, value = (athena_type(argument, where=where) for argument in arguments)
        return f"map<{key},{value}>"
    if isinstance(annotation, type):
        if issubclass(annotation, BaseModel):
            fields = ",".join(f"{name}:{kind}" for name, kind in glue_columns(annotation))
            return f"struct<{fields}>"
        if issubclass(annotation, Enum) and not issubclass(annotation, str):
            raise UnmappedFieldType(f"{where}: enum {annotation.__name__} is not a str enum")
        for python_type, glue_type in _SCALARS:
            if issubclass(annotation, python_type):
                return glue_type
    raise UnmappedFieldType(
        f"{where}: no Glue type for {annotation!r}; map it in stacks/glue_columns.py"
    )


def glue_columns(model: type[BaseModel]) -> list[tuple[str, str]]:
    """(name, Athena type) of every field of ``model``, in the model's order."""
    return [
        (name, athena_type(field.annotation, where=f"{model.__name__}.{name}"))
        for name, field in model.model_fields.items()
    ]
