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
