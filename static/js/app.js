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
