"""axe-core (static/vendor/axe.min.js, pinned in static/vendor/VERSIONS.md) on every dashboard page, for an owner, an
admin and a viewer at 1280 px and for an owner and a viewer at 390 px: no serious or critical violation (contrast,
labels, landmarks, names of buttons and links, table headers…). The pages carry 200-character identifiers and a policy
with history, so the tables, diffs and policy views are all on them.

The check (`Accessibility`) runs in the one crawl per persona and width of tests/ui/test_browser_every_page.py; this
module proves it can fail. 1280 px stands for every desktop width: static/css/app.css changes the layout at 600 and
960 px only (and static/js/app.js's matchMedia at 960), `main` is fluid up to 1800 px, so a wider window only gives
the auto-fit grids more columns and the tables more room (a table that scrolls at 1440 px scrolls at 1280 px too). At
390 px tables scroll sideways in their wraps: axe checks that each scrolling one can be reached by keyboard (the
wraps without a link or button inside are focusable regions), and the forms of an owner fit."""

from __future__ import annotations

import pytest

from tests.support.pages import PageCheck, axe_violations, preload_axe
from tests.ui.test_browser_keys import login

pytestmark = pytest.mark.browser


class Accessibility(PageCheck):
    """No serious or critical axe violation, with every <details> open (audit before/after, policy YAML/JSON, the
    phone menu): axe skips hidden content."""

    title = "serious or critical accessibility violations (axe-core)"
    changes_page = True

    def __init__(self) -> None:
        self.found: list[str] = []
        self.preloaded = False

    def visit(self, page, url: str) -> None:
        if not self.preloaded:  # this page gets axe from axe_violations, the next ones as they load
            preload_axe(page)
            self.preloaded = True
        page.evaluate("() => document.querySelectorAll('details').forEach(d => { d.open = true; })")
        for v in axe_violations(page):
            self.found.append(f"{url}: {v['impact']} {v['id']} ({v['help']}) at {v['nodes']}")

    def problems(self, page, base: str, visited: list[str]) -> list[str]:
        return self.found


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
    # …and so does the check the crawl runs, naming the page.
    check = Accessibility()
    check.visit(page, "/")
    found = check.problems(page, live_server.url, ["/"])
    assert any(line.startswith("/: ") and " label " in line for line in found), found
