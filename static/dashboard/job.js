// A training job's live page: polls the JSON API every poll_ms while the job runs and updates
// the status, the progress bar, the metric charts (Chart.js, vendored in static/vendor/), the
// log tail and the error. Cancelling posts to the API (X-CSRFToken); the form posts to the
// dashboard's own view when this script does not run.
//
// Metrics are fetched incrementally with ?after=<step>. A job may store more than one row for
// the same step (the reward model stores its evaluation at the last step again), so each poll
// asks from the step before the newest one seen and drops the rows it already has.
import { PALETTE, formatNumber, make, request } from "./common.js";

const config = JSON.parse(document.getElementById("job-config").textContent);
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const STATUS_TEXT = { queued: "Queued", running: "Running", succeeded: "Succeeded", failed: "Failed", cancelled: "Cancelled" };
const MAX_AUTO_CHARTS = 6;

const el = {
  status: document.getElementById("job-status"),
  progress: document.getElementById("job-progress"),
  step: document.getElementById("job-step"),
  total: document.getElementById("job-total"),
  percent: document.getElementById("job-percent"),
  worker: document.getElementById("job-worker"),
  device: document.getElementById("job-device"),
  attempts: document.getElementById("job-attempts"),
  times: document.getElementById("job-times"),
  result: document.getElementById("job-result"),
  resultLink: document.getElementById("job-result-link"),
  error: document.getElementById("job-error"),
  errorText: document.getElementById("job-error-text"),
  log: document.getElementById("job-log"),
  params: document.getElementById("job-params"),
  charts: document.getElementById("charts"),
  chartsEmpty: document.getElementById("charts-empty"),
  summaryBox: document.getElementById("summary-box"),
  summaryTable: document.getElementById("summary-table"),
  cancelForm: document.getElementById("cancel-form"),
  cancel: document.getElementById("cancel"),
  retryForm: document.getElementById("retry-form"),
  pollError: document.getElementById("poll-error"),
  waiting: document.getElementById("job-waiting"),
  enqueueError: document.getElementById("job-enqueue-error"),
  steps: document.getElementById("job-steps"),
};

const state = {
  job: config.job,
  seen: new Set(), // "step|created_at" of the metric rows already drawn
  rows: [],
  lastStep: null,
  charts: new Map(), // chart spec title -> {chart, keys}
  failures: 0,
  timer: null,
  summaryShown: false,
};

// --- Rendering the job ---------------------------------------------------------------------------

function time(value) {
  return value ? new Date(value).toLocaleTimeString() : "";
}

// A queued job the broker has not taken yet (it was unreachable) waits for the queue: the sweep
// queues it once the broker answers.
function statusText(job) {
  if (job.cancel_requested && !FINISHED.has(job.status)) return "Cancelling";
  if (job.waiting_for_queue) return "Waiting for the queue";
  return STATUS_TEXT[job.status] || job.status;
}

function renderJob(job) {
  state.job = job;
  el.status.textContent = statusText(job);
  el.status.className = `badge badge-${job.status}`;
  const total = job.progress_total || 0;
  el.progress.max = Math.max(total, 1);
  el.progress.value = job.status === "succeeded" && !total ? 1 : job.progress_step;
  el.step.textContent = String(job.progress_step);
  el.total.textContent = String(total);
  el.percent.textContent = total ? `${Math.round((100 * job.progress_step) / total)}%` : "";
  el.worker.textContent = job.worker || "—";
  el.device.textContent = job.device || "—";
  el.attempts.textContent = String(job.attempts);
  const parts = [];
  if (job.started_at) parts.push(`started ${time(job.started_at)}`);
  if (job.finished_at) parts.push(`finished ${time(job.finished_at)}`);
  else if (job.heartbeat_at) parts.push(`last heartbeat ${time(job.heartbeat_at)}`);
  el.times.textContent = parts.join(" · ");
  if (job.result_version) {
    el.result.hidden = false;
    el.resultLink.textContent = `model version #${job.result_version}`;
    el.resultLink.href = el.resultLink.href.replace(/#version-.*$/, `#version-${job.result_version}`);
  }
  el.waiting.hidden = !job.waiting_for_queue;
  if (job.waiting_for_queue) el.enqueueError.textContent = job.enqueue_error;
  el.error.hidden = !job.error;
  if (el.errorText.textContent !== job.error) el.errorText.textContent = job.error;
  if (el.log.textContent !== job.log_tail) {
    const atBottom = el.log.scrollHeight - el.log.scrollTop - el.log.clientHeight < 24;
    el.log.textContent = job.log_tail;
    if (atBottom) el.log.scrollTop = el.log.scrollHeight;
  }
  el.cancelForm.hidden = FINISHED.has(job.status);
  el.cancel.disabled = job.cancel_requested;
  el.cancel.textContent = job.cancel_requested ? "Cancelling…" : "Cancel job";
  el.retryForm.hidden = !(job.status === "failed" || job.status === "cancelled");
  renderSummary(job.summary);
  renderSteps(job.steps || []);
  document.body.dataset.jobStatus = job.status;
}

// A whole-round job's steps, each with its own status and progress, as the job runs them.
function renderSteps(steps) {
  if (!el.steps || !steps.length) return;
  el.steps.replaceChildren(
    ...steps.map((step) => {
      const item = make("li");
      item.dataset.step = String(step.id);
      const link = make("a", "", `${step.kind.replace("_", " ")} #${step.id}`);
      link.href = config.urls.step.replace(/\/0\/$/, `/${step.id}/`);
      const total = step.progress_total || 0;
      const progress = total ? ` ${step.progress_step}/${total} (${Math.round((100 * step.progress_step) / total)}%)` : "";
      item.append(link, " ", make("span", `badge badge-${step.status}`, STATUS_TEXT[step.status] || step.status), make("span", "muted small", progress));
      return item;
    }),
  );
}

function renderSummary(summary) {
  const entries = Object.entries((summary && summary.metrics) || {});
  for (const [key, value] of Object.entries((summary && summary.counts) || {})) entries.push([`counts/${key}`, value]);
  // A policy update's evaluation on held-out prompts: the policy before, after, the difference.
  const evaluation = (summary && summary.evaluation) || {};
  for (const side of ["policy_before", "policy_after", "delta"]) {
    for (const [key, value] of Object.entries(evaluation[side] || {})) {
      if (typeof value === "number") entries.push([`evaluation/${side}/${key}`, value]);
    }
  }
  el.summaryBox.hidden = entries.length === 0;
  if (!entries.length) return;
  el.summaryTable.replaceChildren(
    ...entries.map(([key, value]) => {
      const item = make("div");
      item.append(make("dt", "", key), make("dd", "", formatNumber(value)));
      return item;
    }),
  );
  if (!state.summaryShown) el.summaryBox.open = true; // opened once; the admin may close it
  state.summaryShown = true;
}

// --- Charts --------------------------------------------------------------------------------------

function chartSpecs() {
  if (config.charts.length) return config.charts;
  // A kind without a chart list: one chart per metric key seen, the first few.
  const keys = [];
  for (const row of state.rows) for (const key of Object.keys(row.values)) if (!keys.includes(key)) keys.push(key);
  return keys.slice(0, MAX_AUTO_CHARTS).map((key) => ({ title: key, keys: [key] }));
}

function ensureChart(spec) {
  if (state.charts.has(spec.title)) return state.charts.get(spec.title);
  const present = spec.keys.filter((key) => state.rows.some((row) => key in row.values));
  if (!present.length) return null;
  const box = make("figure", "chart");
  box.append(make("h3", "", spec.title));
  const holder = make("div", "chart-canvas");
  const canvas = make("canvas");
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", `${spec.title} by step`);
  holder.append(canvas);
  box.append(holder);
  el.charts.append(box);
  const chart = new window.Chart(canvas, {
    type: "line",
    data: {
      datasets: spec.keys.map((key, i) => ({
        label: key,
        data: [],
        borderColor: PALETTE[i % PALETTE.length],
        backgroundColor: PALETTE[i % PALETTE.length],
        borderWidth: 1.5,
        pointRadius: 0,
        pointHitRadius: 6,
        tension: 0.15,
      })),
    },
    options: {
      animation: false,
      maintainAspectRatio: false,
      parsing: false,
      normalized: true,
      interaction: { mode: "nearest", intersect: false },
      scales: {
        x: { type: "linear", title: { display: true, text: "step" }, ticks: { precision: 0 } },
        y: spec.unit === "fraction" ? { suggestedMin: 0, suggestedMax: 1 } : {},
      },
      plugins: { legend: { labels: { boxWidth: 12 } } },
    },
  });
  const entry = { chart, keys: spec.keys, canvas };
  state.charts.set(spec.title, entry);
  return entry;
}

function drawMetrics(newRows) {
  for (const spec of chartSpecs()) {
    const entry = ensureChart(spec);
    if (!entry) continue;
    // A chart made just now starts from every row; an existing one takes the new rows.
    const rows = entry.chart.data.datasets.every((d) => d.data.length === 0) ? state.rows : newRows;
    entry.keys.forEach((key, i) => {
      const data = entry.chart.data.datasets[i].data;
      for (const row of rows) if (key in row.values) data.push({ x: row.step, y: row.values[key] });
      // A single point (an evaluation at the end) is drawn as a dot.
      entry.chart.data.datasets[i].pointRadius = data.length === 1 ? 4 : 0;
    });
    entry.chart.update("none");
    entry.canvas.dataset.points = String(entry.chart.data.datasets.reduce((n, d) => n + d.data.length, 0));
  }
  el.chartsEmpty.hidden = state.charts.size > 0;
}

// --- Polling -------------------------------------------------------------------------------------

async function fetchMetrics() {
  const after = state.lastStep === null ? "" : `?after=${Math.max(state.lastStep - 1, 0)}`;
  const answer = await request(config.urls.metrics + after);
  if (!answer.ok) throw new Error(`metrics: HTTP ${answer.status}`);
  const fresh = [];
  for (const row of answer.body) {
    const id = `${row.step}|${row.created_at}`;
    if (state.seen.has(id)) continue;
    state.seen.add(id);
    fresh.push(row);
    state.lastStep = state.lastStep === null ? row.step : Math.max(state.lastStep, row.step);
  }
  if (fresh.length) {
    state.rows.push(...fresh);
    drawMetrics(fresh);
  }
}

async function tick() {
  try {
    const answer = await request(config.urls.job);
    if (!answer.ok) throw new Error(`job: HTTP ${answer.status}`);
    renderJob(answer.body);
    await fetchMetrics();
    state.failures = 0;
    el.pollError.hidden = true;
  } catch (error) {
    state.failures += 1;
    el.pollError.hidden = false;
    el.pollError.textContent = `Could not refresh (${error.message}); retrying…`;
  }
  if (FINISHED.has(state.job.status) && state.failures === 0) {
    document.body.dataset.polling = "stopped";
    return;
  }
  const delay = config.poll_ms * Math.min(2 ** state.failures, 8);
  state.timer = setTimeout(tick, delay);
}

// --- Cancel --------------------------------------------------------------------------------------

el.cancelForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!window.confirm("Cancel this job? A running job stops at its next step.")) return;
  el.cancel.disabled = true;
  const answer = await request(config.urls.cancel, { method: "POST" });
  if (answer.ok) {
    renderJob(answer.body);
  } else {
    el.cancel.disabled = false;
    el.pollError.hidden = false;
    el.pollError.textContent = (answer.body && answer.body.detail) || `Cancel failed (HTTP ${answer.status}).`;
  }
});

el.params.textContent = JSON.stringify(config.job.params, null, 2);
renderJob(config.job);
tick();
