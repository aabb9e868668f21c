// Small progressive enhancements; every page works without JavaScript.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy]");
  if (!button) return;
  const input = document.querySelector(button.dataset.copy);
  const status = button.parentElement.querySelector(".copy-status");
  input.select();
  try {
    await navigator.clipboard.writeText(input.value);
    if (status) status.textContent = "Copied.";
  } catch (err) {
    // Clipboard API unavailable (plain http on a non-localhost host): the text is selected, Ctrl-C works.
    document.execCommand("copy");
    if (status) status.textContent = "Selected — press Ctrl-C to copy.";
  }
});
// Destructive buttons ask first: <button data-confirm="Question?"> (no inline handlers: the CSP forbids them).
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-confirm]");
  if (button && !window.confirm(button.dataset.confirm)) event.preventDefault();
});
// Bars drawn to a percentage: <span data-width="42"> (set through the CSSOM; style="" attributes are refused).
function sizeBars(root) {
  root.querySelectorAll("[data-width]").forEach((el) => {
    el.style.width = `${Math.min(Math.max(parseFloat(el.dataset.width) || 0, 0), 100)}%`;
  });
}
sizeBars(document);
document.addEventListener("htmx:afterSwap", (event) => sizeBars(event.detail.target));
// TTL countdowns: <span data-countdown="SECONDS"> ticks down once a second until "expired".
setInterval(() => {
  document.querySelectorAll("[data-countdown]").forEach((el) => {
    const left = parseInt(el.dataset.countdown, 10) - 1;
    el.dataset.countdown = String(Math.max(left, 0));
    el.textContent = left > 0 ? String(left) : "0 (expired)";
  });
}, 1000);
// Live timelines (decisions, runs): each poll asks for rows newer than the newest one on the page.
document.addEventListener("htmx:configRequest", (event) => {
  const body = event.detail.elt;
  if (!body.matches || !body.matches("[data-live]")) return;
  const ids = [...body.querySelectorAll("tr[data-id]")].map((tr) => parseInt(tr.dataset.id, 10));
  if (ids.length) event.detail.parameters.after = String(Math.max(...ids));
});
document.addEventListener("htmx:afterSwap", (event) => {
  if (event.detail.target.id === "timeline-rows" && event.detail.target.querySelector("tr[data-id]")) {
    const empty = document.getElementById("timeline-empty");
    if (empty) empty.remove();
  }
});
// Main navigation (templates/base.html): a <details> that folds behind "Menu" on narrow windows; open on wide ones
// (app.css shows it there anyway; opening it keeps the links in the accessibility tree and tab order).
(() => {
  const menu = document.querySelector("[data-nav-menu]");
  if (!menu) return;
  const wide = window.matchMedia("(min-width: 960px)");
  const sync = () => { menu.open = wide.matches; };
  sync();
  wide.addEventListener("change", sync);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && menu.open && !wide.matches) {
      menu.open = false;
      menu.querySelector("summary").focus();
    }
  });
})();
// Drawer (templates/base.html <aside id="drawer">): a click on a[data-drawer] opens that page's fragment in the
// drawer (fetched with HX-Request, which the views answer with the fragment); a modified click (new tab…) and pages
// without JavaScript follow the href to the full page. A click anywhere on a tr[data-href] row opens the row's
// drawer link (or follows data-href). Escape or the close button closes it and gives focus back.
(() => {
  const drawer = document.getElementById("drawer");
  if (!drawer) return;
  const body = drawer.querySelector(".drawer-body");
  const title = drawer.querySelector(".drawer-title");
  const closeButton = drawer.querySelector("[data-drawer-close]");
  let opener = null;
  let pending = null;

  function close() {
    if (drawer.hidden) return;
    if (pending) pending.abort();
    drawer.hidden = true;
    document.body.classList.remove("drawer-open");
    if (opener && document.contains(opener)) opener.focus();
    opener = null;
  }

  async function open(href, from) {
    opener = from || document.activeElement;
    if (pending) pending.abort();
    const request = new AbortController();
    pending = request;
    drawer.hidden = false;
    document.body.classList.add("drawer-open");
    drawer.setAttribute("aria-busy", "true");
    title.textContent = "Loading…";
    body.replaceChildren();
    closeButton.focus();
    try {
      const response = await fetch(href, {
        headers: { "HX-Request": "true", "HX-Current-URL": window.location.href },
        credentials: "same-origin",
        signal: request.signal,
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      // A server-rendered fragment of this origin; the CSP refuses any inline script or style in it anyway.
      body.innerHTML = await response.text();
      const heading = body.querySelector("[data-drawer-title]");
      title.textContent = heading ? heading.textContent : "Details";
      if (window.htmx) window.htmx.process(body);
      sizeBars(body);
    } catch (err) {
      if (err.name === "AbortError") return;
      title.textContent = "Could not load";
      const p = document.createElement("p");
      p.className = "field-error";
      p.append(`Could not load the details (${err.message}). `);
      const link = document.createElement("a");
      link.href = href;
      link.textContent = "Open the page instead";
      p.append(link);
      body.replaceChildren(p);
    } finally {
      if (pending === request) {
        pending = null;
        drawer.removeAttribute("aria-busy");
      }
    }
    drawer.scrollTop = 0;
  }

  document.addEventListener("click", (event) => {
    if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    const link = event.target.closest("a[data-drawer]");
    if (link) {
      event.preventDefault();
      open(link.href, link);
      return;
    }
    if (event.target.closest("[data-drawer-close]")) {
      close();
      return;
    }
    // A row click: not on its own links, buttons or form fields, and not while selecting text.
    const row = event.target.closest("tr[data-href]");
    if (!row || event.target.closest("a, button, input, select, textarea, label, summary, details")) return;
    if (String(window.getSelection() || "")) return;
    const target = row.querySelector("a[data-drawer]");
    if (target) open(target.href, target);
    else window.location.assign(row.dataset.href);
  });
  document.addEventListener(
    "keydown",
    (event) => {
      if (event.key !== "Escape" || drawer.hidden) return;
      event.stopPropagation(); // the drawer first: the navigation menu's Escape waits for the next press
      close();
    },
    { capture: true },
  );
})();
// Data tables' toolbar (templates/_table_toolbar.html): empty fields are left out of the address on Filter, so a
// shared link reads ?agent=bot&outcome=blocked rather than ?q=&agent=bot&tool=&outcome=blocked&reason=….
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!form.matches || !form.matches("form.table-toolbar")) return;
  form.querySelectorAll("input[name], select[name]").forEach((field) => {
    if (field.value === "") field.disabled = true; // disabled fields are not submitted
  });
});
// Back from the next page (bfcache): the fields disabled above would stay disabled.
window.addEventListener("pageshow", () => {
  document.querySelectorAll("form.table-toolbar [disabled]").forEach((field) => { field.disabled = false; });
});
