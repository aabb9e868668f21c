"""Numbers from untrusted input: whole numbers from text (query parameters, form fields, webhook payloads) and the
numbers of parsed JSON bodies."""

from __future__ import annotations

from typing import Any

MAX_ID = 2**63 - 1  # PostgreSQL bigint: no id is larger, and comparing a column with a larger number is an error


def whole_number(text: Any, maximum: int = MAX_ID) -> int | None:
    """``text`` as an int from 0 to ``maximum`` when it is written in ASCII digits, else None.

    ``str.isdigit()`` alone is not enough before ``int()``: it accepts "²" (which ``int()`` refuses) and numbers of
    any length (``int()`` refuses more than 4,300 digits; PostgreSQL refuses anything past bigint).
    """
    text = str(text)
    if not text.isascii() or not text.isdigit() or len(text) > len(str(maximum)):
        return None
    value = int(text)
    return value if value <= maximum else None


# JSON numbers from a parsed body --------------------------------------------------------------------------------
# Python parses any JSON integer exactly (10**400 included) and "1e400" as infinity. ``float(10**400)``,
# ``math.isfinite(10**400)`` and ``10**400 * 1.0`` raise OverflowError: a bound is checked by comparing, which Python
# does exactly between any int and any float, before anything converts the number.

# The integers every JSON parser holds exactly (I-JSON, RFC 7493 section 2.2; JavaScript's Number.MAX_SAFE_INTEGER).
MAX_SAFE_INTEGER = 2**53 - 1
# Amounts in US dollars above ten million are typos, and must fit the decimal(14, 6) columns.
MAX_USD = 10_000_000


def json_number(value: Any, low: float, high: float) -> int | float | None:
    """``value`` when it is a JSON number (not a boolean) from ``low`` to ``high`` (finite bounds), else None.
    NaN and the infinities fail the comparisons."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if low <= value <= high else None


def is_whole(value: Any) -> bool:
    """A JSON number without a fraction (``60`` and ``60.0``; not ``1.5``, the infinities, NaN or a boolean)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
