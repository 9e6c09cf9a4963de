"""Field types only Jobs use: a cron schedule, a working directory inside the spec directory and the environment.
Each validates with a sentence a user can act on and carries the JSON Schema editors check against. (Durations, which
Jobs share with on-demand scaling, are in ``reconciler.spec.durations``.)"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Any

from croniter import croniter
from pydantic import PlainValidator, WithJsonSchema

from reconciler.spec.fields import describe


def _schedule(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f'a schedule is a cron expression in quotes, such as "0 2 * * *", not {describe(value)}')
    if len(value.split()) != 5 or not croniter.is_valid(value):
        raise ValueError(
            f"`{value}` is not a cron schedule: write five fields (minute hour day-of-month month day-of-week), "
            'such as "0 2 * * *" for every night at 02:00'
        )
    never = _never_fires(value)
    if never:
        raise ValueError(f"`{value}` never fires: {never}")
    return value


MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
LONGEST = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February has a 29th in leap years
# Searching from a fixed moment, not the clock: whether a schedule ever fires does not depend on when it is read.
SEARCH_FROM = 946_684_800.0  # 2000-01-01 UTC


def _never_fires(value: str) -> str:
    """Why a well-formed schedule never fires ("February has no 30th"), or "" when it does."""
    from croniter import CroniterError

    _, _, days, months, weekdays = croniter(value).expanded
    if weekdays == ["*"] and all(isinstance(d, int) for d in days):
        chosen = list(range(1, 13)) if months == ["*"] else [m for m in months if isinstance(m, int)]
        if chosen and all(d > LONGEST[m - 1] for d in days for m in chosen):
            names = [MONTHS[m - 1] for m in chosen]
            which = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
            longest = max(LONGEST[m - 1] for m in chosen)
            return (f"{which} {'have' if len(names) > 1 else 'has'} no " + " or ".join(_ordinal(d) for d in days)
                    + f"; choose a day up to the {_ordinal(longest)}, or other months")
    try:
        croniter(value, SEARCH_FROM).get_next(float)
    except (CroniterError, ValueError, OverflowError):
        return "no date matches all its fields; check the day-of-month and month fields together"
    return ""


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


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
