// "Models & rounds": each round with a job in progress follows it live. The card's
// <p class="round-live" data-job-url=…> is polled every data-poll-ms while the job is queued or
// running; its progress bar, status and (for a whole round) current step are updated, and the
// round's badge says what the job is doing (as training.rounds.round_state does on the server).
// When the job ends the page reloads, so the card shows what the job produced (the chain, the
// evaluation, the next campaign) as the server renders it.
import { make, request } from "./common.js";

const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const STATUS_TEXT = { queued: "Queued", running: "Running", succeeded: "Succeeded", failed: "Failed", cancelled: "Cancelled" };

function percent(job) {
  return job.progress_total ? Math.round((100 * job.progress_step) / job.progress_total) : 0;
}

/** What the live line says: the job's status and progress, and the step a whole round is on. */
export function describe(job) {
  const status = job.waiting_for_queue ? "Waiting for the queue" : STATUS_TEXT[job.status] || job.status;
  const parts = [status];
  if (job.progress_total) parts.push(`${percent(job)}%`);
  const current = (job.steps || []).find((step) => !FINISHED.has(step.status));
  if (current) {
    const index = job.steps.indexOf(current) + 1;
    const total = current.progress_total ? ` ${current.progress_step}/${current.progress_total}` : "";
    parts.push(`step ${index}/3: ${current.kind.replace("_", " ")} #${current.id}${total}`);
  }
  return parts.join(" · ");
}

/** The round's state while its unfinished job works on it: waiting, queued, training or
 * generating (a whole round: from the step it is on). */
export function roundState(job) {
  if (job.waiting_for_queue) return { key: "waiting", label: "Waiting for the queue", badge: "badge-queued" };
  if (job.status === "queued") return { key: "queued", label: "Queued", badge: "badge-queued" };
  let kind = job.kind;
  if (kind === "round") {
    const steps = job.steps || [];
    const current = steps.find((step) => !FINISHED.has(step.status));
    const updated = steps.some((step) => step.status === "succeeded" && (step.kind === "ppo" || step.kind === "dpo"));
    kind = current ? current.kind : updated ? "generate" : "reward_model";
  }
  if (kind === "generate") return { key: "generating", label: "Generating", badge: "badge-running" };
  return { key: "training", label: "Training", badge: "badge-running" };
}

function follow(line) {
  const bar = line.querySelector("progress");
  const card = line.closest(".round");
  const badge = card && card.querySelector(".round-state");
  const text = line.querySelector(".round-live-text");
  const poll = Number(line.dataset.pollMs) || 2000;
  let failures = 0;

  async function tick() {
    try {
      const answer = await request(line.dataset.jobUrl);
      if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
      const job = answer.body;
      failures = 0;
      bar.max = job.progress_total || 1;
      bar.value = job.progress_step || 0;
      text.textContent = describe(job);
      line.dataset.status = job.status;
      if (FINISHED.has(job.status)) {
        window.location.reload();
        return;
      }
      if (badge) {
        const state = roundState(job);
        badge.className = `badge ${state.badge} round-state`;
        badge.dataset.state = state.key;
        badge.textContent = state.label;
      }
    } catch (error) {
      failures += 1;
      text.textContent = `Could not refresh (${error.message}); retrying…`;
    }
    setTimeout(tick, poll * Math.min(2 ** failures, 8));
  }
  tick();
}

for (const line of document.querySelectorAll(".round-live[data-job-url]")) {
  if (!line.querySelector(".round-live-text")) line.append(make("span", "round-live-text small"));
  follow(line);
}
