"""Field types of the spec models: each validates one kind of value with a message a user can act on.

Each type is an ``Annotated`` with a plain validator (so pydantic's generic wording never reaches the user) and the
JSON Schema editors and CI validate against (so the schema and the loader accept the same values).
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Annotated, Any

from pydantic import PlainValidator, WithJsonSchema

from reconciler.quantity import JSON_PATTERN, QuantityError, parse_quantity

NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
NAME_MAX = 63
ROUTE_PATTERN = r"^/([A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*)?$"
ZERO_PATTERN = r"^\+?(0+(\.0*)?|\.0+)$"


def describe(value: Any) -> str:
    """How a wrong value is named in messages: its text for scalars, its shape for collections."""
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"`{value}`"


def suggestion(word: object, choices: list[str] | tuple[str, ...]) -> str | None:
    """The choice the user most likely meant, if one is close enough."""
    if not isinstance(word, str):
        return None
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not close:
        close = [c for c in choices if c.lower() == word.lower()]
    return close[0] if close else None


def _name(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"a name must be text, not {describe(value)}")
    if len(value) > NAME_MAX or not re.match(NAME_PATTERN, value):
        hint = re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")[:NAME_MAX].strip("-")
        better = f"; for example `{hint}`" if hint and hint != value else ""
        raise ValueError(
            f"`{value}` is not a valid name: use at most {NAME_MAX} lowercase letters, digits and '-', "
            f"starting and ending with a letter or digit{better}"
        )
    return value


def _quantity(value: Any) -> int:
    if value is None:
        raise ValueError("no value given: write a quantity like 24Gi or 512Mi")
    try:
        return parse_quantity(value)
    except QuantityError as exc:
        raise ValueError(str(exc)) from None


def _replicas(value: Any) -> int | None:
    if value == "max" and isinstance(value, str):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"replicas must be 0 or more, not {value}")
        return value
    if isinstance(value, str) and value.strip().isdigit():
        raise ValueError(f'replicas must be a number, not the text "{value}": remove the quotes')
    raise ValueError(f'replicas must be a whole number, "max" or a range {{min, max}}, not {describe(value)}')


def _route(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"a route must be text like /chat, not {describe(value)}")
    if not re.match(ROUTE_PATTERN, value):
        raise ValueError(
            f"`{value}` is not a valid route: it must start with '/' and hold path segments of letters, digits "
            "and . _ ~ -, without a trailing '/' (for example /chat or /team/chat)"
        )
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, not {describe(value)}: put it in quotes")
    return value


def _nonempty_text(value: Any) -> str:
    text = _text(value)
    if not text.strip():
        raise ValueError("this must not be empty")
    return text


def whole_number(value: Any, minimum: int | None = None) -> int:
    """``value`` if it is a whole number (never a bool, a float or quoted text) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            raise ValueError(f'expected a number, not the text "{value}": remove the quotes')
        raise ValueError(f"expected a whole number, not {describe(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"must be {minimum} or more, not {value}")
    return value


def integer(*, minimum: int | None = None) -> Any:
    """A whole number (never a bool, a float or quoted text), at least ``minimum``."""

    def validate(value: Any) -> int:
        return whole_number(value, minimum)

    schema: dict[str, Any] = {"type": "integer"}
    if minimum is not None:
        schema["minimum"] = minimum
    return Annotated[int, PlainValidator(validate), WithJsonSchema(schema)]


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, not {describe(value)}")
    return value


def _string_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of text to text, not {describe(value)}")
    for key, item in value.items():
        if not isinstance(item, str):
            raise ValueError(f"the value of `{key}` must be text, not {describe(item)}: put it in quotes")
    return dict(value)


def _non_finite(value: Any, where: str) -> str | None:
    """Where a NaN or infinity hides in nested data: JSON, and so the engine, cannot carry one."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def _json_mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping, not {describe(value)}")
    where = _non_finite(value, "")
    if where is not None:
        raise ValueError(f"`{where}` is not a finite number; JSON cannot carry NaN or infinity")
    return value


def choice(*values: str, description: str) -> Any:
    """One of a few words; a near miss gets a "did you mean"."""

    def validate(value: Any) -> str:
        if isinstance(value, str) and value in values:
            return value
        allowed = " | ".join(values)
        if isinstance(value, str):
            close = suggestion(value, values)
            if close:
                raise ValueError(f"`{value}` is not one of {allowed}; did you mean `{close}`?")
        raise ValueError(f"{describe(value)} is not one of {allowed}")

    schema = {"type": "string", "enum": list(values), "description": description}
    return Annotated[str, PlainValidator(validate), WithJsonSchema(schema)]


Name = Annotated[
    str,
    PlainValidator(_name),
    WithJsonSchema({"type": "string", "pattern": NAME_PATTERN, "maxLength": NAME_MAX}),
]
Quantity = Annotated[
    int,
    PlainValidator(_quantity),
    WithJsonSchema(
        {
            "description": "Memory: 24Gi, 512Mi, 1.5Gi (powers of 1024) or 24G, 24GB (powers of 1000); 0 needs no unit",
            "anyOf": [
                {"type": "string", "pattern": JSON_PATTERN},
                {"type": "string", "pattern": ZERO_PATTERN},
                {"type": "number", "const": 0},
            ],
        }
    ),
]
AUTO = "auto"


def _vram(value: Any) -> int | str:
    if value == AUTO and isinstance(value, str):
        return AUTO
    if value is None:
        raise ValueError("no value given: write a quantity like 24Gi or 512Mi, or auto to size it from the model")
    return _quantity(value)


# A model's memory: a figure, or `auto` (sized from the model's files, reconciler.sizing).
Vram = Annotated[
    int | str,
    PlainValidator(_vram),
    WithJsonSchema(
        {
            "description": "Memory per GPU: 24Gi, 512Mi, 1.5Gi (powers of 1024) or 24G, 24GB (powers of 1000); or "
            "auto: sized from the model's weights, KV cache and measured overheads",
            "anyOf": [
                {"type": "string", "pattern": JSON_PATTERN},
                {"type": "string", "pattern": ZERO_PATTERN},
                {"type": "number", "const": 0},
                {"type": "string", "const": AUTO},
            ],
        }
    ),
]
Replicas = Annotated[
    int | None,
    PlainValidator(_replicas),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "const": "max"}]}),
]
Route = Annotated[str, PlainValidator(_route), WithJsonSchema({"type": "string", "pattern": ROUTE_PATTERN})]
Text = Annotated[str, PlainValidator(_text), WithJsonSchema({"type": "string"})]
NonEmptyText = Annotated[str, PlainValidator(_nonempty_text), WithJsonSchema({"type": "string", "pattern": r"\S"})]
Boolean = Annotated[bool, PlainValidator(_boolean), WithJsonSchema({"type": "boolean"})]
StringMap = Annotated[
    dict[str, str],
    PlainValidator(_string_map),
    WithJsonSchema({"type": "object", "additionalProperties": {"type": "string"}}),
]
JsonMapping = Annotated[dict[str, Any], PlainValidator(_json_mapping), WithJsonSchema({"type": "object"})]


SHA256_PATTERN = r"^[0-9a-f]{64}$"


def _sha256(value: Any) -> str:
    if not isinstance(value, str) or not re.match(SHA256_PATTERN, value):
        raise ValueError(
            f"{describe(value)} is not a SHA-256 hash: write the 64 lowercase hex digits `reconciler keys new` "
            "prints, never the key itself"
        )
    return value


def _model_selector(value: Any) -> str:
    if value == "*":
        return value
    return _name(value)


Sha256 = Annotated[str, PlainValidator(_sha256), WithJsonSchema({"type": "string", "pattern": SHA256_PATTERN})]
ModelSelector = Annotated[
    str,
    PlainValidator(_model_selector),
    WithJsonSchema({"anyOf": [{"const": "*"}, {"type": "string", "pattern": NAME_PATTERN, "maxLength": NAME_MAX}]}),
]
