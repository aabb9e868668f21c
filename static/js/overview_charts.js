// Charts of the overview's operations panel (templates/governance/_operations_panel.html), from the JSON in the
// panel's data-charts attribute (htmx drops the <script> elements of swapped-in content), redrawn each time htmx
// swaps the panel in (live refresh every 15 s). The refresh pauses while the tab is hidden and catches up when it is
// shown again. Canvases have no id: htmx copies the style attribute of an element with the same id into its
// replacement while settling, which the CSP refuses.
(function () {
  const COLORS = { executed: "#166534", allowed: "#2563eb", blocked: "#b91c1c", dedup: "#6b7280", failed: "#b45309" };
  const count = new Intl.NumberFormat("en-US");
  const dollars = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", minimumFractionDigits: 2, maximumFractionDigits: 2 });
  const cents = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD", maximumSignificantDigits: 3 });
  // $0.001 stays $0.001 (never "$0.00"); a cent and more: two decimals with thousands separators.
  const usd = (v) => (v !== 0 && Math.abs(v) < 0.01 ? cents.format(v) : dollars.format(v));

  function axis(title) {
    return { display: true, text: title, font: { weight: "600" } };
  }

  function outcomesChart(canvas, data) {
    return new Chart(canvas, {
      type: "bar",
      data: {
        labels: data.labels,
        datasets: Object.entries(data.counts).map(([outcome, values]) => ({ label: outcome, data: values, backgroundColor: COLORS[outcome] })),
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        plugins: {
          tooltip: {
            callbacks: {
              label: (item) => `${item.dataset.label}: ${count.format(item.parsed.y)}`,
              footer: (items) => `total: ${count.format(items.reduce((sum, item) => sum + item.parsed.y, 0))}`,
            },
          },
        },
        scales: {
          x: { stacked: true, title: axis("Time (UTC)") },
          y: { stacked: true, beginAtZero: true, title: axis(`Decisions per ${data.per}`), ticks: { precision: 0, callback: (v) => count.format(v) } },
        },
      },
    });
  }

  function spendChart(canvas, labels, chart) {
    return new Chart(canvas, {
      type: "line",
      data: {
        labels,
        datasets: [
          { label: "spend today (cumulative)", data: chart.spend, borderColor: "#1d4ed8", backgroundColor: "rgba(147, 197, 253, .35)", fill: true, stepped: true, pointRadius: 0 },
          { label: "daily cap", data: labels.map(() => chart.cap), borderColor: "#b91c1c", borderDash: [6, 4], pointRadius: 0, fill: false },
        ],
      },
      options: {
        animation: false,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
        plugins: { tooltip: { callbacks: { label: (item) => `${item.dataset.label}: ${usd(item.parsed.y)}` } } },
        scales: {
          x: { title: axis("Hour of today (UTC)") },
          y: { beginAtZero: true, title: axis("Spend (USD)"), ticks: { callback: (v) => usd(v) } },
        },
      },
    });
  }

  function destroy(root) {
    if (!root || typeof Chart === "undefined") return;
    root.querySelectorAll("canvas").forEach((canvas) => {
      const chart = Chart.getChart(canvas);
      if (chart) chart.destroy();
    });
  }

  function draw() {
    const panel = document.getElementById("operations");
    if (!panel || !panel.dataset.charts || typeof Chart === "undefined") return;
    const data = JSON.parse(panel.dataset.charts);
    const outcomes = panel.querySelector("canvas[data-ops-outcomes]");
    if (outcomes && !Chart.getChart(outcomes)) outcomesChart(outcomes, data.outcomes);
    panel.querySelectorAll("canvas[data-spend-chart]").forEach((canvas) => {
      const chart = data.spend.charts[parseInt(canvas.dataset.spendChart, 10)];
      if (chart && !Chart.getChart(canvas)) spendChart(canvas, data.spend.labels, chart);
    });
  }

  draw();
  // The old panel's charts go before it is replaced (Chart.js keeps every instance until destroyed).
  document.addEventListener("htmx:beforeSwap", (event) => {
    if (event.detail.target && event.detail.target.id === "operations") destroy(event.detail.target);
  });
  // htmx:load fires on the swapped-in panel (afterSettle would fire on the old one, already detached).
  document.addEventListener("htmx:load", draw);
  // No polling while the tab is hidden (one refresh when it is shown again), while the drawer is open, or while the
  // keyboard focus is inside the panel (a swap would take it away).
  document.addEventListener("htmx:beforeRequest", (event) => {
    const elt = event.detail.elt;
    if (!elt || !elt.matches("[data-live-refresh]")) return;
    const active = document.activeElement;
    const focused = active && active !== document.body && elt.contains(active) && active.matches(":focus-visible");
    if (document.hidden || document.body.classList.contains("drawer-open") || focused) event.preventDefault();
  });
  document.addEventListener("visibilitychange", () => {
    const panel = document.getElementById("operations");
    if (!document.hidden && panel && window.htmx) window.htmx.ajax("GET", panel.getAttribute("hx-get"), { target: panel, swap: "outerHTML" });
  });
})();
