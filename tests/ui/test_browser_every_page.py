"""Every dashboard page, judged once per persona and width: one crawl (tests/support/pages.py) for each of the owner,
the admin and the viewer at 1280 px and the owner and the viewer at 390 px, on data with 200-character identifiers,
a policy with history, locks and leases; every page visited runs every check, each defined next to the tests that
prove it can fail:

- `PageFit`, `NoPythonRepr` (tests/ui/test_browser_long_identifiers.py): no page and no long identifier wider than
  the window, no Python repr in a page's text;
- `CurrentSection` (tests/ui/test_browser_navigation.py): the main navigation marks exactly the page's section, drawn
  the same way on every page, and every section is reached;
- `WritesShown` (tests/ui/test_viewer_read_only.py): a viewer is offered no write and no editable field, an owner
  every write form, an admin none of the owner's; no page or link shown answers "Not allowed";
- `Accessibility` (tests/ui/test_browser_accessibility.py): no serious or critical axe-core violation. 1280 px stands
  for every desktop width (that module says why).

Each check collects its findings over the whole crawl; the test fails at the end with every failing check, its
findings one line each (the page, what was found). The `page` fixture also fails it on any Content-Security-Policy
violation of a page loaded."""

from __future__ import annotations

import pytest

from tests.support.pages import AGENT, extra_urls, judge_every_page, seed_long_identifiers
from tests.ui.test_browser_accessibility import Accessibility
from tests.ui.test_browser_keys import login
from tests.ui.test_browser_long_identifiers import NoPythonRepr, PageFit
from tests.ui.test_browser_navigation import CurrentSection
from tests.ui.test_viewer_read_only import WritesShown

pytestmark = pytest.mark.browser

WINDOW = {1280: {"width": 1280, "height": 900}, 390: {"width": 390, "height": 844}}
# Pages a crawl must reach: an owner's reaches the agent, policy, tool, run and lock pages; the others see fewer.
MIN_PAGES = {"owner": 15, "admin": 12, "viewer": 12}


@pytest.mark.parametrize(
    ("role", "width"), [("owner", 1280), ("admin", 1280), ("viewer", 1280), ("owner", 390), ("viewer", 390)]
)
def test_every_page(page, live_server, key_a, owner_a, admin_a, viewer_a, role, width, celery_eager):
    seed_long_identifiers(key_a, owner_a)
    page.set_viewport_size(WINDOW[width])
    login(page, live_server, {"owner": owner_a, "admin": admin_a, "viewer": viewer_a}[role])
    checks = [PageFit(), NoPythonRepr(), CurrentSection(), WritesShown(role), Accessibility()]
    visited, failures = judge_every_page(page, live_server.url, checks, extra_urls())
    reach = []
    if len(visited) < MIN_PAGES[role]:
        reach.append(f"it reached only {len(visited)} pages (at least {MIN_PAGES[role]} expected): {visited}")
    if not any(AGENT in url or "/agents/" in url for url in visited):
        reach.append(f"it reached no agent page: {visited}")
    if reach:
        failures.insert(0, "the crawl itself:\n  " + "\n  ".join(reach))
    if failures:
        pytest.fail(f"on the {role}'s {len(visited)} pages at {width} px:\n" + "\n".join(failures))
