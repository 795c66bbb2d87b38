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
export function startRanking(task, saved = []) {
  const ids = task.completions.map((c) => c.id);
  const base = {
    ids: Object.freeze(ids),
    allowTies: Boolean(task.allow_ties),
    allowFail: Boolean(task.allow_fail),
    labels: new Map(),
    selected: null,
  };
  const labels = new Map((saved || []).filter(([id, label]) => isValid(base, id, label)));
  const first = ids.find((id) => !labels.has(id));
  return freeze({ ...base, labels, selected: first === undefined ? (ids[0] ?? null) : first });
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

/** The line under the board: ``echo`` (what just happened), what is missing, the ties. */
export function validation(ranking, echo = "") {
  const left = missing(ranking).map((id) => letterOf(ranking, id));
  const parts = echo ? [echo] : [];
  parts.push(left.length ? `Still to rank: ${listWords(left)}.` : "Complete: ready to submit.");
  const tied = ties(ranking);
  if (tied.length && ranking.allowTies) {
    const where = tied.map(([rank, letters]) => `${rank} (${listWords(letters)})`).join(", ");
    parts.push(`Tie at ${where}: use ties sparingly.`);
  }
  return { text: parts.join(" "), complete: left.length === 0 };
}

/** Why the ranking cannot be submitted yet, or "" when it can. */
export function notReady(ranking) {
  const left = missing(ranking).map((id) => letterOf(ranking, id));
  return left.length ? `Not ready to submit: still to rank ${listWords(left)}.` : "";
}

/** The API's ``items`` (every card with its rank or "F", in display order), or null if incomplete. */
export function payload(ranking) {
  if (!isComplete(ranking)) return null;
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
    return { ranking: freeze({ ...ranking, labels }), message: `${letter} cleared.` };
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
  let next = freeze({ ...ranking, labels });
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

// --- Internals ---------------------------------------------------------------------------------

function isValid(ranking, id, label) {
  if (!hasCard(ranking, id)) return false;
  if (label === FAIL) return ranking.allowFail;
  return Number.isInteger(label) && label >= 1 && label <= slotCount(ranking);
}

/** A ranking is frozen; its ``labels`` map is new for each ranking and never changed after. */
function freeze(ranking) {
  return Object.freeze(ranking);
}
