// The page's `applyDiff` against what the server's `DiffEncoder` sends (cases written by
// tests/test_protocol_unit.py to WLK_DIFF_CASES: [{message, full}] in order). Not named *.test.mjs:
// only that test runs it, with its cases.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import { applyDiff } from "../../whisperlivekit/web/connection.js";

const cases = JSON.parse(readFileSync(process.env.WLK_DIFF_CASES, "utf8"));

test("the page rebuilds every full update from the snapshot and diffs", () => {
  assert.ok(cases.length >= 5, `only ${cases.length} cases`);
  let held = [];
  for (const [index, { message, full }] of cases.entries()) {
    const update = applyDiff(held, message);
    assert.deepEqual(update, full, `message ${index}: ${JSON.stringify(message)}`);
    held = update.lines;
  }
});
