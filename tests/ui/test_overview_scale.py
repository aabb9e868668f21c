"""The overview's bounded reads at scale (governance/overview.py): the closed hours of a range's series are cached,
the current hour is always read; an agent's blocked decision early in the range's first hour is listed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from governance import overview
from tests.support.decisions import agent, decide
from tests.ui.test_overview import chart_data


def decided(client: Client, range_: str) -> int:
    return sum(
        sum(counts)
        for counts in chart_data(client.get(f"/?range={range_}").content.decode())["outcomes"]["counts"].values()
    )


@pytest.mark.parametrize("range_", ["24h", "7d", "30d"])
def test_the_current_hour_is_read_on_every_request(owner_a, account_a, range_):
    now = timezone.now()
    bot = agent(account_a, "bot")
    decide(bot, n=3, ts=now - timedelta(hours=5))
    client = owner_a.login(Client())
    assert decided(client, range_) == 3
    decide(bot, n=2, ts=now)  # the current hour: read again
    assert decided(client, range_) == 5
    decide(bot, n=4, ts=now - timedelta(hours=5))  # a closed hour: cached for a few minutes
    assert decided(client, range_) == 5


def test_the_series_cache_is_per_account(owner_a, owner_b, account_a, account_b):
    decide(agent(account_a, "bot"), n=3, ts=timezone.now() - timedelta(hours=2))
    decide(agent(account_b, "bot"), n=1, ts=timezone.now() - timedelta(hours=2))
    assert decided(owner_a.login(Client()), "7d") == 3
    assert decided(owner_b.login(Client()), "7d") == 1


def test_recent_blocked_covers_the_first_hour_of_the_range(account_a):
    now = timezone.now()
    start = now - timedelta(minutes=50)
    bot = agent(account_a, "bot")
    decide(bot, outcome="blocked", ts=start + timedelta(seconds=1))  # its rollup's hour is before start
    decide(bot, outcome="blocked", ts=start - timedelta(seconds=1))  # before the range: not listed
    blocked = overview.recent_blocked(account_a.pk, start)
    assert [row["d"].ts for row in blocked] == [start + timedelta(seconds=1)]
    assert overview.recent_blocked(account_a.pk, start + timedelta(seconds=2)) == []
