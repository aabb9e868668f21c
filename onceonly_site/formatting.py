"""Number formatting for the dashboard, registered as template builtins (settings TEMPLATES OPTIONS "builtins").

Every template can write `{{ x|usd }}`, `{{ n|num }}`, `{{ s|seconds }}`, `{{ p|pct }}` without `{% load %}`.
Missing values (None, "") render as an em dash; values that are not numbers are returned unchanged rather than
raising, so a template never 500s on a formatting filter. Imports Django only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from typing import Any

from django import template

register = template.Library()

DASH = "—"
_SIGNIFICANT = 3  # significant digits kept for amounts under a cent ($0.000125)
_MAX_DECIMALS = 10


def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except (InvalidOperation, ValueError, TypeError):
        return None
    return number if number.is_finite() else None


def _grouped(number: Decimal, decimals: int) -> str:
    """Round half up to `decimals` places and group the integer part by thousands (no sign)."""
    quantum = Decimal(1).scaleb(-decimals)
    with localcontext() as ctx:  # the default 28 digits would refuse to quantize 1e26 to cents
        ctx.prec = max(ctx.prec, abs(number).adjusted() + decimals + 2)
        text = f"{abs(number).quantize(quantum, rounding=ROUND_HALF_UP):f}"
    whole, _, fraction = text.partition(".")
    whole = f"{int(whole):,}"
    return f"{whole}.{fraction}" if fraction else whole


def _strip(text: str, keep: int = 0) -> str:
    """Drop trailing fractional zeros, keeping at least `keep` decimals."""
    if "." not in text:
        return text
    whole, fraction = text.split(".")
    fraction = fraction.rstrip("0")
    fraction = fraction + "0" * max(0, keep - len(fraction))
    return f"{whole}.{fraction}" if fraction else whole


def _safe(filter_: Callable[..., str]) -> Callable[..., str]:
    """A filter that never raises: a value beyond what it can format (Decimal's limits) is shown as given."""

    @functools.wraps(filter_)
    def wrapper(value: Any, arg: Any = None) -> str:
        try:
            return filter_(value) if arg is None else filter_(value, arg)
        except (ArithmeticError, ValueError):
            return str(value)

    return wrapper


def _arg_int(arg: Any, default: int | None) -> int | None:
    try:
        return max(0, min(_MAX_DECIMALS, int(arg)))
    except (TypeError, ValueError):
        return default


@register.filter(is_safe=True)
@_safe
def usd(value: Any, max_decimals: Any = None) -> str:
    """US dollars: "$1,234.56", "-$3.00". Amounts under a cent keep 3 significant digits ("$0.001", "$0.000125")
    instead of rounding to "$0.00". `usd:4` shows up to 4 decimals when the amount has them ("$0.0125"; never
    fewer than 2), for unit prices."""
    number = _decimal(value)
    if number is None:
        return DASH if value in (None, "") else str(value)
    sign = "-" if number < 0 else ""
    magnitude = abs(number)
    extra = _arg_int(max_decimals, None)
    if magnitude == 0:
        return "$0.00"
    if magnitude < Decimal("0.01"):
        # 0.000125 has adjusted() == -4: keep digits down to 10^(adjusted - SIGNIFICANT + 1).
        decimals = min(_MAX_DECIMALS, -magnitude.adjusted() + _SIGNIFICANT - 1)
        if extra is not None:
            decimals = max(decimals, extra)
        text = _strip(_grouped(magnitude, decimals), 2)
        if Decimal(text.replace(",", "")) == 0:  # below the 10-decimal floor: say so rather than "$0.00"
            return f"{sign}<$0.{'0' * (_MAX_DECIMALS - 1)}1"
        return f"{sign}${text}"
    if extra is not None and extra > 2:
        return f"{sign}${_strip(_grouped(magnitude, extra), 2)}"
    return f"{sign}${_grouped(magnitude, 2)}"


@register.filter(is_safe=True)
@_safe
def num(value: Any, decimals: Any = None) -> str:
    """A count or quantity with thousands separators: 1234567 → "1,234,567". Non-integers show up to 2 decimals
    (trailing zeros dropped: 2.50 → "2.5"); `num:1` fixes exactly one decimal."""
    number = _decimal(value)
    if number is None:
        return DASH if value in (None, "") else str(value)
    sign = "-" if number < 0 else ""
    fixed = _arg_int(decimals, None)
    if fixed is not None:
        text = _grouped(number, fixed)
    elif number == number.to_integral_value():
        text = _grouped(number, 0)
    else:
        text = _strip(_grouped(number, 2))
    if sign and Decimal(text.replace(",", "")) == 0:
        sign = ""
    return f"{sign}{text}"


_UNITS = (("d", 86400), ("h", 3600), ("min", 60), ("s", 1))


@register.filter(is_safe=True)
@_safe
def seconds(value: Any) -> str:
    """A duration given in seconds, in its two largest units: 2592000 → "30 d", 7500 → "2 h 5 min", 45 → "45 s",
    90061 → "1 d 1 h", 0.25 → "250 ms"."""
    number = _decimal(value)
    if number is None:
        return DASH if value in (None, "") else str(value)
    sign = "-" if number < 0 else ""
    magnitude = abs(number)
    if magnitude == 0:
        return "0 s"
    if magnitude < 1:
        ms = _strip(_grouped(magnitude * 1000, 1))
        return f"{'' if ms == '0' else sign}{ms} ms"
    remaining = int(magnitude.to_integral_value(rounding=ROUND_HALF_UP))
    parts: list[str] = []
    for unit, size in _UNITS:
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count:,} {unit}")
        elif parts:
            break  # "1 d 0 h 5 min" would mislead: stop at the first empty unit after the largest
        if len(parts) == 2:
            break
    return sign + " ".join(parts)


@register.filter(is_safe=True)
@_safe
def pct(value: Any, decimals: Any = 0) -> str:
    """A value already in percent (0–100 scale, may exceed 100): 83.4 → "83%", `pct:1` → "83.4%", 1234 →
    "1,234%". A nonzero value that would round to 0 keeps one significant digit ("0.3%") so it does not read as
    nothing. For a 0–1 ratio multiply first (`widthratio`) or pass a percentage from the view."""
    number = _decimal(value)
    if number is None:
        return DASH if value in (None, "") else str(value)
    places = _arg_int(decimals, 0) or 0
    sign = "-" if number < 0 else ""
    magnitude = abs(number)
    text = _grouped(magnitude, places)
    if magnitude != 0 and Decimal(text.replace(",", "")) == 0:
        text = _strip(_grouped(magnitude, min(_MAX_DECIMALS, -magnitude.adjusted())))
    if Decimal(text.replace(",", "")) == 0:
        sign = ""
    return f"{sign}{text}%"
