import time
import pytest
from tests.ui.test_console_acceptance import seed_console
from tests.ui.test_browser_keys import login
from tests.support.governance import governed_call
pytestmark = pytest.mark.browser

def test_dbg(page, live_server, owner_a, key_a):
    seed_console(key_a)
    msgs = []
    page.on("pageerror", lambda e: msgs.append(("pageerror", str(e))))
    page.on("console", lambda m: msgs.append((time.monotonic(), m.type, m.text, m.location)))
    page.set_viewport_size({"width": 1440, "height": 900})
    login(page, live_server, owner_a)
    print("login done", time.monotonic())
    page.goto(f"{live_server.url}/?range=1h")
    time.sleep(1)
    print("goto done", time.monotonic(), page.evaluate("Object.keys(Chart.instances).length"))
    page.evaluate("""['htmx:load','htmx:beforeSwap','htmx:afterSwap','htmx:afterSettle','htmx:beforeRequest','htmx:afterRequest'].forEach(n => document.addEventListener(n, e => console.log(n, e.detail.elt && e.detail.elt.id, e.detail.elt && e.detail.elt.isConnected, document.getElementById('operations') && document.getElementById('operations').isConnected)))""")
    governed_call(key_a.client(), "support-bot", "llm.answer", args={"late": True})
    page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")
    time.sleep(4)
    print("after", page.evaluate("Object.keys(Chart.instances).length"), page.evaluate("!!document.querySelector('canvas[data-ops-outcomes]')"))
    for m in msgs: print(m)
    print("canvases", page.evaluate("document.querySelectorAll('canvas').length"), page.evaluate("document.querySelectorAll('#operations').length"))
    msgs.clear()
