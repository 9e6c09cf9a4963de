"""Field types only Jobs use: a duration (``2h``), a cron schedule, a working directory inside the spec directory and
an entrypoint. Each validates with a sentence a user can act on and carries the JSON Schema editors check against."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Any

from croniter import croniter
from pydantic import PlainValidator, WithJsonSchema

from reconciler.spec.fields import describe

DURATION_PATTERN = r"^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> int:
    """Seconds in ``1h30m``, ``45s``, ``2d``; raises ValueError with a sentence for anything else."""
    if not text or not re.match(DURATION_PATTERN, text):
        raise ValueError(f"`{text}` is not a duration: write whole numbers with d, h, m or s, such as 2h, 90m or 1h30m")
    return sum(int(amount) * _UNITS[unit] for amount, unit in re.findall(r"([0-9]+)([dhms])", text))


def _duration(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"a duration is text such as 2h or 90m, not {describe(value)}")
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"`{value}` is no time at all: give a duration above zero, such as 30m")
    return seconds


def _schedule(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f'a schedule is a cron expression in quotes, such as "0 2 * * *", not {describe(value)}')
    if len(value.split()) != 5 or not croniter.is_valid(value):
        raise ValueError(
            f"`{value}` is not a cron schedule: write five fields (minute hour day-of-month month day-of-week), "
            'such as "0 2 * * *" for every night at 02:00'
        )
    return value


def _working_dir(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"workingDir is a folder relative to the spec directory, not {describe(value)}")
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(
            f"`{value}` leaves the spec directory: give a folder inside it, such as jobs/embed, so it travels "
            "with the specs"
        )
    return path.as_posix()


def _env(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"env is a mapping of variable names to text, not {describe(value)}")
    for key, item in value.items():
        if not isinstance(key, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise ValueError(f"`{key}` is not an environment variable name: use letters, digits and _")
        if not isinstance(item, str):
            raise ValueError(f"the value of `{key}` must be text, not {describe(item)}: put it in quotes")
    return dict(value)


Duration = Annotated[
    int,
    PlainValidator(_duration),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "description": "A duration: 2h, 90m, 1h30m, 45s."}),
]
Schedule = Annotated[
    str,
    PlainValidator(_schedule),
    WithJsonSchema({"type": "string", "pattern": r"^\S+( \S+){4}$", "description": "Five-field cron expression."}),
]
WorkingDir = Annotated[str, PlainValidator(_working_dir), WithJsonSchema({"type": "string", "pattern": r"^[^/]"})]
EnvMap = Annotated[
    dict[str, str],
    PlainValidator(_env),
    WithJsonSchema(
        {"type": "object", "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
         "additionalProperties": {"type": "string"}}
    ),
]
