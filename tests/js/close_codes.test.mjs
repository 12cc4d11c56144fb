// The page's `explainClose` against the close-code table the server serves (GET /close-codes.json).
// Run by tests/test_close_codes.py: `node --test tests/js/` with WLK_CLOSE_CODES=<the table as JSON>.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { explainClose } from "../../whisperlivekit/web/connection.js";

const table = JSON.parse(readFileSync(process.env.WLK_CLOSE_CODES, "utf8"));
const codes = Object.keys(table.codes).map(Number);

test("every code the server sends is retried exactly when the table says so", () => {
  assert.ok(codes.length >= 10, `only ${codes.length} codes in the table`);
  for (const code of codes) {
    for (const reason of ["", "Some reason"]) {
      assert.equal(explainClose(code, reason, table).retry, table.codes[code].retry, `code ${code}, reason ${JSON.stringify(reason)}`);
    }
  }
});

test("the page follows the table, not a copy of it: a changed table changes every decision and message", () => {
  const changed = structuredClone(table);
  for (const [code, entry] of Object.entries(changed.codes)) Object.assign(entry, { retry: !entry.retry, message: `M${code}`, hints: {} });
  for (const code of codes) {
    assert.deepEqual(explainClose(code, "", changed), { message: `M${code}`, retry: !table.codes[code].retry }, `code ${code}`);
  }
});

test("a forbidden Origin (4403) is final and says why", () => {
  const { message, retry } = explainClose(4403, "Origin not allowed", table);
  assert.equal(retry, false);
  assert.match(message, /Origin not allowed/);
});

test("the close reason is shown wherever the message has room for it", () => {
  for (const code of codes) {
    const template = table.codes[code].message;
    const { message } = explainClose(code, "Some reason", table);
    assert.ok(!/[{}]/.test(message), `unfilled placeholder for ${code}: ${message}`);
    if (template.includes("reason}")) assert.match(message, /Some reason/, `code ${code}`);
  }
});

test("no GPU available: the page explains the refusal and does not retry", () => {
  for (const reason of ["", "No GPU available"]) {
    assert.deepEqual(explainClose(1008, reason, table), {
      message: "The server refused the connection: No GPU available. All transcription slots are busy; try again in a moment.",
      retry: false,
    });
  }
});

test("a code the server never sends (1006: the network dropped) is a lost connection worth a retry", () => {
  assert.equal(table.codes["1006"], undefined);
  assert.deepEqual(explainClose(1006, "", table), { message: "Connection lost (code 1006).", retry: true });
});
