// Charts of the agent detail page, from the JSON embedded with json_script (no inline script, no CDN).
(function () {
  const el = document.getElementById("chart-data");
  if (!el || typeof Chart === "undefined") return;
  const data = JSON.parse(el.textContent);
  const colors = { executed: "#166534", allowed: "#2563eb", blocked: "#b91c1c", dedup: "#6b7280", failed: "#b45309" };
  new Chart(document.getElementById("decisions-chart"), {
    type: "bar",
    data: { labels: data.labels, datasets: Object.entries(data.counts).map(([k, v]) => ({ label: k, data: v, backgroundColor: colors[k] })) },
    options: { animation: false, scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } },
  });
  const spendLabel = data.cumulative ? "spend since 00:00 UTC (cumulative, USD)" : "spend per day (USD)";
  const datasets = [{ label: spendLabel, data: data.spend, borderColor: "#1d4ed8", backgroundColor: "#93c5fd", stepped: data.cumulative }];
  if (data.cap !== null && data.cap !== undefined) {
    datasets.push({ label: "daily cap", data: data.labels.map(() => data.cap), borderColor: "#b91c1c", borderDash: [6, 4], pointRadius: 0 });
  }
  new Chart(document.getElementById("spend-chart"), { type: "line", data: { labels: data.labels, datasets }, options: { animation: false, interaction: { mode: "index", intersect: false }, scales: { y: { beginAtZero: true, title: { display: true, text: "USD" } } } } });
})();
