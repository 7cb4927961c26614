// Where the worker puts the WebSocket script in a page of the host's: first, after
// a byte order mark, blank space, comments and the doctype (before the doctype the
// page would lose standards mode), decided from at most 1024 bytes held back, and
// the rest of the body streamed through as it came.
import assert from "node:assert/strict";
import { test } from "node:test";

import { MAX_LOOKAHEAD, SHIM_TAG, shimOffset, withShim } from "../build/inject.js";

const ascii = (s) => new TextEncoder().encode(s);

test("the script tag goes first: after a BOM, blank space, comments and the doctype, before anything else", async () => {
  const at = (s, final = false) => shimOffset(ascii(s), final);
  assert.equal(at("<!doctype html><html>"), 15);
  assert.equal(at("\ufeff  <!DOCTYPE html>\n<html>"), new TextEncoder().encode("\ufeff  <!DOCTYPE html>").length);
  assert.equal(at("<!-- built --><!doctype html><p>"), 29);
  assert.equal(at("<html><head>"), 0);
  assert.equal(at("  text"), 2);
  // Not yet known: the doctype or a comment is not complete, or too short to tell.
  assert.equal(at("<!doctype ht"), undefined);
  assert.equal(at("<!-- still"), undefined);
  assert.equal(at("<!do"), undefined);
  assert.equal(at("<"), undefined);
  assert.equal(at("<!do", true), 0);
  assert.equal(at("", true), 0);
  // Never more than the look-ahead held: a comment that does not end in time is passed over.
  const long = `<!--${"x".repeat(MAX_LOOKAHEAD)}`;
  assert.equal(at(long), 0);

  const through = async (chunks) => {
    const body = new ReadableStream({
      start(controller) {
        for (const c of chunks) controller.enqueue(ascii(c));
        controller.close();
      },
    });
    return new Response(withShim(body)).text();
  };
  assert.equal(await through(["<!doc", "type html><html><body>hi</body></html>"]), `<!doctype html>${SHIM_TAG}<html><body>hi</body></html>`);
  assert.equal(await through(["<html>", "<body>"]), `${SHIM_TAG}<html><body>`);
  assert.equal(await through([""]), SHIM_TAG);
  assert.equal(await through([]), SHIM_TAG);
});
