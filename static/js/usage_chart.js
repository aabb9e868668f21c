// Daily usage chart of the Usage & plan page, from the JSON embedded with json_script.
(function () {
  const el = document.getElementById("daily-data");
  if (!el || typeof Chart === "undefined") return;
  const data = JSON.parse(el.textContent);
  const labels = data.make.map((_, i) => String(i + 1));
  new Chart(document.getElementById("daily-usage"), {
    type: "bar",
    data: { labels, datasets: [
      { label: "check-locks", data: data.make, backgroundColor: "#2563eb" },
      { label: "AI runs & governed calls", data: data.ai, backgroundColor: "#16a34a" },
    ] },
    options: { animation: false, scales: { y: { beginAtZero: true } } },
  });
})();
