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
// TTL countdowns: <span data-countdown="SECONDS"> ticks down once a second until "expired".
setInterval(() => {
  document.querySelectorAll("[data-countdown]").forEach((el) => {
    const left = parseInt(el.dataset.countdown, 10) - 1;
    el.dataset.countdown = String(Math.max(left, 0));
    el.textContent = left > 0 ? String(left) : "0 (expired)";
  });
}, 1000);
