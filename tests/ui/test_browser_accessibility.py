"""axe-core (static/vendor/axe.min.js, pinned in static/vendor/VERSIONS.md) on every dashboard page, for an owner and
for a viewer, at desktop and phone widths: no serious or critical violation (contrast, labels, landmarks, names of
buttons and links, table headers…). The pages carry 200-character identifiers and a policy with history, so the
tables, diffs and policy views are all on them."""

from __future__ import annotations

import pytest

from tests.support.pages import axe_violations, crawl, extra_urls, seed_long_identifiers
from tests.ui.test_browser_keys import login

pytestmark = pytest.mark.browser


@pytest.fixture
def seeded(key_a, owner_a):
    seed_long_identifiers(key_a, owner_a)


def _check_every_page(page, live_server, persona, width: int) -> list[str]:
    page.set_viewport_size({"width": width, "height": 900})
    login(page, live_server, persona)
    found, visited = [], []
    for url in crawl(page, live_server.url, extra_urls()):
        visited.append(url)
        # Open every <details> (audit before/after, policy YAML/JSON, the phone menu): axe skips hidden content.
        page.evaluate("() => document.querySelectorAll('details').forEach(d => { d.open = true; })")
        for v in axe_violations(page):
            found.append(f"{url}: {v['impact']} {v['id']} ({v['help']}) at {v['nodes']}")
    assert len(visited) >= 12, visited
    return found


@pytest.mark.parametrize("role", ["owner", "admin", "viewer"])
def test_no_serious_accessibility_violation_on_any_page(page, live_server, owner_a, admin_a, viewer_a, seeded, role):
    persona = {"owner": owner_a, "admin": admin_a, "viewer": viewer_a}[role]
    found = _check_every_page(page, live_server, persona, 1440)
    assert not found, "\n".join(found)


@pytest.mark.parametrize("role", ["owner", "viewer"])
def test_no_serious_accessibility_violation_at_phone_width(page, live_server, owner_a, viewer_a, seeded, role):
    """At 390 px tables scroll sideways in their wraps: axe checks that each scrolling one can be reached by keyboard
    (the wraps without a link or button inside are focusable regions), and the forms of an owner fit."""
    found = _check_every_page(page, live_server, owner_a if role == "owner" else viewer_a, 390)
    assert not found, "\n".join(found)


def test_axe_finds_what_it_should(page, live_server, owner_a):
    """The check can fail: a page with an unlabelled input and an empty button has serious violations."""
    login(page, live_server, owner_a)
    page.evaluate(
        """() => { const main = document.querySelector('main');
                   main.append(document.createElement('input'));
                   main.append(document.createElement('button')); }"""
    )
    ids = {v["id"] for v in axe_violations(page)}
    assert {"label", "button-name"} <= ids, ids
