"""The dashboard's number formatting filters (onceonly_site/formatting.py), usable in every template as builtins."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.template import Context, Template

from onceonly_site.formatting import num, pct, seconds, usd


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1234.56, "$1,234.56"),
        (Decimal("1234.555"), "$1,234.56"),  # half up, not banker's rounding
        (0, "$0.00"),
        (Decimal("0.00"), "$0.00"),
        (10, "$10.00"),
        (20.31, "$20.31"),
        (0.01, "$0.01"),
        (0.001, "$0.001"),  # not "$0.00"
        (0.000125, "$0.000125"),
        (Decimal("0.0012345"), "$0.00123"),
        (0.005, "$0.005"),
        (1e-7, "$0.0000001"),
        (1e-12, "<$0.0000000001"),
        (-3, "-$3.00"),
        (-0.0005, "-$0.0005"),
        (1234567.891, "$1,234,567.89"),
        ("2.5", "$2.50"),
        (None, "—"),
        ("", "—"),
        ("n/a", "n/a"),
        (float("nan"), "nan"),
    ],
)
def test_usd(value, expected):
    assert usd(value) == expected


@pytest.mark.parametrize(
    ("value", "arg", "expected"),
    [(0.0125, 4, "$0.0125"), (1.5, 4, "$1.50"), (0.5, 4, "$0.50"), (0.123456, 4, "$0.1235"), (0.0001, 4, "$0.0001")],
)
def test_usd_with_decimals_for_unit_prices(value, arg, expected):
    assert usd(value, arg) == expected


@pytest.mark.parametrize(
    ("value", "arg", "expected"),
    [
        (1234567, None, "1,234,567"),
        (999, None, "999"),
        (0, None, "0"),
        (-1234, None, "-1,234"),
        (Decimal("2.50"), None, "2.5"),
        (1234.567, None, "1,234.57"),
        (1234.5, 1, "1,234.5"),
        (3, 2, "3.00"),
        (-0.001, None, "0"),
        (None, None, "—"),
        ("abc", None, "abc"),
        (True, None, "True"),
    ],
)
def test_num(value, arg, expected):
    assert num(value, arg) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (2592000, "30 d"),
        (7500, "2 h 5 min"),
        (45, "45 s"),
        (0, "0 s"),
        (60, "1 min"),
        (61, "1 min 1 s"),
        (3600, "1 h"),
        (90061, "1 d 1 h"),
        (86400 + 60, "1 d"),  # the minute is below the two largest units' precision: no "1 d 0 h 1 min"
        (0.25, "250 ms"),
        (0.0015, "1.5 ms"),
        (59.6, "1 min"),
        (-45, "-45 s"),
        (31536000 * 3, "1,095 d"),
        (None, "—"),
    ],
)
def test_seconds(value, expected):
    assert seconds(value) == expected


@pytest.mark.parametrize(
    ("value", "arg", "expected"),
    [
        (83.4, 0, "83%"),
        (83.45, 1, "83.5%"),
        (100, 0, "100%"),
        (203.1, 0, "203%"),
        (1234, 0, "1,234%"),
        (0, 0, "0%"),
        (0.3, 0, "0.3%"),  # nonzero must not read as nothing
        (0.004, 0, "0.004%"),
        (-12.4, 0, "-12%"),
        (None, 0, "—"),
    ],
)
def test_pct(value, arg, expected):
    assert pct(value, arg) == expected


def test_filters_are_builtins_in_every_template():
    rendered = Template("{{ a|usd }} {{ b|num }} {{ c|seconds }} {{ d|pct }} {{ e|usd:4 }}").render(
        Context({"a": Decimal("0.001"), "b": 12345, "c": 2592000, "d": 50, "e": 0.0125})
    )
    assert rendered == "$0.001 12,345 30 d 50% $0.0125"


def test_autoescape_still_applies_to_non_numbers():
    rendered = Template("{{ a|usd }}").render(Context({"a": "<b>x</b>"}))
    assert "<b>" not in rendered


@pytest.mark.parametrize("value", [Decimal("1e26"), Decimal("1e400000"), 10**40, Decimal("NaN"), "inf", -1e-13])
def test_filters_never_raise_on_extreme_values(value):
    for text in (usd(value), usd(value, 4), num(value), num(value, 10), pct(value), pct(value, 5), seconds(value)):
        assert text and not text.startswith("-0"), text
