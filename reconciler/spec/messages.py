"""Pydantic's validation errors, rewritten as located sentences a user can act on.

pydantic reports where (``loc``, in the aliases users write) and what (``type``); this module turns each error into
the data path to point at and a sentence that names the field, the wrong value and, for typos, the likely intent.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from reconciler.spec.fields import describe, suggestion
from reconciler.spec.scalingfields import UNION_TAGS

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Problem:
    path: Path
    at_key: bool  # point at the key (a field that should not be there) rather than at the value
    message: str


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``list[Gpu]`` or ``Metadata | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _model_at(root: type[BaseModel], path: Path) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``path`` (list indices are stepped over)."""
    model: type[BaseModel] | None = root
    for part in path:
        if model is None:
            return None
        if isinstance(part, int):
            continue
        field = next((f for name, f in model.model_fields.items() if (f.alias or name) == part), None)
        if field is None:
            return None
        model = _model_of(field.annotation)
    return model


def _aliases(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _label(model: type[BaseModel] | None) -> str:
    return getattr(model, "label", "this mapping") if model is not None else "this mapping"


def _field(path: Path) -> str:
    named = [p for p in path if isinstance(p, str)]
    return f"`{named[-1]}`" if named else "the document"


def translate(root: type[BaseModel], error: ErrorDetails) -> Problem:
    path: Path = tuple(part for part in error["loc"] if part not in UNION_TAGS)
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        parent = _model_at(root, path[:-1])
        key = str(path[-1])
        fields = _aliases(parent) if parent is not None else []
        close = suggestion(key, fields)
        hint = f"did you mean `{close}`?" if close else "fields are: " + ", ".join(fields)
        return Problem(path, True, f"`{key}` is not a field of {_label(parent)}; {hint}")
    if kind == "missing":
        parent = _model_at(root, path[:-1])
        return Problem(path[:-1], True, f"{_label(parent)} needs `{path[-1]}`")
    if kind == "value_error":
        cause = error.get("ctx", {}).get("error")
        message = str(cause) if cause is not None else error["msg"]
        return Problem(path, False, f"{_field(path)}: {message}")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return Problem(path, False, f"{_field(path)} must be a mapping of fields, not {describe(value)}")
    if kind == "list_type":
        return Problem(path, False, f"{_field(path)} must be a list, not {describe(value)}")
    if kind == "too_short":
        return Problem(path, False, f"{_field(path)} needs at least one entry")
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return Problem(path, False, f"{_field(path)} must be {expected}, not {describe(value)}")
    return Problem(path, False, f"{_field(path)}: {error['msg']}")
