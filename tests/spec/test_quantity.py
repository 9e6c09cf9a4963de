"""The quantity parser: every spelling people write, exact bytes, and refusals that say what to write instead."""

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.quantity import JSON_PATTERN, MAX_BYTES, QuantityError, format_bytes, parse_quantity

KI, MI, GI, TI = 1 << 10, 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("512Mi", 512 * MI),
        ("24Gi", 24 * GI),
        ("24G", 24 * 10**9),
        ("1.5Gi", 3 * GI // 2),
        ("100M", 100 * 10**6),
        ("1Ti", TI),
        ("1k", 1000),
        ("1K", 1000),
        ("1Ki", KI),
        ("24GiB", 24 * GI),
        ("24GB", 24 * 10**9),
        ("512MiB", 512 * MI),
        ("512MB", 512 * 10**6),
        ("24gb", 24 * 10**9),
        ("24gib", 24 * GI),
        ("24 GiB", 24 * GI),
        ("1E", 10**18),
        ("2Pi", 2 * (1 << 50)),
        ("0", 0),
        ("0Gi", 0),
        (".5Gi", GI // 2),
        ("+1Gi", GI),
        ("1024B", 1024),
        (0, 0),
        (0.0, 0),
    ],
)
def test_accepted_spellings(text, expected):
    assert parse_quantity(text) == expected


def test_fractional_bytes_round_up_deterministically():
    # 3.89 GiB is 4176855695.36 bytes: a reservation is never smaller than asked.
    assert parse_quantity("3.89Gi") == 4176855696
    assert parse_quantity("0.1Ki") == 103  # 102.4
    assert parse_quantity("1.0000000001k") == 1001


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (24, "`24` has no unit: write 24Gi (GiB) or 24G (GB)"),
        (24.5, "`24.5` has no unit: write 24.5Gi (GiB) or 24.5G (GB)"),
        ("24", "`24` has no unit: write 24Gi (GiB) or 24G (GB)"),
        ("24g", "`24g` is ambiguous: write 24Gi (GiB) or 24G (GB)"),
        ("100m", "`100m` is ambiguous: write 100Mi (MiB) or 100M (MB)"),
        ("-1Gi", "`-1Gi` is negative: memory quantities must be 0 or more"),
        (-3, "`-3` is negative"),
        ("24Xi", "`24Xi` has an unknown unit `Xi`"),
        ("lots", "`lots` is not a memory quantity"),
        ("1e9", "`1e9` is not a memory quantity"),
        (float("nan"), "`nan` is not a memory quantity"),
        (float("inf"), "`inf` is not a memory quantity"),
        (True, "`True` is not a memory quantity"),
        (None, "`None` is not a memory quantity"),
        ([1], "must be text like 24Gi, not list"),
        ("99999999E", "is too large"),
    ],
)
def test_refusals_say_what_to_write(value, message):
    with pytest.raises(QuantityError) as exc:
        parse_quantity(value)
    assert message in str(exc.value)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["Ki", "Mi", "Gi", "KiB", "MiB", "GiB", "k", "M", "G"]))
def test_integers_with_units_are_exact(number, unit):
    multiplier = {"Ki": KI, "Mi": MI, "Gi": GI, "k": 1000, "M": 10**6, "G": 10**9}[unit.removesuffix("B")]
    assert parse_quantity(f"{number}{unit}") == number * multiplier


@given(st.text(max_size=12))
def test_json_pattern_accepts_what_the_parser_accepts(text):
    """The schema must accept every quantity the loader accepts (the zero forms have their own schema branch)."""
    try:
        value = parse_quantity(text)
    except QuantityError:
        return
    assert value == 0 or re.match(JSON_PATTERN, text), text


@given(st.integers(min_value=0, max_value=MAX_BYTES))
def test_parse_never_exceeds_the_limit_and_is_not_negative(n):
    assert 0 <= parse_quantity(f"{n}B") <= MAX_BYTES


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (512 * MI, "512 MiB"),
        (int(9.5 * GI), "9.5 GiB"),
        (GI - 1, "1 GiB"),
        (4176855696, "3.89 GiB"),
        (-GI, "-1 GiB"),
        (24 * 10**9, "22.35 GiB"),
    ],
)
def test_format_bytes(n, text):
    assert format_bytes(n) == text


# Below the limit by more than a rounding step: "8 EiB" itself is one byte over it.
@given(st.integers(min_value=0, max_value=MAX_BYTES // 2))
def test_format_bytes_reads_back_within_a_rounding_step(n):
    number, unit = format_bytes(n).split()
    back = parse_quantity(f"{number}{unit}") if unit != "B" else int(number)
    assert math.isclose(back, n, rel_tol=0.01, abs_tol=1)
