"""Whole numbers from untrusted text: query parameters, form fields, webhook payloads."""

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
