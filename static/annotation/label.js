// The task page: rank a prompt's N completions, submit, and go straight on to the next task.
//
// Three ways to rank, all ending in place(id, zone):
//   keyboard  select a card with its letter or ← →, then 1..N (slot), F (fail), Backspace (clear)
//   mouse     drag a card's header or a chip onto a slot (pointer events, no library)
//   touch     tap a card (or chip), then tap a slot
// The rules (ties or swaps, F, clearing, what is missing, the payload) live in ranking_state.js,
// which has no DOM and its own tests; this module keeps one ranking per task, renders it, and
// builds the whole board anew (slots, F area, tray) for each task. Completion and prompt text
// are plain text, put on the page with textContent only; where the campaign renders markdown
// the server sends each as HTML it sanitised as it does the guidelines (renderBody).
//
// Submit posts to /api/assignments/{id}/ranking/?next=1: the answer carries the next task, so
// one request per task. The API is idempotent (the same ranking again answers 200), so retries
// after a network failure or a 503 are safe. Until the server has the ranking, it stays on the
// page and in sessionStorage (keyed by assignment id), so a reload loses nothing.
//
// The same page edits a submitted ranking (config.edit: its labels, comment and version): the
// board starts from it, Save sends PUT /api/assignments/{id}/ranking/ with the version edited
// (a new version; the server keeps the old one), then the labeller is back on their rankings.

import * as rules from "./ranking_state.js";

const { FAIL, LETTERS } = rules;
const RETRY_DELAYS_MS = [1000, 2000, 4000, 8000, 16000];
const TRANSIENT = new Set([502, 503, 504]);
const DRAG_THRESHOLD_PX = 6;
const REPEAT_MS = 700; // an unranked task shown this recently ignores Enter (a double press)

const config = JSON.parse(document.getElementById("label-config").textContent);
const editing = config.edit || null; // editing a submitted ranking, not ranking a new task
const csrfToken = document.querySelector("input[name=csrfmiddlewaretoken]").value;

const el = {
  task: document.getElementById("task"),
  taskTitle: document.getElementById("task-title"),
  taskId: document.getElementById("task-id"),
  prompt: document.getElementById("prompt-text"),
  cards: document.getElementById("cards"),
  slots: document.getElementById("slots"),
  failZone: document.getElementById("fail-zone"),
  tray: document.getElementById("tray"),
  tieNote: document.getElementById("tie-note"),
  validation: document.getElementById("validation"),
  error: document.getElementById("error"),
  submit: document.getElementById("submit"),
  skip: document.getElementById("skip"), // none when editing
  comment: document.getElementById("comment"),
  choices: document.getElementById("choices"),
  strength: document.getElementById("strength"),
  justification: document.getElementById("justification"),
  justificationBox: document.getElementById("justification-box"),
  keysN: document.getElementById("keys-n"),
  statToday: document.getElementById("stat-today"),
  statAvg: document.getElementById("stat-avg"),
  statTimer: document.getElementById("stat-timer"),
  done: document.getElementById("done"),
  doneTitle: document.getElementById("done-title"),
  doneText: document.getElementById("done-text"),
  panel: document.getElementById("guidelines-panel"),
  panelBody: document.getElementById("panel-body"),
  openGuidelines: document.getElementById("open-guidelines"),
  closeGuidelines: document.getElementById("close-guidelines"),
  skipDialog: document.getElementById("skip-dialog"),
  skipForm: document.getElementById("skip-form"),
  skipOther: document.getElementById("skip-other"),
  skipError: document.getElementById("skip-error"),
  skipCancel: document.getElementById("skip-cancel"),
};

const state = {
  assignment: null,
  ranking: null, // this task's ranking (ranking_state.js), replaced on every change
  chips: new Map(), // completion id -> its chip on the board, built anew for each task
  busy: false, // a submit or skip is in flight
  finished: false, // no task on the page any more
  timer: null,
  today: { count: config.today.count, avgMs: config.today.avg_ms },
};

// --- Small helpers -----------------------------------------------------------------------------

const url = (name, id) => config.urls[name].replace("{id}", String(id));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function clock(ms) {
  const seconds = Math.round(ms / 1000);
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`;
}

function make(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Plain text with ``` fenced blocks shown monospace. Everything goes in as textContent. */
function renderText(container, text) {
  container.replaceChildren();
  const lines = String(text).split("\n");
  const fence = /^\s*```/;
  let plain = [];
  const flush = () => {
    let chunk = plain.join("\n");
    if (container.lastChild && container.lastChild.tagName === "PRE") chunk = chunk.replace(/^\n/, "");
    if (chunk) container.append(make("div", "text", chunk));
    plain = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const close = fence.test(lines[i]) ? lines.findIndex((l, j) => j > i && /^\s*```\s*$/.test(l)) : -1;
    if (close === -1) {
      plain.push(lines[i]);
      continue;
    }
    if (plain.length && plain[plain.length - 1] === "") plain.pop(); // the blank line before a block
    flush();
    const pre = make("pre", "code");
    const lang = lines[i].trim().slice(3).trim();
    if (lang) pre.dataset.lang = lang;
    pre.append(make("code", "", lines.slice(i + 1, close).join("\n")));
    container.append(pre);
    i = close;
  }
  flush();
}

/**
 * A prompt's or completion's body: where the campaign renders markdown the server sends it as
 * HTML, sanitised exactly as the guidelines are (annotation/rendering.py: markdown-it without
 * raw HTML, then nh3's allow-list), and it goes in as that; otherwise plain text as above.
 */
function renderBody(container, text, html) {
  if (typeof html !== "string") {
    container.classList.remove("markdown");
    renderText(container, text);
    return;
  }
  container.classList.add("markdown");
  container.innerHTML = html; // sanitised on the server (see above)
}

// --- Visible time on the task ------------------------------------------------------------------

class VisibleTimer {
  constructor(startMs = 0) {
    this.total = startMs;
    this.since = document.visibilityState === "visible" ? performance.now() : null;
  }
  pause() {
    if (this.since !== null) this.total += performance.now() - this.since;
    this.since = null;
  }
  resume() {
    if (this.since === null) this.since = performance.now();
  }
  ms() {
    const running = this.since === null ? 0 : performance.now() - this.since;
    return Math.round(this.total + running);
  }
}

// --- Draft in sessionStorage -------------------------------------------------------------------

const draftKey = (id) => `rlhf:${editing ? "edit" : "ranking"}:${id}`;

function saveDraft() {
  if (!state.assignment || state.finished) return;
  try {
    sessionStorage.setItem(
      draftKey(state.assignment.id),
      JSON.stringify({
        labels: rules.savedLabels(state.ranking),
        strength: rules.savedStrength(state.ranking),
        elapsed_ms: state.timer.ms(),
        comment: el.comment.value,
        justification: el.justification.value,
      }),
    );
  } catch {
    // Storage full or disabled: the ranking still lives on the page.
  }
}

/** The saved [id, label] pairs (startRanking keeps only those valid for the task) and time. */
function loadDraft(assignment) {
  try {
    const draft = JSON.parse(sessionStorage.getItem(draftKey(assignment.id)) || "null");
    if (!draft && editing) {
      return {
        labels: editing.items,
        strength: rules.strengthFromLevels(assignment, editing.items, editing.strength),
        elapsedMs: 0,
        comment: editing.comment,
        justification: editing.justification || "",
      };
    }
    const list = (value) => (Array.isArray(value) ? value.filter(Array.isArray) : []);
    const text = (value) => (typeof value === "string" ? value : "");
    return {
      labels: list(draft?.labels),
      strength: list(draft?.strength),
      elapsedMs: Number(draft?.elapsed_ms) || 0,
      comment: text(draft?.comment),
      justification: text(draft?.justification),
    };
  } catch {
    return { labels: [], strength: [], elapsedMs: 0, comment: "", justification: "" };
  }
}

function dropDraft(id) {
  try {
    sessionStorage.removeItem(draftKey(id));
  } catch {
    // nothing to do
  }
}

// --- Building the task -------------------------------------------------------------------------

function completions() {
  return state.assignment ? state.assignment.completions : [];
}

function cardOf(id) {
  return el.cards.querySelector(`.completion[data-id="${id}"]`);
}

/** The board's zones, each with the element that holds its chips: slots, F area and tray. */
function boardZones() {
  return [...el.slots.children, el.failZone, el.tray].map((zone) => ({
    key: zone.dataset.zone,
    holder: zone.querySelector(".slot-cards"),
    zone,
  }));
}

function buildCard(completion, index) {
  const letter = LETTERS[index];
  const card = make("article", "completion");
  card.dataset.id = completion.id;
  card.id = `card-${letter}`;
  card.tabIndex = 0;
  card.setAttribute("aria-labelledby", `card-${letter}-title`);
  card.setAttribute("aria-describedby", `card-${letter}-rank`);
  card.setAttribute("aria-keyshortcuts", letter);

  const head = make("header", "completion-head");
  head.title = "Drag onto a rank slot";
  const title = make("h3", "completion-title");
  title.id = `card-${letter}-title`;
  title.append(make("span", "visually-hidden", "Completion "), make("span", "letter", letter));
  const rank = make("span", "rank-badge");
  rank.id = `card-${letter}-rank`;
  const expand = make("button", "small expand", "Expand");
  expand.append(" ", make("kbd", "", "X"));
  expand.setAttribute("aria-keyshortcuts", "X");
  expand.type = "button";
  expand.setAttribute("aria-expanded", "false");
  expand.setAttribute("aria-controls", `card-${letter}-body`);
  expand.hidden = true;
  head.append(make("span", "grip", "⠿"), title, rank, expand);
  head.firstChild.setAttribute("aria-hidden", "true");

  const body = make("div", "completion-body");
  body.id = `card-${letter}-body`;
  renderBody(body, completion.text, completion.html);
  card.append(head, body);
  return card;
}

function buildChip(completion, index) {
  const chip = make("button", "chip");
  chip.type = "button";
  chip.dataset.id = completion.id;
  const snippet = completion.text.replace(/```\S*/g, " ").replace(/\s+/g, " ").trim();
  chip.append(
    make("span", "chip-letter", LETTERS[index]),
    make("span", "chip-snippet", snippet.length > 48 ? `${snippet.slice(0, 47)}…` : snippet),
  );
  return chip;
}

function buildSlot(rank, n) {
  const slot = make("li", "slot");
  slot.dataset.zone = String(rank);
  const target = make("button", "slot-target", String(rank));
  target.type = "button";
  const caption = rank === 1 ? "best" : rank === n ? "worst" : "";
  target.setAttribute(
    "aria-label",
    `Rank ${rank}${caption ? ` (${caption})` : ""}: put the selected card here`,
  );
  const cards = make("div", "slot-cards");
  slot.append(target, make("span", "slot-caption", caption), cards);
  return slot;
}

function renderPrompt(prompt) {
  el.prompt.replaceChildren();
  const messages = Array.isArray(prompt.messages) ? prompt.messages : [];
  const rendered = Array.isArray(prompt.messages_html) ? prompt.messages_html : [];
  if (messages.length > 1) {
    for (const [index, message] of messages.entries()) {
      const block = make("div", `message message-${message.role || "user"}`);
      block.append(make("span", "message-role", String(message.role || "user")));
      const content = make("div", "message-content");
      const body = message.content;
      renderBody(content, typeof body === "string" ? body : JSON.stringify(body), rendered[index]);
      block.append(content);
      el.prompt.append(block);
    }
  } else {
    renderBody(el.prompt, prompt.text, prompt.html);
  }
}

/** Show a task: every piece of the previous task's state and board is replaced, none kept. */
function showTask(assignment, { initial = false } = {}) {
  if (state.timer) state.timer.pause();
  endDrag();
  state.assignment = assignment;
  state.finished = false;
  const draft = loadDraft(assignment);
  state.ranking = rules.startRanking(assignment, draft.labels, draft.strength);
  state.timer = new VisibleTimer(draft.elapsedMs);
  el.comment.value = draft.comment; // this task's comment, never the last task's
  el.justification.value = draft.justification;
  el.justificationBox.hidden = state.ranking.scale !== "helpsteer";
  for (const node of document.querySelectorAll(".keys-strength")) {
    node.hidden = state.ranking.scale === "none";
  }
  state.shownAt = performance.now();

  const n = assignment.completions.length;
  // The assignment's number, the labeller's own: a task id would be the same for every labeller
  // of a gold task and would tell gold tasks apart by the order they were imported in.
  el.taskId.textContent = `· #${assignment.id}`;
  renderPrompt(assignment.prompt);
  el.cards.replaceChildren(...assignment.completions.map(buildCard));
  el.slots.replaceChildren(...Array.from({ length: n }, (_, i) => buildSlot(i + 1, n)));
  clearBoard();
  state.chips = new Map(assignment.completions.map((c, i) => [c.id, buildChip(c, i)]));
  el.failZone.hidden = !assignment.allow_fail;
  el.keysN.textContent = String(n);
  const pairwise = rules.isPairwise(state.ranking);
  el.task.classList.toggle("is-pairwise", pairwise);
  el.choices.hidden = !pairwise;
  el.choices.replaceChildren(
    ...(pairwise ? rules.pairwiseChoices(state.ranking) : []).map(({ key, choice, text }) => {
      const button = make("button", "choice", text);
      button.type = "button";
      button.dataset.choice = choice;
      button.setAttribute("aria-keyshortcuts", key);
      button.append(" ", make("kbd", "", key));
      return button;
    }),
  );
  for (const node of document.querySelectorAll(".keys-ranked")) node.hidden = pairwise;
  for (const node of document.querySelectorAll(".keys-pairwise")) node.hidden = !pairwise;
  el.tieNote.textContent = assignment.allow_ties
    ? "Two cards in one slot is a tie: keep ties for answers that are genuinely equally good, " +
      "and use them sparingly."
    : "No ties in this campaign: a card put on a taken slot swaps places with the card there.";
  el.task.hidden = false;
  el.done.hidden = true;
  clearError();

  const path = url("assignment", assignment.id);
  if (!editing && window.location.pathname !== path) window.history.replaceState(null, "", path);
  document.title = `${editing ? "Edit" : "Rank"} · #${assignment.id} · ${config.campaign.name}`;

  update();
  markExpandable();
  if (!initial) {
    window.scrollTo(0, 0);
    el.taskTitle.focus({ preventScroll: true });
  }
}

function markExpandable() {
  for (const card of el.cards.querySelectorAll(".completion")) {
    const body = card.querySelector(".completion-body");
    card.querySelector(".expand").hidden =
      body.scrollHeight <= body.clientHeight + 2 && !card.classList.contains("is-expanded");
  }
}

/** Empty the F area and the tray (the slots are built anew with each task). */
function clearBoard() {
  for (const { holder } of boardZones()) holder.replaceChildren();
}

function showDone(title, text) {
  state.finished = true;
  state.assignment = null;
  state.ranking = null;
  state.chips = new Map();
  endDrag();
  clearBoard();
  el.task.hidden = true;
  el.done.hidden = false;
  el.doneTitle.textContent = title;
  el.doneText.textContent = text;
  el.doneTitle.focus();
  window.history.replaceState(null, "", config.urls.label);
}

// --- State → page ------------------------------------------------------------------------------

/** Render the ranking: each card's badge, and in each zone exactly its own chips, in order. */
function update(echo = "") {
  const ranking = state.ranking;
  if (!ranking) return;
  for (const [index, c] of completions().entries()) {
    const label = rules.labelOf(ranking, c.id);
    const card = cardOf(c.id);
    const selected = ranking.selected === c.id;
    card.classList.toggle("is-selected", selected);
    card.classList.toggle("is-ranked", Number.isInteger(label));
    card.classList.toggle("is-fail", label === FAIL);
    if (selected) card.setAttribute("aria-current", "true");
    else card.removeAttribute("aria-current");
    const badge = card.querySelector(".rank-badge");
    badge.textContent = rules.labelText(label);
    badge.dataset.label = label === undefined ? "" : String(label);

    const chip = state.chips.get(c.id);
    chip.classList.toggle("is-selected", selected);
    const name = `Completion ${LETTERS[index]}: ${rules.labelText(label).toLowerCase()}`;
    chip.setAttribute("aria-label", selected ? `${name}, selected` : name);
    chip.setAttribute("aria-pressed", String(selected));
  }
  // A zone whose chips differ from the ranking's gets them replaced: nothing else can stay.
  const byZone = rules.zones(ranking);
  for (const { key, holder, zone } of boardZones()) {
    const chips = (byZone[key] || []).map((id) => state.chips.get(id));
    const shown = holder.children;
    if (chips.length !== shown.length || chips.some((chip, i) => shown[i] !== chip)) {
      holder.replaceChildren(...chips);
    }
    zone.classList.toggle("is-empty", chips.length === 0);
    if (zone.parentElement === el.slots) zone.classList.toggle("is-tie", chips.length > 1);
  }

  renderStrength(ranking);
  const chosen = rules.choiceOf(ranking);
  for (const button of el.choices.querySelectorAll("[data-choice]")) {
    button.setAttribute("aria-pressed", String(button.dataset.choice === chosen));
  }
  const { text, complete } = rules.validation(ranking, echo);
  el.validation.textContent = text;
  el.validation.classList.toggle("is-complete", complete);
  el.submit.disabled = state.busy || state.finished || !complete;
  saveDraft();
}

// --- Ranking actions ---------------------------------------------------------------------------

function showSelected({ focus = true, scroll = true } = {}) {
  const card = cardOf(state.ranking.selected);
  if (!card) return;
  if (focus) card.focus({ preventScroll: true });
  if (scroll) card.scrollIntoView({ block: "nearest" });
}

function select(id, options = {}) {
  if (!state.ranking || !rules.hasCard(state.ranking, id)) return;
  state.ranking = rules.select(state.ranking, id);
  update();
  showSelected(options);
}

/** Take a rule's answer: the new ranking and what happened (or why nothing did). */
function apply({ ranking, message }) {
  const before = state.ranking;
  state.ranking = ranking;
  if (ranking !== before) clearError();
  update(message);
  if (ranking.selected !== before.selected) showSelected();
}

/** Put a card in a zone: a rank 1..N, "F", or null (not ranked). */
function place(id, zone) {
  if (!state.assignment || !state.ranking || state.busy) return;
  apply(rules.place(state.ranking, id, zone));
}

/** Put the selected card in a zone, then select the next card not yet ranked. */
function placeSelected(zone) {
  if (!state.assignment || !state.ranking || state.busy) return;
  apply(rules.placeSelected(state.ranking, zone));
}

/** How much better: one row per gap between adjacent ranks, its levels as buttons. */
function renderStrength(ranking) {
  const gaps = rules.strengthGaps(ranking);
  el.strength.hidden = ranking.scale === "none";
  if (ranking.scale === "none") return;
  const current = rules.currentGap(ranking);
  const choices = rules.strengthChoices(ranking);
  const rows = gaps.map((gap) => {
    const row = make("div", "strength-gap");
    row.classList.toggle("is-current", current !== null && gap.key === current.key);
    row.append(make("span", "strength-name", `${gap.upper.join("=")} over ${gap.lower.join("=")}`));
    for (const { key, level, text } of choices) {
      const button = make("button", "small strength-level", text);
      button.type = "button";
      button.dataset.gap = gap.key;
      button.dataset.level = String(level);
      button.setAttribute("aria-pressed", String(gap.level === level));
      button.setAttribute("aria-label", `${gap.upper.join(" and ")} over ${gap.lower.join(" and ")}: ${text}`);
      button.append(" ", make("kbd", "", `⇧${key}`));
      row.append(button);
    }
    return row;
  });
  const hint = gaps.length ? [] : [make("p", "hint", "Rank the cards apart, then say how much better.")];
  el.strength.replaceChildren(make("span", "strength-title", "How much better?"), ...hint, ...rows);
}

/** Give the gap the level (its button, or Shift+1..4 on the current gap). */
function strengthFor(key, level) {
  if (!state.assignment || !state.ranking || state.busy) return;
  apply(rules.setStrength(state.ranking, key, level));
}

/** Pairwise layout: set both cards with one choice (A better, B better, tie, both F). */
function choose(choice) {
  if (!state.assignment || !state.ranking || state.busy) return;
  apply(rules.choose(state.ranking, choice));
}

/** Expand a long card to its full length, or collapse it again (the X key, or its button). */
function toggleExpand(card) {
  if (!card) return;
  const button = card.querySelector(".expand");
  const open = card.classList.toggle("is-expanded");
  button.setAttribute("aria-expanded", String(open));
  button.textContent = open ? "Collapse" : "Expand";
  button.append(" ", make("kbd", "", "X"));
  if (open) card.scrollIntoView({ block: "nearest" });
  markExpandable();
}

/**
 * Scroll the selected card's answer by a few lines (or a page) with ↑ ↓ (PageUp/PageDown); a
 * card shown whole scrolls the page instead. Answers whether the card scrolled.
 */
function scrollSelected(direction, page) {
  const card = state.ranking && cardOf(state.ranking.selected);
  if (!card) return false;
  const scroller = card.classList.contains("is-expanded") ? null : card.querySelector(".completion-body");
  if (!scroller || scroller.scrollHeight <= scroller.clientHeight + 2) return false;
  const atEnd =
    direction > 0
      ? scroller.scrollTop + scroller.clientHeight >= scroller.scrollHeight - 2
      : scroller.scrollTop <= 0;
  if (atEnd) return false;
  const step = page ? scroller.clientHeight * 0.9 : 60;
  scroller.scrollBy({ top: direction * step, behavior: "instant" });
  return true;
}

function moveSelection(step) {
  if (!state.ranking) return;
  select(rules.moveSelection(state.ranking, step).selected);
}

// --- Talking to the API ------------------------------------------------------------------------

async function readJSON(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

/** POST (or PUT) JSON; on a network failure or 502/503/504, retry with backoff and say so. */
async function post(path, body, { onRetry, method = "POST" } = {}) {
  for (let attempt = 0; ; attempt++) {
    let response;
    try {
      response = await fetch(path, {
        method,
        credentials: "same-origin",
        headers: {
          "Content-Type": "application/json",
          Accept: "application/json",
          "X-CSRFToken": csrfToken,
        },
        body: JSON.stringify(body),
      });
    } catch {
      response = null; // offline, DNS, connection reset: the request may or may not have arrived
    }
    if (response && !TRANSIENT.has(response.status)) {
      return { response, data: response.status === 204 ? null : await readJSON(response) };
    }
    if (attempt >= RETRY_DELAYS_MS.length) return { response, data: null, gaveUp: true };
    const retryAfter = response ? Number(response.headers.get("Retry-After")) * 1000 || 0 : 0;
    const wait = Math.max(RETRY_DELAYS_MS[attempt], retryAfter);
    const of = RETRY_DELAYS_MS.length + 1;
    if (onRetry) onRetry({ offline: response === null, wait, attempt: attempt + 2, of });
    await sleep(wait);
  }
}

function showError(text, { action = null, transient = false } = {}) {
  el.error.replaceChildren(make("span", "", text));
  if (action) {
    const link = make("a", "button small", action.label);
    link.href = action.href;
    el.error.append(" ", link);
  }
  el.error.classList.toggle("is-transient", transient);
  el.error.hidden = false;
}

function clearError() {
  el.error.hidden = true;
  el.error.replaceChildren();
}

function setBusy(busy, label) {
  state.busy = busy;
  el.submit.textContent = "";
  const idle = editing ? "Save changes " : "Submit ";
  el.submit.append(label || idle, ...(label ? [] : [make("kbd", "", "Enter")]));
  el.submit.setAttribute("aria-busy", String(busy));
  if (el.skip) el.skip.disabled = busy;
  update();
}

function retryMessage(what) {
  return ({ offline, wait, attempt, of }) =>
    showError(
      `${offline ? "No connection to the server" : "The server is busy"}: trying to ${what} ` +
        `again in ${Math.round(wait / 1000)} s (attempt ${attempt} of ${of}). Your ranking is kept.`,
      { transient: true },
    );
}

function explain(response, data, gaveUp) {
  const detail = data && typeof data.detail === "string" ? data.detail : "";
  if (gaveUp) {
    return (
      "Could not reach the server. Your ranking is kept on this page (a reload keeps it too): " +
      "press Submit to try again."
    );
  }
  const status = response.status;
  if (status === 400) {
    return `The server did not accept this ranking: ${detail || "invalid input"}. Your ranking is kept.`;
  }
  if (status === 401 || (status === 403 && data && data.code === "not_authenticated")) {
    return "You have been logged out. Log in again in another tab, then press Submit: your ranking is kept.";
  }
  if (status === 403 && detail.includes("CSRF")) {
    return (
      "Your session changed (did you log in again in another tab?). " +
      "Reload the page: your ranking is kept."
    );
  }
  if (status === 403 || status === 404) {
    return `This task is no longer open to you${detail ? ` (${detail})` : ""}.`;
  }
  if (status === 409) return `${detail.charAt(0).toUpperCase()}${detail.slice(1)}.`;
  return `The server had a problem (error ${status}). Your ranking is kept: press Submit to try again.`;
}

async function submit() {
  const a = state.assignment;
  if (!a || state.busy || state.finished) return;
  const left = rules.missing(state.ranking);
  if (left.length === a.completions.length && performance.now() - state.shownAt < REPEAT_MS) {
    return; // an Enter repeated from the task just submitted: keep "Next task loaded" shown
  }
  const items = rules.payload(state.ranking);
  if (!items) {
    update(rules.notReady(state.ranking));
    el.validation.classList.add("is-blocked");
    setTimeout(() => el.validation.classList.remove("is-blocked"), 600);
    return;
  }
  const body = {
    items,
    time_spent_ms: state.timer.ms(),
    comment: el.comment.value.trim(),
  };
  if (state.ranking.scale !== "none") {
    body.strength = rules.strengthPayload(state.ranking);
    body.justification = el.justification.value.trim();
  }
  if (editing) body.version = editing.version;
  setBusy(true, editing ? "Saving…" : "Submitting…");
  clearError();
  const { response, data, gaveUp } = await post(
    editing ? url("ranking", a.id) : `${url("ranking", a.id)}?next=1`,
    body,
    { onRetry: retryMessage(editing ? "save" : "submit"), method: editing ? "PUT" : "POST" },
  );
  setBusy(false);
  if (editing && response && response.ok && data) {
    dropDraft(a.id);
    state.finished = true;
    window.location.assign(`${config.urls.history}#ranking-${data.id}`);
    return;
  }
  if (response && response.ok && data) {
    onSubmitted(a, data, response.status === 201, body.time_spent_ms);
    return;
  }
  const detail = data && typeof data.detail === "string" ? data.detail : "";
  const gone =
    response &&
    [403, 404, 409].includes(response.status) &&
    !(data && data.code === "not_authenticated") &&
    !detail.includes("CSRF");
  const back = editing
    ? { label: "Back to your rankings", href: config.urls.history }
    : { label: "Go to your next task", href: config.urls.label };
  showError(explain(response, data, gaveUp), { action: gone ? back : null });
}

function onSubmitted(assignment, data, created, timeMs) {
  dropDraft(assignment.id);
  state.timer.pause();
  if (created) {
    const count = state.today.count + 1;
    state.today.avgMs = (state.today.avgMs * state.today.count + timeMs) / count;
    state.today.count = count;
  }
  const next = data.next || { assignment: null, reason: "none_left", detail: "" };
  if (next.assignment) {
    showTask(next.assignment);
    update("Submitted. Next task loaded.");
  } else {
    handleNoTask(next.reason, next.detail, "Submitted.");
  }
  tick();
}

function handleNoTask(reason, detail, prefix = "") {
  if (reason === "guidelines_not_acknowledged") {
    const gate = `${config.urls.guidelines}?next=${encodeURIComponent(config.urls.label)}`;
    state.finished = true;
    window.location.assign(gate);
    return;
  }
  if (reason === "none_left") {
    const text = "You have ranked every task available to you in this campaign. Thank you!";
    showDone("All done", `${prefix} ${text}`.trim());
  } else {
    const text = detail
      ? `${detail.charAt(0).toUpperCase()}${detail.slice(1)}.`
      : "There is no task for you right now.";
    const title = reason === "onboarding_failed" ? "Qualification not passed" : "No tasks right now";
    showDone(title, `${prefix} ${text}`.trim());
  }
}

async function skip(reason) {
  const a = state.assignment;
  if (!a || state.busy) return;
  setBusy(true);
  clearError();
  const skipped = await post(url("skip", a.id), { reason }, { onRetry: retryMessage("skip") });
  if (!skipped.response || !skipped.response.ok) {
    setBusy(false);
    showError(explain(skipped.response, skipped.data, skipped.gaveUp).replace("ranking", "skip"));
    return;
  }
  dropDraft(a.id);
  const next = await post(config.urls.next_task, {}, { onRetry: retryMessage("load the next task") });
  setBusy(false);
  const status = next.response ? next.response.status : 0;
  if (status === 200 && next.data) {
    showTask(next.data);
    update("Skipped. Next task loaded.");
  } else if (status === 204) {
    handleNoTask("none_left", "", "Skipped.");
  } else if (next.data && next.data.code) {
    handleNoTask(next.data.code, next.data.detail, "Skipped.");
  } else {
    showDone("Skipped", "The task was skipped, but the next one could not be loaded. Check for new tasks.");
  }
}

// --- Guidelines panel and skip dialog ----------------------------------------------------------

function togglePanel(open) {
  if (!el.panel) return;
  const show = open === undefined ? el.panel.hidden : open;
  const hadFocus = el.panel.contains(document.activeElement);
  el.panel.hidden = !show;
  el.openGuidelines.setAttribute("aria-expanded", String(show));
  document.body.classList.toggle("panel-open", show);
  if (show) el.panelBody.focus();
  else if (hadFocus) (cardOf(state.ranking?.selected) || el.openGuidelines).focus();
}

function openSkip() {
  if (!state.assignment || state.busy || editing) return;
  el.skipError.textContent = "";
  el.skipForm.reset();
  el.skipDialog.showModal();
}

el.skipForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const choice = el.skipForm.elements.reason.value;
  const reason = choice === "other" ? el.skipOther.value.trim() : choice;
  if (!reason) {
    el.skipError.textContent = "Say why you skip this task.";
    el.skipOther.focus();
    return;
  }
  el.skipDialog.close();
  skip(reason);
});
el.comment.addEventListener("input", saveDraft);
el.justification.addEventListener("input", saveDraft);
el.skipOther.addEventListener("input", () => {
  if (el.skipOther.value) el.skipForm.elements.reason.value = "other";
});
el.skipCancel.addEventListener("click", () => el.skipDialog.close());
if (el.skip) el.skip.addEventListener("click", openSkip);
el.submit.addEventListener("click", submit);
if (el.panel) {
  el.openGuidelines.addEventListener("click", () => togglePanel());
  el.closeGuidelines.addEventListener("click", () => togglePanel(false));
}

// --- Clicks and taps ---------------------------------------------------------------------------

document.addEventListener("click", (event) => {
  const target = event.target;
  if (!(target instanceof Element) || !state.assignment) return;
  const expand = target.closest(".expand");
  if (expand) {
    toggleExpand(expand.closest(".completion"));
    return;
  }
  const choice = target.closest("[data-choice]");
  if (choice) {
    choose(choice.dataset.choice);
    return;
  }
  const level = target.closest("[data-level]");
  if (level) {
    strengthFor(level.dataset.gap, Number(level.dataset.level));
    return;
  }
  const chip = target.closest(".chip");
  if (chip) {
    select(Number(chip.dataset.id));
    return;
  }
  const zone = target.closest(".board [data-zone]");
  if (zone) {
    placeSelected(rules.zoneLabel(zone.dataset.zone));
    return;
  }
  const card = target.closest(".completion");
  if (card) select(Number(card.dataset.id), { scroll: false });
});

// --- Drag and drop (pointer events: mouse, pen and touch alike) --------------------------------

let drag = null;
let swallowClick = false;

function zoneAt(x, y) {
  const hit = document.elementFromPoint(x, y);
  return hit ? hit.closest(".board [data-zone]") : null;
}

function endDrag() {
  if (!drag) return;
  if (drag.ghost) drag.ghost.remove();
  if (drag.over) drag.over.classList.remove("is-over");
  document.body.classList.remove("is-dragging");
  drag = null;
}

document.addEventListener("pointerdown", (event) => {
  if (event.button !== 0 || !state.assignment || state.busy) return;
  const target = event.target;
  if (!(target instanceof Element)) return;
  const chip = target.closest(".chip");
  const head = chip ? null : target.closest(".completion-head");
  // Card headers drag with a mouse or pen only: on touch screens they scroll the page.
  if (!chip && (!head || event.pointerType === "touch" || target.closest("button"))) return;
  const id = Number((chip || head.closest(".completion")).dataset.id);
  if (!state.ranking || !rules.hasCard(state.ranking, id)) return;
  drag = { id, x: event.clientX, y: event.clientY, pointerId: event.pointerId, ghost: null, over: null };
});

document.addEventListener("pointermove", (event) => {
  if (!drag || event.pointerId !== drag.pointerId) return;
  if (!drag.ghost) {
    if (Math.hypot(event.clientX - drag.x, event.clientY - drag.y) < DRAG_THRESHOLD_PX) return;
    const letter = rules.letterOf(state.ranking, drag.id);
    drag.ghost = make("div", "drag-ghost", letter);
    drag.ghost.setAttribute("aria-hidden", "true");
    document.body.append(drag.ghost);
    document.body.classList.add("is-dragging");
    window.getSelection()?.removeAllRanges();
  }
  event.preventDefault();
  drag.ghost.style.transform = `translate(${event.clientX + 8}px, ${event.clientY + 8}px)`;
  const over = zoneAt(event.clientX, event.clientY);
  if (over !== drag.over) {
    if (drag.over) drag.over.classList.remove("is-over");
    if (over) over.classList.add("is-over");
    drag.over = over;
  }
});

document.addEventListener("pointerup", (event) => {
  if (!drag || event.pointerId !== drag.pointerId) return;
  if (drag.ghost) {
    // The click that may follow this pointerup (same input task) ends a drag: it is not a tap.
    swallowClick = true;
    setTimeout(() => {
      swallowClick = false;
    }, 0);
    const zone = zoneAt(event.clientX, event.clientY);
    const id = drag.id;
    endDrag();
    if (zone && state.ranking) {
      state.ranking = rules.select(state.ranking, id);
      place(id, rules.zoneLabel(zone.dataset.zone));
    }
    return;
  }
  endDrag();
});

document.addEventListener("pointercancel", endDrag);
window.addEventListener(
  "click",
  (event) => {
    if (swallowClick) {
      swallowClick = false;
      event.stopPropagation();
      event.preventDefault();
    }
  },
  true,
);

// --- Keyboard ----------------------------------------------------------------------------------

document.addEventListener("keydown", (event) => {
  if (event.defaultPrevented || event.isComposing || el.skipDialog.open) return;
  const target = event.target instanceof Element ? event.target : document.body;
  const key = event.key;
  if (target === el.comment || target === el.justification) {
    // In the comment box keys type text; Ctrl+Enter still submits, Esc goes back to the cards.
    if (key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      submit();
    } else if (key === "Escape") {
      event.preventDefault();
      showSelected({ scroll: false });
    }
    return;
  }
  if (target.closest("input, textarea, select, [contenteditable]")) return;
  const pairwise = Boolean(state.ranking && rules.isPairwise(state.ranking));
  const todo = rules.keyAction(
    key,
    { ctrl: event.ctrlKey, meta: event.metaKey, alt: event.altKey, shift: event.shiftKey, code: event.code },
    { n: completions().length, pairwise },
  );
  if (!todo) return;
  if (todo.action === "escape") {
    if (drag) endDrag();
    else if (el.panel && !el.panel.hidden) togglePanel(false);
    return;
  }
  if (todo.action === "submit") {
    // Enter on a focused button or link is that button's; Ctrl+Enter always submits.
    if (todo.force || !target.closest("button, a, summary")) {
      event.preventDefault();
      submit();
    }
    return;
  }
  if (todo.action === "guidelines") {
    event.preventDefault();
    togglePanel();
    return;
  }
  if (!state.assignment || state.finished) return;
  if (el.panel && el.panel.contains(target)) return; // arrows and letters scroll the guidelines
  if (todo.action === "scroll") {
    // The selected card's long answer scrolls first; at its end the page scrolls as usual.
    if (scrollSelected(todo.direction, todo.page)) event.preventDefault();
    return;
  }
  event.preventDefault();
  if (todo.action === "move") moveSelection(todo.step);
  else if (todo.action === "place") placeSelected(todo.zone);
  else if (todo.action === "choose") choose(todo.choice);
  else if (todo.action === "strength") {
    const gap = rules.currentGap(state.ranking);
    const level = rules.strengthChoices(state.ranking)[todo.choice - 1];
    if (gap && level) strengthFor(gap.key, level.level);
    else update(state.ranking.scale === "none" ? "" : "Rank two cards apart first.");
  }
  else if (todo.action === "clear") {
    if (state.ranking.selected !== null) place(state.ranking.selected, null);
  } else if (todo.action === "expand") toggleExpand(cardOf(state.ranking.selected));
  else if (todo.action === "skip") openSkip();
  else if (todo.action === "select") select(completions()[todo.index].id);
});

// --- Clock, visibility and start ---------------------------------------------------------------

function tick() {
  el.statToday.textContent = String(state.today.count);
  el.statAvg.textContent = state.today.count ? clock(state.today.avgMs) : "–";
  el.statTimer.textContent = state.timer && !state.finished ? clock(state.timer.ms()) : "–";
}

document.addEventListener("visibilitychange", () => {
  if (!state.timer) return;
  if (document.visibilityState === "visible") state.timer.resume();
  else {
    state.timer.pause();
    saveDraft();
  }
});
window.addEventListener("pagehide", saveDraft);
window.addEventListener("resize", () => state.assignment && markExpandable());
setInterval(tick, 1000);

showTask(config.assignment, { initial: true });
tick();
