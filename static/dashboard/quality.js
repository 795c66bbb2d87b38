// The quality page: the agreement figures over cumulative rankings, one point per day, and each
// labeller's gold agreement per block of gold tasks (drawn with Chart.js, vendored in
// static/vendor/). The numbers come from the server (annotation.quality); this module only
// draws them.
import { PALETTE } from "./common.js";

const trend = JSON.parse(document.getElementById("trend-data").textContent);
const canvas = document.getElementById("trend-chart");
const STRICT = "pairwise_agreement.strict";

function series(key, field = "value") {
  return trend.points.map((point) => {
    const figure = point.figures[key];
    return figure && figure[field] !== null ? figure[field] : null;
  });
}

function draw() {
  if (!trend.points.length) {
    canvas.parentElement.hidden = true;
    document.getElementById("trend-empty").hidden = false;
    return;
  }
  const labels = trend.points.map((point) => point.date);
  const keys = Object.keys(trend.labels);
  const datasets = [
    // The strict figure's 95% interval as a band: the upper edge fills down to the lower one.
    { label: "strict 95% CI low", data: series(STRICT, "ci_low"), borderWidth: 0, pointRadius: 0, fill: false, ci: true },
    { label: "strict 95% CI", data: series(STRICT, "ci_high"), borderWidth: 0, pointRadius: 0, backgroundColor: "rgba(36, 87, 214, 0.12)", fill: "-1", ci: true },
  ];
  keys.forEach((key, i) => {
    datasets.push({
      label: trend.labels[key],
      key,
      data: series(key),
      borderColor: PALETTE[i % PALETTE.length],
      backgroundColor: PALETTE[i % PALETTE.length],
      tension: 0.2,
      spanGaps: true,
      pointRadius: 3,
    });
  });
  for (const [key, chance] of Object.entries(trend.chance)) {
    const i = keys.indexOf(key);
    datasets.push({
      label: `chance, ${trend.labels[key].split(" (")[0].replace("pairwise agreement, ", "")}`,
      data: labels.map(() => chance),
      borderColor: PALETTE[i % PALETTE.length],
      borderDash: [4, 4],
      borderWidth: 1,
      pointRadius: 0,
      chance: true,
    });
  }
  new window.Chart(canvas, {
    type: "line",
    data: { labels, datasets },
    options: {
      animation: false,
      maintainAspectRatio: false,
      interaction: { mode: "index", intersect: false },
      scales: {
        y: { suggestedMin: 0, suggestedMax: 1, title: { display: true, text: "value" } },
        x: { title: { display: true, text: "rankings up to the end of the day" } },
      },
      plugins: {
        legend: { labels: { filter: (item, data) => !data.datasets[item.datasetIndex].ci } },
        tooltip: {
          filter: (item) => !item.dataset.chance,
          callbacks: {
            title: (items) => {
              const point = trend.points[items[0].dataIndex];
              return `${point.date}: ${point.rankings} rankings, ${point.tasks_with_overlap} tasks with overlap`;
            },
            label: (item) => {
              if (item.dataset.ci) return `${item.dataset.label}: ${item.formattedValue}`;
              const figure = trend.points[item.dataIndex].figures[item.dataset.key];
              if (!figure || figure.value === null) return `${item.dataset.label}: n/a`;
              const ci = figure.ci_low === null ? "" : ` [${figure.ci_low.toFixed(2)}, ${figure.ci_high.toFixed(2)}]`;
              return `${item.dataset.label}: ${figure.value.toFixed(3)}${ci}, n=${figure.n}`;
            },
          },
        },
      },
    },
  });
  canvas.dataset.drawn = "true";
}

function drawGoldDrift() {
  const element = document.getElementById("gold-drift-data");
  if (!element) return;
  const drift = JSON.parse(element.textContent);
  const goldCanvas = document.getElementById("gold-drift-chart");
  const datasets = drift.series.map((row, i) => ({
    label: row.flagged ? `${row.username} (flagged)` : row.username,
    data: row.points.map((point) => point.value),
    points: row.points,
    borderColor: PALETTE[i % PALETTE.length],
    backgroundColor: PALETTE[i % PALETTE.length],
    borderWidth: row.flagged ? 3 : 2,
    clip: false, // lines at exactly 0 or 1 stay whole
    tension: 0.2,
    spanGaps: true,
    pointRadius: 3,
  }));
  datasets.push({
    label: "flag threshold",
    data: drift.labels.map(() => drift.threshold),
    borderColor: "#b42318",
    borderDash: [4, 4],
    borderWidth: 1,
    pointRadius: 0,
    threshold: true,
  });
  new window.Chart(goldCanvas, {
    type: "line",
    data: { labels: drift.labels, datasets },
    options: {
      animation: false,
      maintainAspectRatio: false,
      interaction: { mode: "nearest", intersect: false },
      scales: {
        y: { min: 0, max: 1, title: { display: true, text: "agreement with the references" } },
        x: { title: { display: true, text: "gold tasks, in the order ranked" } },
      },
      plugins: {
        tooltip: {
          filter: (item) => !item.dataset.threshold,
          callbacks: {
            label: (item) => {
              const point = item.dataset.points[item.dataIndex];
              if (!point || point.value === null) return `${item.dataset.label}: n/a`;
              const ci = point.ci_low === null ? "" : ` [${point.ci_low.toFixed(2)}, ${point.ci_high.toFixed(2)}]`;
              return `${item.dataset.label}: ${point.value.toFixed(2)}${ci}, ${point.tasks} tasks, ${point.start} to ${point.end}`;
            },
          },
        },
      },
    },
  });
  goldCanvas.dataset.drawn = "true";
}

draw();
drawGoldDrift();
