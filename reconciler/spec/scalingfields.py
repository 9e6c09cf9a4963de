"""Field types of on-demand models: the bounds of a ``replicas: {min, max}`` range, and the defaults of ``scaling``.

The defaults are those of ``desired.Scaling``, read from it, so the spec, its JSON Schema and the planner can never
disagree about them.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from pydantic import PlainValidator, WithJsonSchema

from reconciler.desired import Scaling
from reconciler.spec.fields import whole_number

# `replicas` is a count or a range; pydantic tells them apart by these tags and adds the tag to the location of an
# error. Users never write them, so messages leave them out of the path.
COUNT, RANGE = "<count>", "<range>"
UNION_TAGS = frozenset({COUNT, RANGE})


def replicas_kind(value: Any) -> str:
    return RANGE if isinstance(value, dict) else COUNT


def _range_max(value: Any) -> int:
    if value == "max" and isinstance(value, str):
        raise ValueError(
            'a range needs a number for max: "max" alone (as many as fit) is a replicas value of its own, so write '
            "replicas: max, or bound the range, such as {min: 0, max: 4}"
        )
    if value == 0 and not isinstance(value, bool):
        raise ValueError("must be 1 or more: for a model that should not run, write replicas: 0 instead of a range")
    return whole_number(value, 1)


RangeMax = Annotated[int, PlainValidator(_range_max), WithJsonSchema({"type": "integer", "minimum": 1})]


def scaling_default(name: str) -> int:
    """The default of one ``desired.Scaling`` field, written there once."""
    return next(f.default for f in dataclasses.fields(Scaling) if f.name == name)
