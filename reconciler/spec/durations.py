"""Durations as users write them (``90s``, ``5m``, ``1h30m``, ``2d``), shared by Jobs and by on-demand scaling."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import PlainValidator, WithJsonSchema

from reconciler.spec.fields import describe

DURATION_PATTERN = r"^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> int:
    """Seconds in ``1h30m``, ``45s``, ``2d``; raises ValueError with a sentence for anything else."""
    if not text or not re.match(DURATION_PATTERN, text):
        raise ValueError(f"`{text}` is not a duration: write whole numbers with d, h, m or s, such as 2h, 90m or 1h30m")
    return sum(int(amount) * _UNITS[unit] for amount, unit in re.findall(r"([0-9]+)([dhms])", text))


def format_duration(seconds: int) -> str:
    """The shortest spelling ``parse_duration`` reads back as ``seconds``: 90 -> 1m30s, 600 -> 10m."""
    parts = []
    for unit, size in _UNITS.items():
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts) or "0s"


def _duration(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"a duration is text such as 2h or 90m, not {describe(value)}")
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError(f"`{value}` is no time at all: give a duration above zero, such as 30m")
    return seconds


Duration = Annotated[
    int,
    PlainValidator(_duration),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "description": "A duration: 2h, 90m, 1h30m, 45s."}),
]
