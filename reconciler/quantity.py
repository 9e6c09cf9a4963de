"""Memory quantities: what users write (``24Gi``, ``24GB``, ``1.5Gi``) to integer bytes, and bytes back to text.

Kubernetes quantity syntax plus the spellings people write anyway (``24GiB``, ``24gb``). Decimal prefixes are powers
of 1000 and binary ones (``Ki``, ``Mi``...) powers of 1024, as in Kubernetes. A bare number is refused: ``vram: 24``
could mean GiB or GB (a 7 % difference on a 24 GB card), so the user must say which.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_CEILING, Decimal, InvalidOperation

PREFIXES = "KMGTPE"

# Every accepted suffix spelling, mapped to its multiplier. Two- and three-letter forms are accepted in any case
# (`gb`, `GiB`, `gib`); single letters only as Kubernetes writes them, because lowercase `m` means thousandths there
# and a lone `g` means GiB to Docker but GB to Kubernetes.
SUFFIXES: dict[str, int] = {"": 1, "B": 1, "k": 1000, "K": 1000}
for _power, _letter in enumerate(PREFIXES, start=1):
    SUFFIXES[_letter] = 1000**_power
    SUFFIXES[_letter + "B"] = 1000**_power
    SUFFIXES[_letter + "I"] = 1024**_power
    SUFFIXES[_letter + "IB"] = 1024**_power

# The largest quantity accepted: anything above is a typo, and it keeps every figure within a signed 64-bit integer.
MAX_BYTES = 2**63 - 1

_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_SHAPE = re.compile(rf"^(?P<sign>[+-]?)(?P<number>{_NUMBER}) ?(?P<suffix>[A-Za-z]*)$")


def _case_insensitive(text: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in text)


def _suffix_pattern() -> str:
    single = ["k", "B", *PREFIXES]
    multi = [f"{p}{rest}" for p in PREFIXES for rest in ("B", "I", "IB")] + ["KB"]
    alternatives = sorted({_case_insensitive(s) for s in multi}, key=lambda s: (-len(s), s)) + single
    return "(?:" + "|".join(alternatives) + ")"


# The same grammar as a JSON Schema (ECMA 262) pattern, for editors; `0` needs no unit.
JSON_PATTERN = rf"^\+?{_NUMBER} ?{_suffix_pattern()}$"


class QuantityError(ValueError):
    """A quantity that cannot be read; the message is a sentence the user can act on."""


def _multiplier(suffix: str, number: str, text: str) -> int:
    if len(suffix) >= 2:
        key = suffix.upper()
        if key in SUFFIXES:
            return SUFFIXES[key]
    elif suffix in SUFFIXES:
        return SUFFIXES[suffix]
    if suffix in ("m", "g", "t", "p", "e"):
        upper = suffix.upper()
        raise QuantityError(f"`{text}` is ambiguous: write {number}{upper}i ({upper}iB) or {number}{upper} ({upper}B)")
    raise QuantityError(
        f"`{text}` has an unknown unit `{suffix}`: use Ki, Mi, Gi, Ti (powers of 1024) or k, M, G, T (powers of 1000)"
    )


def parse_quantity(value: object) -> int:
    """Bytes as an integer; fractions of a byte round up, so a reservation is never smaller than asked."""
    if isinstance(value, bool) or value is None:
        raise QuantityError(f"`{value}` is not a memory quantity: write it like 24Gi or 512Mi")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise QuantityError(f"`{value}` is not a memory quantity: write it like 24Gi or 512Mi")
        if value == 0:
            return 0
        if value < 0:
            raise QuantityError(f"`{value}` is negative: memory quantities must be 0 or more")
        raise QuantityError(f"`{value}` has no unit: write {value}Gi (GiB) or {value}G (GB)")
    if not isinstance(value, str):
        raise QuantityError(f"a memory quantity must be text like 24Gi, not {type(value).__name__}")
    match = _SHAPE.match(value)
    if match is None:
        raise QuantityError(f"`{value}` is not a memory quantity: write it like 24Gi, 512Mi or 1.5G")
    suffix = match["suffix"]
    multiplier = _multiplier(suffix, match["number"], value)
    try:
        number = Decimal(match["number"])
    except InvalidOperation as exc:  # the pattern admits only digits and one dot; kept as a guard
        raise QuantityError(f"`{value}` is not a memory quantity: write it like 24Gi") from exc
    if match["sign"] == "-":
        raise QuantityError(f"`{value}` is negative: memory quantities must be 0 or more")
    if suffix == "" and number != 0:
        shown = match["number"]
        raise QuantityError(f"`{value}` has no unit: write {shown}Gi (GiB) or {shown}G (GB)")
    result = int((number * multiplier).to_integral_value(rounding=ROUND_CEILING))
    if result > MAX_BYTES:
        raise QuantityError(f"`{value}` is too large: at most 8Ei")
    return result


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_bytes(n: int) -> str:
    """For people: binary units, at most two decimals, trailing zeros dropped ("9.5 GiB", "512 MiB", "0 B")."""
    sign = "-" if n < 0 else ""
    size = abs(n)
    exponent = 0
    while exponent + 1 < len(_UNITS) and size >= 1024 ** (exponent + 1):
        exponent += 1
    scaled = round(Decimal(size) / (1024**exponent), 2)
    # 1 GiB minus a byte rounds to "1024 MiB": show it as "1 GiB" instead.
    if scaled >= 1024 and exponent + 1 < len(_UNITS):
        exponent += 1
        scaled = round(Decimal(size) / (1024**exponent), 2)
    text = f"{scaled:.2f}".rstrip("0").rstrip(".")
    return f"{sign}{text} {_UNITS[exponent]}"


__all__ = ["JSON_PATTERN", "MAX_BYTES", "QuantityError", "format_bytes", "parse_quantity"]
