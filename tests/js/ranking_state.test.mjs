// The ranking rules of the task page (static/annotation/ranking_state.js), without a browser.
// Run: node --test tests/js/   (make js runs it with the lint)
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import * as rules from "../../static/annotation/ranking_state.js";

const { FAIL, place, placeSelected, startRanking } = rules;

/** A task as the API sends it: completions with ids ``first``, ``first + 1``, ... */
function task({ n = 4, first = 101, ties = true, fail = true } = {}) {
  const completions = Array.from({ length: n }, (_, i) => ({ id: first + i, text: `answer ${i}` }));
  return { id: first, completions, allow_ties: ties, allow_fail: fail };
}

/** Press keys as the page does: a letter selects a card, 1..9 and F place the selected one. */
function keys(ranking, ...presses) {
  const messages = [];
  for (const key of presses) {
    if (/^[1-9f]$/.test(key)) {
      const answer = placeSelected(ranking, key === "f" ? FAIL : Number(key));
      ranking = answer.ranking;
      messages.push(answer.message);
    } else {
      ranking = rules.select(ranking, ranking.ids[rules.LETTERS.indexOf(key.toUpperCase())]);
    }
  }
  return { ranking, messages };
}

/** The board as letters per zone: {"1": "A", "2": "BC", "3": "", "4": "", F: "D", "": ""}. */
function board(ranking) {
  const letters = (ids) => ids.map((id) => rules.letterOf(ranking, id)).join("");
  return Object.fromEntries(Object.entries(rules.zones(ranking)).map(([zone, ids]) => [zone, letters(ids)]));
}

describe("a new ranking", () => {
  test("has every card in the tray and the first card selected", () => {
    const ranking = startRanking(task());
    assert.deepEqual(board(ranking), { 1: "", 2: "", 3: "", 4: "", F: "", "": "ABCD" });
    assert.equal(ranking.selected, 101);
    assert.ok(Object.isFrozen(ranking));
  });

  test("names cards by letters that skip F and G", () => {
    const ranking = startRanking(task({ n: 9 }));
    assert.equal(ranking.ids.map((id) => rules.letterOf(ranking, id)).join(""), "ABCDEHIJK");
  });

  test("keeps only the saved labels valid for this task, and selects the first unranked card", () => {
    const saved = [
      [101, 2],
      [102, FAIL],
      [103, 5], // no slot 5 with four cards
      [104, "2"], // not a number
      [999, 1], // another task's card
    ];
    const ranking = startRanking(task(), saved);
    assert.deepEqual(board(ranking), { 1: "", 2: "A", 3: "", 4: "", F: "B", "": "CD" });
    assert.equal(ranking.selected, 103);
    const noFail = startRanking(task({ fail: false }), saved);
    assert.deepEqual(board(noFail), { 1: "", 2: "A", 3: "", 4: "", F: "", "": "BCD" });
  });

  test("of the next task holds none of the previous task's cards, F included", () => {
    const first = keys(startRanking(task()), "a", "1", "b", "2", "c", "f", "d", "f").ranking;
    assert.deepEqual(board(first), { 1: "A", 2: "B", 3: "", 4: "", F: "CD", "": "" });

    const next = startRanking(task({ first: 201 }), rules.savedLabels(first));
    const cards = Object.values(rules.zones(next)).flat();
    assert.deepEqual(cards.sort(), [201, 202, 203, 204]);
    assert.deepEqual(rules.zones(next).F, []);
    assert.deepEqual(rules.zones(next)[""], [201, 202, 203, 204]);
    assert.equal(next.selected, 201);
    // A card of the old task (a stale chip, were one left on the page) changes nothing.
    assert.equal(rules.select(next, 103), next);
    assert.deepEqual(place(next, 103, 1), { ranking: next, message: "" });
    assert.equal(rules.payload(next), null);
  });
});

describe("placing cards", () => {
  test("puts the selected card in a slot and selects the next unranked card", () => {
    const { ranking, messages } = keys(startRanking(task()), "b", "1", "3");
    assert.deepEqual(board(ranking), { 1: "B", 2: "", 3: "C", 4: "", F: "", "": "AD" });
    assert.deepEqual(messages, ["B at rank 1.", "C at rank 3."]);
    assert.equal(ranking.selected, 104); // D: after C, the next card with no rank
  });

  test("wraps around to the first unranked card, and keeps the selection once all are ranked", () => {
    let { ranking } = keys(startRanking(task()), "d", "1");
    assert.equal(ranking.selected, 101);
    ({ ranking } = keys(ranking, "2", "3", "4"));
    assert.equal(ranking.selected, 103); // C took the last rank; nothing left to move on to
  });

  test("two cards in one slot are a tie where ties are allowed", () => {
    const { ranking } = keys(startRanking(task()), "a", "1", "b", "2", "c", "2", "d", "f");
    assert.deepEqual(board(ranking), { 1: "A", 2: "BC", 3: "", 4: "", F: "D", "": "" });
    assert.deepEqual(rules.ties(ranking), [[2, ["B", "C"]]]);
    assert.equal(
      rules.validation(ranking).text,
      "Complete: ready to submit. Tie at 2 (B and C): use ties sparingly.",
    );
  });

  test("without ties, a card put on a taken slot swaps places with the card there", () => {
    let { ranking, messages } = keys(startRanking(task({ n: 3, ties: false })), "a", "1", "b", "2", "b", "1");
    assert.deepEqual(board(ranking), { 1: "B", 2: "A", 3: "", F: "", "": "C" });
    assert.equal(messages.at(-1), "B swapped with A.");
    // An unranked card sends the card it displaces back to the tray.
    ({ ranking, messages } = keys(ranking, "c", "1"));
    assert.deepEqual(board(ranking), { 1: "C", 2: "A", 3: "", F: "", "": "B" });
    assert.deepEqual(messages, ["C swapped with B."]);
    // A failed card hands its F to the card it displaces.
    ({ ranking } = keys(ranking, "b", "f", "b", "2"));
    assert.deepEqual(board(ranking), { 1: "C", 2: "B", 3: "", F: "A", "": "" });
    assert.equal(rules.validation(ranking).text, "Complete: ready to submit.");
  });

  test("a card put back in its own slot stays there, alone", () => {
    const { ranking, messages } = keys(startRanking(task({ ties: false })), "a", "1", "a", "1");
    assert.deepEqual(board(ranking), { 1: "A", 2: "", 3: "", 4: "", F: "", "": "BCD" });
    assert.equal(messages.at(-1), "A at rank 1.");
  });

  test("F marks a card fail, where the campaign allows it", () => {
    const allowed = rules.markFail(startRanking(task()), 102);
    assert.equal(allowed.message, "B marked F (fail).");
    assert.deepEqual(rules.zones(allowed.ranking).F, [102]);
    assert.equal(rules.labelText(rules.labelOf(allowed.ranking, 102)), "F: fail");

    const refused = startRanking(task({ fail: false }));
    assert.deepEqual(placeSelected(refused, FAIL), {
      ranking: refused,
      message: "This campaign does not allow F (fail).",
    });
  });

  test("refuses a slot the task does not have", () => {
    const ranking = startRanking(task());
    assert.deepEqual(placeSelected(ranking, 5), { ranking, message: "There are only 4 slots." });
    assert.deepEqual(place(ranking, 101, 0), { ranking, message: "There are only 4 slots." });
  });

  test("clearing sends a card back to the tray and keeps it selected", () => {
    let { ranking } = keys(startRanking(task()), "a", "f", "b", "1");
    const cleared = rules.clear(rules.select(ranking, 101), 101);
    assert.equal(cleared.message, "A cleared.");
    ranking = cleared.ranking;
    assert.deepEqual(board(ranking), { 1: "B", 2: "", 3: "", 4: "", F: "", "": "ACD" });
    assert.equal(ranking.selected, 101);
    assert.equal(placeSelected(ranking, null).ranking.selected, 101);
  });

  test("needs a selected card", () => {
    const empty = startRanking(task({ n: 0 }));
    assert.deepEqual(placeSelected(empty, 1), {
      ranking: empty,
      message: "Select a card first: press its letter, or tap it.",
    });
  });

  test("never changes the ranking it was given", () => {
    const before = startRanking(task());
    const after = placeSelected(before, 1).ranking;
    assert.notEqual(after, before);
    assert.equal(before.labels.size, 0);
    assert.equal(before.selected, 101);
    assert.equal(rules.labelOf(after, 101), 1);
  });
});

describe("selection", () => {
  test("moves left and right, wrapping around", () => {
    const ranking = startRanking(task());
    assert.equal(rules.moveSelection(ranking, -1).selected, 104);
    assert.equal(rules.moveSelection(rules.moveSelection(ranking, 1), 1).selected, 103);
    assert.equal(rules.moveSelection(rules.select(ranking, 104), 1).selected, 101);
  });
});

describe("validity and the payload", () => {
  test("says what is still to rank, in the page's words", () => {
    let ranking = startRanking(task());
    assert.deepEqual(rules.validation(ranking), { text: "Still to rank: A, B, C and D.", complete: false });
    ({ ranking } = keys(ranking, "a", "1", "b", "2"));
    assert.equal(rules.validation(ranking, "B at rank 2.").text, "B at rank 2. Still to rank: C and D.");
    assert.equal(rules.notReady(ranking), "Not ready to submit: still to rank C and D.");
    assert.deepEqual(rules.missing(ranking), [103, 104]);
    assert.equal(rules.payload(ranking), null);
  });

  test("does not mention a tie where ties are not allowed", () => {
    // Ties can only come from a draft saved before the campaign turned them off.
    const ranking = startRanking(task({ n: 2, ties: false }), [
      [101, 1],
      [102, 1],
    ]);
    assert.equal(rules.validation(ranking).text, "Complete: ready to submit.");
  });

  test("a complete ranking gives every card with its rank or F, in display order", () => {
    const { ranking } = keys(startRanking(task()), "c", "1", "a", "2", "b", "2", "d", "f");
    assert.equal(rules.notReady(ranking), "");
    assert.deepEqual(rules.payload(ranking), [
      { completion: 101, rank: 2 },
      { completion: 102, rank: 2 },
      { completion: 103, rank: 1 },
      { completion: 104, rank: "F" },
    ]);
    assert.deepEqual(startRanking(task(), rules.savedLabels(ranking)).labels, ranking.labels);
  });

  test("words: lists, labels and zones", () => {
    assert.equal(rules.listWords([]), "");
    assert.equal(rules.listWords(["A"]), "A");
    assert.equal(rules.listWords(["A", "B", "C"]), "A, B and C");
    assert.equal(rules.labelText(undefined), "Not ranked");
    assert.equal(rules.labelText(3), "Rank 3");
    assert.equal(rules.zoneLabel(""), null);
    assert.equal(rules.zoneLabel("F"), FAIL);
    assert.equal(rules.zoneLabel("2"), 2);
  });
});

describe("the not-ready message", () => {
  test("says what is missing once, not twice", () => {
    const { ranking } = keys(startRanking(task()), "a", "1");
    const text = rules.validation(ranking, rules.notReady(ranking)).text;
    assert.equal(text, "Not ready to submit: still to rank B, C and D.");
    assert.equal((text.match(/B, C and D/g) || []).length, 1);
    assert.match(rules.validation(ranking, "A at rank 1.").text, /Still to rank: B, C and D\./);
  });
});

describe("the pairwise layout (N = 2)", () => {
  test("is for two cards only", () => {
    assert.equal(rules.isPairwise(startRanking(task({ n: 2 }))), true);
    assert.equal(rules.isPairwise(startRanking(task({ n: 3 }))), false);
    assert.equal(rules.choose(startRanking(task({ n: 3 })), "a").message, "");
  });

  test("offers one key per choice, ties and F only where allowed", () => {
    const keysOf = (options) =>
      rules.pairwiseChoices(startRanking(task({ n: 2, ...options }))).map((c) => `${c.key}${c.choice}`);
    assert.deepEqual(keysOf({}), ["1a", "2b", "3tie", "4fail"]);
    assert.deepEqual(keysOf({ ties: false, fail: false }), ["1a", "2b"]);
  });

  test("each choice sets both cards, and reads back", () => {
    const start = startRanking(task({ n: 2 }));
    const expected = { a: [1, 2], b: [2, 1], tie: [1, 1], fail: [FAIL, FAIL] };
    for (const [choice, labels] of Object.entries(expected)) {
      const { ranking, message } = rules.choose(start, choice);
      assert.deepEqual([101, 102].map((id) => ranking.labels.get(id)), labels, choice);
      assert.equal(rules.choiceOf(ranking), choice);
      assert.ok(rules.isComplete(ranking) && message);
    }
    assert.equal(rules.choiceOf(start), null);
    assert.equal(start.labels.size, 0); // the ranking it was given is unchanged
  });

  test("refuses a tie or F the campaign does not allow, changing nothing", () => {
    const start = startRanking(task({ n: 2, ties: false, fail: false }));
    for (const choice of ["tie", "fail"]) {
      const { ranking, message } = rules.choose(start, choice);
      assert.equal(ranking, start);
      assert.match(message, /does not allow/);
    }
  });
});

describe("keys", () => {
  const act = (key, mods = {}, options = { n: 4 }) => rules.keyAction(key, mods, options);

  test("letters select cards of the task, skipping F and G", () => {
    assert.deepEqual(act("a"), { action: "select", index: 0 });
    assert.equal(act("H"), null); // H names the sixth card: there are four
    assert.deepEqual(act("h", {}, { n: 6 }), { action: "select", index: 5 });
    assert.equal(act("k"), null); // only four cards
    assert.deepEqual(act("f"), { action: "place", zone: FAIL });
    assert.deepEqual(act("g"), { action: "guidelines" });
  });

  test("digits are slots, or choices in the pairwise layout", () => {
    assert.deepEqual(act("3"), { action: "place", zone: 3 });
    assert.deepEqual(act("3", {}, { n: 2, pairwise: true }), { action: "choose", choice: "tie" });
    assert.deepEqual(act("4", {}, { n: 2, pairwise: true }), { action: "choose", choice: "fail" });
    assert.equal(act("5", {}, { n: 2, pairwise: true }), null);
  });

  test("expand, skip, scrolling and submit have keys", () => {
    assert.deepEqual(act("x"), { action: "expand" });
    assert.deepEqual(act("S"), { action: "skip" });
    assert.deepEqual(act("ArrowDown"), { action: "scroll", direction: 1, page: false });
    assert.deepEqual(act("PageUp"), { action: "scroll", direction: -1, page: true });
    assert.deepEqual(act("Enter"), { action: "submit", force: false });
    assert.deepEqual(act("Enter", { ctrl: true }), { action: "submit", force: true });
  });

  test("modifiers leave the browser's own shortcuts alone", () => {
    assert.equal(act("s", { ctrl: true }), null);
    assert.equal(act("a", { alt: true }), null);
    assert.deepEqual(act("Escape", { alt: true }), { action: "escape" });
  });
});

describe("preference strength", () => {
  const strengthTask = (scale, options = {}) => ({ ...task(options), strength_scale: scale });

  test("asks nothing without a scale", () => {
    const { ranking } = keys(startRanking(task()), "a", "1", "b", "2", "c", "3", "d", "4");
    assert.deepEqual(rules.strengthGaps(ranking), []);
    assert.equal(rules.strengthPayload(ranking), null);
    assert.ok(rules.payload(ranking));
  });

  test("one gap per pair of adjacent ranks, ties one tier, F in none", () => {
    const start = startRanking(strengthTask("llama2"));
    const { ranking } = keys(start, "a", "1", "b", "2", "c", "2", "d", "f");
    const gaps = rules.strengthGaps(ranking);
    assert.deepEqual(gaps.map((g) => [g.upper.join(""), g.lower.join("")]), [["A", "BC"]]);
    assert.equal(rules.payload(ranking), null); // complete, but how much better is unsaid
    assert.match(rules.validation(ranking).text, /Say how much better: A over B=C\./);
    const { ranking: said } = rules.setStrength(ranking, gaps[0].key, 3);
    assert.deepEqual(rules.strengthPayload(said), [3]);
    assert.ok(rules.payload(said) && rules.validation(said).complete);
  });

  test("levels follow the scale: llama2 0..3, helpsteer 1..3", () => {
    const llama = rules.strengthChoices(startRanking(strengthTask("llama2", { n: 2 })));
    assert.deepEqual(llama.map((c) => [c.key, c.level]), [["1", 0], ["2", 1], ["3", 2], ["4", 3]]);
    const help = startRanking(strengthTask("helpsteer", { n: 2 }));
    assert.deepEqual(rules.strengthChoices(help).map((c) => c.level), [1, 2, 3]);
    const { ranking } = rules.choose(help, "a");
    const key = rules.strengthGaps(ranking)[0].key;
    assert.equal(rules.setStrength(ranking, key, 0).ranking, ranking); // 0 is not a helpsteer level
  });

  test("moving an unrelated card keeps the levels given; a changed gap loses its own", () => {
    let { ranking } = keys(startRanking(strengthTask("llama2")), "a", "1", "b", "2", "c", "3", "d", "4");
    for (const [i, gap] of rules.strengthGaps(ranking).entries()) {
      ranking = rules.setStrength(ranking, gap.key, i).ranking;
    }
    assert.deepEqual(rules.strengthPayload(ranking), [0, 1, 2]);
    ranking = keys(ranking, "d", "f").ranking; // D leaves: the gap C over D goes, the others stay
    assert.deepEqual(rules.strengthPayload(ranking), [0, 1]);
    ranking = keys(ranking, "c", "2").ranking; // C joins B: both gaps around them change
    assert.equal(rules.strengthMissing(ranking).length, 1);
  });

  test("the current gap is the one above the selected card", () => {
    const { ranking } = keys(startRanking(strengthTask("llama2")), "a", "1", "b", "2", "c", "3", "d", "4");
    const pick = (letter) => rules.currentGap(rules.select(ranking, ranking.ids["ABCD".indexOf(letter)]));
    assert.deepEqual(pick("C").upper, ["B"]);
    assert.deepEqual(pick("A").lower, ["B"]); // the best card: the gap below it
  });

  test("a submitted strength comes back onto its gaps, and Shift+digits are its keys", () => {
    const t = strengthTask("llama2");
    const items = [[101, 1], [102, 2], [103, 3], [104, 4]];
    const saved = rules.strengthFromLevels(t, items, [3, 0, 2]);
    assert.deepEqual(rules.strengthPayload(startRanking(t, items, saved)), [3, 0, 2]);
    assert.deepEqual(rules.keyAction("!", { shift: true, code: "Digit1" }, { n: 4 }), {
      action: "strength",
      choice: 1,
    });
    assert.deepEqual(rules.keyAction("1", {}, { n: 4 }), { action: "place", zone: 1 });
  });
});
