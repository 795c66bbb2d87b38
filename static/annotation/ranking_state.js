// The ranking rules of the task page, with no DOM: label.js renders what these functions return.
//
// A ranking is the state of one task: its cards in display order (each named by a letter), the
// label of each card (a rank 1..N or "F"; a card with no label is in the "not ranked" tray) and
// the selected card. Every function returns a new ranking and never changes the one it was
// given, so a page that starts each task with startRanking() cannot carry anything over from
// the task before. tests/js/ranking_state.test.mjs runs these rules under `node --test`.
//
// The rules:
//   - a slot may hold several cards (a tie) only where the campaign allows ties; otherwise the
//     card put there swaps places with the card already there (which goes where the moved card
//     was, or back to the tray);
//   - F (fail) only where the campaign allows it; a card is cleared back to the tray with null;
//   - placing the selected card selects the next card not yet ranked, after it in display order;
//   - a ranking is complete when every card has a label; only then is there a payload.

export const LETTERS = Object.freeze(["A", "B", "C", "D", "E", "H", "I", "J", "K"]); // no F, no G
export const FAIL = "F";

/**
 * A fresh ranking for one task. ``task`` is the assignment as the API sends it
 * (``completions: [{id, ...}]``, ``allow_ties``, ``allow_fail``); ``saved`` are [id, label]
 * pairs from a draft, of which only those valid for this task are kept.
 */
export function startRanking(task, saved = [], savedStrength = []) {
  const ids = task.completions.map((c) => c.id);
  const scale = STRENGTH_LEVELS[task.strength_scale] ? task.strength_scale : "none";
  const base = {
    ids: Object.freeze(ids),
    allowTies: Boolean(task.allow_ties),
    allowFail: Boolean(task.allow_fail),
    scale,
    labels: new Map(),
    strength: new Map(),
    selected: null,
  };
  const labels = new Map((saved || []).filter(([id, label]) => isValid(base, id, label)));
  const levels = STRENGTH_LEVELS[scale] || [];
  const strength = new Map(
    (savedStrength || []).filter(
      (entry) => Array.isArray(entry) && typeof entry[0] === "string" && levels.includes(entry[1]),
    ),
  );
  const first = ids.find((id) => !labels.has(id));
  const ranking = { ...base, labels, strength, selected: first === undefined ? (ids[0] ?? null) : first };
  return freeze({ ...ranking, strength: keptStrength(ranking, strength) });
}

// --- Reading a ranking -------------------------------------------------------------------------

export const slotCount = (ranking) => ranking.ids.length;
export const hasCard = (ranking, id) => ranking.ids.includes(id);
export const labelOf = (ranking, id) => ranking.labels.get(id);

/** The card's letter: A for the first card, and so on (F and G are keys of their own). */
export function letterOf(ranking, id) {
  return LETTERS[ranking.ids.indexOf(id)];
}

/** How a label reads on a card's badge and in a chip's name. */
export function labelText(label) {
  if (label === FAIL) return "F: fail";
  if (label === undefined) return "Not ranked";
  return `Rank ${label}`;
}

/** A zone's ``data-zone`` value as a label: "" is the tray (null), "F" fail, else a rank. */
export function zoneLabel(value) {
  if (value === "") return null;
  return value === FAIL ? FAIL : Number(value);
}

/** The cards of each zone in display order: {"1": [...], ..., "N": [...], F: [...], "": [...]}. */
export function zones(ranking) {
  const board = { F: [], "": [] };
  for (let rank = 1; rank <= slotCount(ranking); rank++) board[String(rank)] = [];
  for (const id of ranking.ids) {
    const label = ranking.labels.get(id);
    board[label === undefined ? "" : String(label)].push(id);
  }
  return board;
}

/** The cards still without a label, in display order. */
export function missing(ranking) {
  return ranking.ids.filter((id) => !ranking.labels.has(id));
}

export const isComplete = (ranking) => missing(ranking).length === 0;

/** The tied slots as [rank, letters], lowest rank first: [[2, ["B", "C"]]]. */
export function ties(ranking) {
  const bySlot = new Map();
  for (const id of ranking.ids) {
    const label = ranking.labels.get(id);
    if (Number.isInteger(label)) {
      bySlot.set(label, [...(bySlot.get(label) || []), letterOf(ranking, id)]);
    }
  }
  return [...bySlot].filter(([, letters]) => letters.length > 1).sort((a, b) => a[0] - b[0]);
}

/** "A", "A and B", "A, B and C". */
export function listWords(words) {
  if (words.length <= 1) return words.join("");
  return `${words.slice(0, -1).join(", ")} and ${words[words.length - 1]}`;
}

/**
 * The line under the board: ``echo`` (what just happened), what is missing, the ties. An echo
 * that already says what is missing (notReady) is not followed by the same list again.
 */
export function validation(ranking, echo = "") {
  const left = missing(ranking).map((id) => letterOf(ranking, id));
  const parts = echo ? [echo] : [];
  const unsaid = left.length ? [] : strengthMissing(ranking);
  if (!left.length && !unsaid.length) parts.push("Complete: ready to submit.");
  else if (echo !== notReady(ranking)) {
    if (left.length) parts.push(`Still to rank: ${listWords(left)}.`);
    else parts.push(`Say how much better: ${listWords(unsaid.map(gapWords))}.`);
  }
  const tied = ties(ranking);
  if (tied.length && ranking.allowTies) {
    const where = tied.map(([rank, letters]) => `${rank} (${listWords(letters)})`).join(", ");
    parts.push(`Tie at ${where}: use ties sparingly.`);
  }
  return { text: parts.join(" "), complete: left.length === 0 && unsaid.length === 0 };
}

/** Why the ranking cannot be submitted yet, or "" when it can. */
export function notReady(ranking) {
  const left = missing(ranking).map((id) => letterOf(ranking, id));
  if (left.length) return `Not ready to submit: still to rank ${listWords(left)}.`;
  const unsaid = strengthMissing(ranking);
  if (unsaid.length) {
    return `Not ready to submit: say how much better ${listWords(unsaid.map(gapWords))}.`;
  }
  return "";
}

/** The API's ``items`` (every card with its rank or "F", in display order), or null if incomplete. */
export function payload(ranking) {
  if (!isComplete(ranking) || strengthMissing(ranking).length) return null;
  return ranking.ids.map((id) => ({ completion: id, rank: ranking.labels.get(id) }));
}

/** The labels as [id, label] pairs, for a draft that startRanking() reads back. */
export function savedLabels(ranking) {
  return [...ranking.labels];
}

// --- Changing a ranking ------------------------------------------------------------------------

/** Select a card of this task; anything else leaves the ranking as it is. */
export function select(ranking, id) {
  if (!hasCard(ranking, id) || ranking.selected === id) return ranking;
  return freeze({ ...ranking, selected: id });
}

/** Select the card ``step`` places on (1 = right, -1 = left), wrapping around. */
export function moveSelection(ranking, step) {
  const count = ranking.ids.length;
  if (!count) return ranking;
  const index = ranking.ids.indexOf(ranking.selected);
  const next = index === -1 ? 0 : (index + step + count) % count;
  return select(ranking, ranking.ids[next]);
}

/** Select the first card after the selected one (wrapping) that has no label, if any. */
export function selectNextUnranked(ranking) {
  const count = ranking.ids.length;
  const start = ranking.ids.indexOf(ranking.selected);
  for (let step = 1; step <= count; step++) {
    const candidate = ranking.ids[(start + step) % count];
    if (!ranking.labels.has(candidate)) return select(ranking, candidate);
  }
  return ranking;
}

/**
 * Put card ``id`` in a zone: a rank 1..N, FAIL, or null (back to the tray). Answers
 * ``{ranking, message}``: the new ranking and what happened, in words for the page; a refused
 * move answers the same ranking with the reason. ``advance`` then selects the next unranked card.
 */
export function place(ranking, id, zone, { advance = false } = {}) {
  if (!hasCard(ranking, id)) return { ranking, message: "" };
  if (zone === FAIL && !ranking.allowFail) {
    return { ranking, message: "This campaign does not allow F (fail)." };
  }
  const inRange = Number.isInteger(zone) && zone >= 1 && zone <= slotCount(ranking);
  if (zone !== null && zone !== FAIL && !inRange) {
    return { ranking, message: `There are only ${slotCount(ranking)} slots.` };
  }
  const letter = letterOf(ranking, id);
  const labels = new Map(ranking.labels);
  if (zone === null) {
    labels.delete(id);
    return { ranking: withLabels(ranking, labels), message: `${letter} cleared.` };
  }
  let message = zone === FAIL ? `${letter} marked F (fail).` : `${letter} at rank ${zone}.`;
  if (Number.isInteger(zone) && !ranking.allowTies) {
    const occupant = ranking.ids.find((other) => other !== id && labels.get(other) === zone);
    if (occupant !== undefined) {
      const previous = labels.get(id);
      if (previous === undefined) labels.delete(occupant);
      else labels.set(occupant, previous);
      message = `${letter} swapped with ${letterOf(ranking, occupant)}.`;
    }
  }
  labels.set(id, zone);
  let next = withLabels(ranking, labels);
  if (advance) next = selectNextUnranked(next);
  return { ranking: next, message };
}

/** Put the selected card in a zone, then select the next unranked card (the keys and taps). */
export function placeSelected(ranking, zone) {
  if (ranking.selected === null) {
    return { ranking, message: "Select a card first: press its letter, or tap it." };
  }
  return place(ranking, ranking.selected, zone, { advance: zone !== null });
}

export const markFail = (ranking, id) => place(ranking, id, FAIL);
export const clear = (ranking, id) => place(ranking, id, null);

// --- Pairwise (N = 2): one key per choice --------------------------------------------------------

/** Whether the task is shown side by side with one key per choice: exactly two cards. */
export const isPairwise = (ranking) => ranking.ids.length === 2;

/**
 * The choices of a pairwise task, each with its key: 1 A better, 2 B better, 3 a tie (where
 * ties are allowed), 4 both F (where F is allowed).
 */
export function pairwiseChoices(ranking) {
  const choices = [
    { key: "1", choice: "a", text: "A is better" },
    { key: "2", choice: "b", text: "B is better" },
  ];
  if (ranking.allowTies) choices.push({ key: "3", choice: "tie", text: "Tie: equally good" });
  if (ranking.allowFail) choices.push({ key: "4", choice: "fail", text: "Both fail (F)" });
  return choices;
}

const CHOICE_LABELS = { a: [1, 2], b: [2, 1], tie: [1, 1], fail: [FAIL, FAIL] };

/** Set both cards of a pairwise task at once: ``{ranking, message}`` like place(). */
export function choose(ranking, choice) {
  if (!isPairwise(ranking) || !(choice in CHOICE_LABELS)) return { ranking, message: "" };
  const offered = pairwiseChoices(ranking).find((c) => c.choice === choice);
  if (!offered) {
    const why = choice === "tie" ? "ties" : "F (fail)";
    return { ranking, message: `This campaign does not allow ${why}.` };
  }
  const [a, b] = CHOICE_LABELS[choice];
  const labels = new Map([
    [ranking.ids[0], a],
    [ranking.ids[1], b],
  ]);
  return { ranking: withLabels(ranking, labels), message: `${offered.text}.` };
}

/** Which pairwise choice the labels make ("a", "b", "tie", "fail"), or null for none of them. */
export function choiceOf(ranking) {
  if (!isPairwise(ranking)) return null;
  const [a, b] = ranking.ids.map((id) => ranking.labels.get(id));
  for (const [choice, [x, y]] of Object.entries(CHOICE_LABELS)) {
    if (a === x && b === y) return choice;
  }
  return null;
}

// --- Preference strength: how much better, per gap between adjacent ranks -----------------------
//
// With a campaign scale (llama2: 0 negligibly better or unsure .. 3 significantly better;
// helpsteer: 1 slightly .. 3 much better) each gap between two adjacent occupied ranks gets a
// level; the server stores them best first (annotation/strength.py). A gap is named by the
// cards above and below it, so moving an unrelated card keeps the levels already given.

export const STRENGTH_LEVELS = Object.freeze({
  llama2: Object.freeze([0, 1, 2, 3]),
  helpsteer: Object.freeze([1, 2, 3]),
});

const LEVEL_TEXT = {
  llama2: { 0: "negligibly better or unsure", 1: "slightly better", 2: "better", 3: "significantly better" },
  helpsteer: { 1: "slightly better", 2: "better", 3: "much better" },
};

/** The levels of the ranking's scale with their keys (Shift+1, Shift+2, ...) and words. */
export function strengthChoices(ranking) {
  return (STRENGTH_LEVELS[ranking.scale] || []).map((level, i) => ({
    key: String(i + 1),
    level,
    text: LEVEL_TEXT[ranking.scale][level],
  }));
}

/** The ranked cards by rank, best first: [[ids of rank 1], [ids of the next rank], ...]. */
export function tiers(ranking) {
  const ranks = [...new Set([...ranking.labels.values()].filter(Number.isInteger))].sort((a, b) => a - b);
  return ranks.map((rank) => ranking.ids.filter((id) => ranking.labels.get(id) === rank));
}

/** The gaps between adjacent ranks, best first: {key, upper, lower (letters), level}. */
export function strengthGaps(ranking) {
  if (ranking.scale === "none") return [];
  const layers = tiers(ranking);
  const gaps = [];
  for (let k = 0; k + 1 < layers.length; k++) {
    const key = `${layers[k].join(",")}>${layers[k + 1].join(",")}`;
    gaps.push({
      key,
      upper: layers[k].map((id) => letterOf(ranking, id)),
      lower: layers[k + 1].map((id) => letterOf(ranking, id)),
      level: ranking.strength.get(key),
    });
  }
  return gaps;
}

const gapWords = (gap) => `${gap.upper.join("=")} over ${gap.lower.join("=")}`;

/** The gaps still without a level. */
export function strengthMissing(ranking) {
  return strengthGaps(ranking).filter((gap) => gap.level === undefined);
}

/** The gap the strength keys act on: the one just above the selected card, else below it. */
export function currentGap(ranking) {
  const gaps = strengthGaps(ranking);
  const letter = ranking.selected === null ? null : letterOf(ranking, ranking.selected);
  return (
    gaps.find((gap) => gap.lower.includes(letter)) ||
    gaps.find((gap) => gap.upper.includes(letter)) ||
    gaps.find((gap) => gap.level === undefined) ||
    gaps[0] ||
    null
  );
}

/** Give a gap its level: ``{ranking, message}`` like place(). */
export function setStrength(ranking, key, level) {
  const gap = strengthGaps(ranking).find((g) => g.key === key);
  if (!gap) return { ranking, message: ranking.scale === "none" ? "" : "Rank two cards apart first." };
  if (!STRENGTH_LEVELS[ranking.scale].includes(level)) return { ranking, message: "" };
  const strength = new Map(ranking.strength);
  strength.set(key, level);
  const words = LEVEL_TEXT[ranking.scale][level];
  return { ranking: freeze({ ...ranking, strength }), message: `${gapWords(gap)}: ${words}.` };
}

/** The API's ``strength`` (one level per gap, best first), null without a scale or complete. */
export function strengthPayload(ranking) {
  if (ranking.scale === "none") return null;
  const gaps = strengthGaps(ranking);
  return gaps.some((gap) => gap.level === undefined) ? null : gaps.map((gap) => gap.level);
}

/** The levels as [gap key, level] pairs, for a draft that startRanking() reads back. */
export function savedStrength(ranking) {
  return [...ranking.strength];
}

/** A submitted ranking's ``strength`` list (best first) as [gap key, level] pairs. */
export function strengthFromLevels(task, items, levels) {
  const ranking = startRanking(task, items);
  return strengthGaps(ranking).map((gap, k) => [gap.key, (levels || [])[k]]).filter(([, l]) => l !== undefined);
}

// --- Keys --------------------------------------------------------------------------------------

/**
 * What a key press does on the task page (the DOM code only carries it out). ``key`` is the
 * KeyboardEvent's ``key``; ``mods`` its ``ctrl``/``meta``/``alt``/``shift``; ``pairwise`` the
 * side-by-side layout of N = 2. Answers ``{action, ...}`` or null for a key the page leaves to
 * the browser. Letters select cards (A to K, skipping F and G, which are keys of their own); in
 * the pairwise layout the digits are its choices instead of slots.
 */
export function keyAction(key, mods = {}, { n = 0, pairwise = false } = {}) {
  const { ctrl = false, meta = false, alt = false, shift = false, code = "" } = mods;
  if (key === "Escape") return { action: "escape" };
  if (alt) return null;
  if (key === "Enter") return { action: "submit", force: ctrl || meta };
  if (ctrl || meta) return null;
  // Shift+1..4 (by the key's place, whatever the layout prints on it): how much better.
  const digit = /^(?:Digit|Numpad)([1-4])$/.exec(code);
  if (shift && digit) return { action: "strength", choice: Number(digit[1]) };
  if (key === "?" || key === "g" || key === "G") return { action: "guidelines" };
  if (key === "ArrowRight" || key === "ArrowLeft") {
    return { action: "move", step: key === "ArrowRight" ? 1 : -1 };
  }
  if (key === "ArrowDown" || key === "ArrowUp") {
    return { action: "scroll", direction: key === "ArrowDown" ? 1 : -1, page: false };
  }
  if (key === "PageDown" || key === "PageUp") {
    return { action: "scroll", direction: key === "PageDown" ? 1 : -1, page: true };
  }
  if (/^[1-9]$/.test(key)) {
    if (pairwise) {
      const choice = { 1: "a", 2: "b", 3: "tie", 4: "fail" }[key];
      return choice ? { action: "choose", choice } : null;
    }
    return { action: "place", zone: Number(key) };
  }
  if (key === "f" || key === "F") return { action: "place", zone: FAIL };
  if (key === "Backspace" || key === "Delete") return { action: "clear" };
  if (key === "x" || key === "X") return { action: "expand" };
  if (key === "s" || key === "S") return { action: "skip" };
  if (key.length === 1) {
    const index = LETTERS.indexOf(key.toUpperCase());
    if (index !== -1 && index < n) return { action: "select", index };
  }
  return null;
}

// --- Internals ---------------------------------------------------------------------------------

function isValid(ranking, id, label) {
  if (!hasCard(ranking, id)) return false;
  if (label === FAIL) return ranking.allowFail;
  return Number.isInteger(label) && label >= 1 && label <= slotCount(ranking);
}

/** The ranking with new labels, keeping the levels of the gaps that are still there. */
function withLabels(ranking, labels) {
  const next = { ...ranking, labels };
  return freeze({ ...next, strength: keptStrength(next, ranking.strength) });
}

function keptStrength(ranking, strength) {
  if (!strength.size) return strength;
  const keys = new Set(strengthGaps({ ...ranking, strength: new Map() }).map((gap) => gap.key));
  return new Map([...strength].filter(([key]) => keys.has(key)));
}

/** A ranking is frozen; its ``labels`` map is new for each ranking and never changed after. */
function freeze(ranking) {
  return Object.freeze(ranking);
}
