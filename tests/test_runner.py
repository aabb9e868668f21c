"""One request runs Python at a time per web process; requests waiting on something outside step aside
(onceonly_site/runner.py)."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import transaction

from onceonly_site import runner


def test_a_second_runner_waits_for_the_first_and_runs_when_it_steps_aside(settings):
    settings.ONCEONLY_WEB_RUNNERS_PER_PROCESS = 1
    order: list[str] = []
    first_in = threading.Event()
    step_aside = threading.Event()

    def first() -> None:
        with runner.running():
            order.append("first runs")
            first_in.set()
            step_aside.wait(5)
            with runner.stepped_aside():
                time.sleep(0.3)  # "waiting on the tool"
            order.append("first back")

    def second() -> None:
        first_in.wait(5)
        with runner.running():
            order.append("second runs")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    first_in.wait(5)
    time.sleep(0.2)
    assert order == ["first runs"], "the second request ran while the first held the runner"
    step_aside.set()
    for thread in threads:
        thread.join(5)
    assert order == ["first runs", "second runs", "first back"]


@pytest.mark.django_db(transaction=True)
def test_no_stepping_aside_inside_a_transaction(settings):
    """A request inside a transaction may hold row locks another request of the process needs: it keeps its turn."""
    settings.ONCEONLY_WEB_RUNNERS_PER_PROCESS = 1
    with runner.running():
        with transaction.atomic(), runner.stepped_aside():
            assert runner.holding()
        with runner.stepped_aside():
            assert not runner.holding()
        assert runner.holding()
    assert not runner.holding()


def test_outside_a_request_nothing_is_held_or_given(settings):
    settings.ONCEONLY_WEB_RUNNERS_PER_PROCESS = 1
    with runner.stepped_aside():
        assert not runner.holding()
    settings.ONCEONLY_WEB_RUNNERS_PER_PROCESS = 0  # off: running() holds nothing
    with runner.running():
        assert not runner.holding()
