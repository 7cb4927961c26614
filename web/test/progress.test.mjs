// What the player page says and when it asks again (src/progress.ts), the player
// key's groups and its QR code (src/qr.ts): the drawn path read back by the
// library's decoder from rendered pixels, and the fixed patterns checked by hand.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import decodeQR from "@paulmillr/qr/decode.js";

import { ErrorCode } from "../build/codes.js";
import { keyGroups } from "../build/page.js";
import { RetrySchedule, STATE_WORDS, countdownWords, stateOfError, stepWords } from "../build/progress.js";
import { QUIET_ZONE, qrDrawing, qrModules } from "../build/qr.js";
import { SessionError } from "../build/session.js";

const KEY = "ej4gkdrcqvy6ak2jrxw3blbxsvnkrb2objdubdh2vlowq6gtvnia";

test("every failure says what to do; every state has a headline", () => {
  for (const [state, words] of Object.entries(STATE_WORDS)) {
    assert.notEqual(words.status, "", state);
    if (!["loading", "connecting", "starting", "playing"].includes(state)) assert.notEqual(words.todo, "", state);
  }
  assert.match(STATE_WORDS["not-authorized"].todo, /gets in by itself/);
});

test("README's table says every failure in the page's own words", () => {
  const readme = readFileSync(new URL("../../README.md", import.meta.url), "utf8");
  for (const [state, words] of Object.entries(STATE_WORDS)) {
    if (words.todo === "") continue;
    assert.ok(readme.includes(`\n| ${words.status} | `), `README's "Watch in a browser" table lacks ${state}: ${words.status}`);
  }
});

test("a session's error is the state the page shows", () => {
  const cases = [
    [new SessionError("not-authorized", "x"), "not-authorized"],
    [new SessionError("host-left", "x"), "host-offline"],
    [new SessionError("relay-refused", "x", ErrorCode.HostOffline), "host-offline"],
    [new SessionError("relay-refused", "x", ErrorCode.HostUnreachable), "host-offline"],
    [new SessionError("relay-refused", "x", ErrorCode.RateLimited), "busy"],
    [new SessionError("relay-refused", "x", ErrorCode.HostBusy), "busy"],
    [new SessionError("relay-refused", "x", ErrorCode.AtCapacity), "busy"],
    [new SessionError("relay-refused", "x", ErrorCode.Internal), "failed"],
    [new SessionError("redirected", "x"), "redirected"],
    [new SessionError("connection", "x"), "relay-unreachable"],
    [new SessionError("timeout", "x"), "relay-unreachable"],
    [new SessionError("protocol", "x"), "failed"],
  ];
  for (const [error, state] of cases) assert.equal(stateOfError(error), state, `${error.kind} ${error.code}`);
});

test("the steps name the transport while the relay is being reached", () => {
  assert.equal(stepWords("relay", "webtransport"), "Reaching the relay over WebTransport…");
  assert.equal(stepWords("relay", "websocket"), "Reaching the relay over WebSocket…");
  assert.equal(stepWords("host", "websocket"), "Waiting for the host…");
  assert.match(stepWords("verdict", undefined), /^Asking the host/);
  assert.match(stepWords("playing", undefined), /^Playing/);
});

test("a refused page asks every 5 s for 10 minutes, longer once the key was handed on, then stops", () => {
  const t0 = 1_000_000;
  const schedule = new RetrySchedule(t0);
  assert.equal(schedule.secondsLeft(t0), 5);
  assert.equal(schedule.secondsLeft(t0 + 4_200), 1);
  assert.equal(schedule.due(t0 + 4_999), false);
  assert.equal(schedule.due(t0 + 5_000), true);
  // Refused again after each try, until the ten minutes are up.
  let now = t0;
  let tries = 0;
  while (schedule.secondsLeft(now) !== undefined) {
    now += 5_000;
    assert.equal(schedule.due(now), true);
    tries++;
    now += 100; // the try itself
    schedule.refusedAgain(now);
  }
  assert.ok(tries >= 110 && tries <= 120, `${tries} tries`);
  assert.equal(schedule.due(now + 60_000), false);
  assert.equal(countdownWords(schedule.secondsLeft(now)), "The page stopped asking the host. Press Try again once the key has been added.");
  assert.equal(countdownWords(3), "Asking the host again in 3 s…");
  // The key handed on after the page stopped: it asks at once, and for a while again.
  schedule.extend(now + 60_000);
  assert.equal(schedule.due(now + 60_000), true);
  schedule.refusedAgain(now + 60_100);
  assert.equal(schedule.secondsLeft(now + 60_100), 5);

  // Handed on at 9 minutes: asked until 19 minutes.
  const handed = new RetrySchedule(t0);
  handed.extend(t0 + 9 * 60_000);
  handed.refusedAgain(t0 + 18 * 60_000);
  assert.equal(handed.secondsLeft(t0 + 18 * 60_000), 5);
  handed.refusedAgain(t0 + 19 * 60_000);
  assert.equal(handed.secondsLeft(t0 + 19 * 60_000), undefined);
});

test("the key reads in groups of four that join to the key", () => {
  const groups = keyGroups(KEY);
  assert.equal(groups.length, 13);
  assert.ok(groups.every((group) => group.length === 4));
  assert.equal(groups.join(""), KEY);
});

test("the key's QR code reads back as the key", () => {
  const modules = qrModules(KEY);
  // 52 bytes at error correction M: version 4, 33 modules a side.
  assert.equal(modules.length, 33);
  const drawing = qrDrawing(KEY);
  assert.equal(drawing.size, 33 + 2 * QUIET_ZONE);
  // Render the path as a camera would see it: 8 pixels a module, black on white.
  const scale = 8;
  const side = drawing.size * scale;
  const pixels = new Uint8Array(side * side * 4).fill(255);
  for (const m of drawing.path.matchAll(/M(\d+) (\d+)h(\d+)v1h-\3z/g)) {
    const [x, y, w] = [Number(m[1]), Number(m[2]), Number(m[3])];
    for (let py = y * scale; py < (y + 1) * scale; py++) {
      for (let px = x * scale; px < (x + w) * scale; px++) pixels.fill(0, (py * side + px) * 4, (py * side + px) * 4 + 3);
    }
  }
  assert.equal(decodeQR({ width: side, height: side, data: pixels }), KEY);
  // Every dark module is drawn, and nothing else.
  const dark = modules.flat().filter(Boolean).length;
  const drawn = [...drawing.path.matchAll(/h(\d+)v1/g)].reduce((sum, m) => sum + Number(m[1]), 0);
  assert.equal(drawn, dark);
});

test("the key's QR code has the fixed patterns of ISO/IEC 18004 where a scanner looks for them", () => {
  const modules = qrModules(KEY);
  const n = modules.length;
  const finder = (top, left) =>
    Array.from({ length: 7 }, (_, y) =>
      Array.from({ length: 7 }, (_, x) => {
        const ring = Math.max(Math.abs(x - 3), Math.abs(y - 3));
        return ring !== 2;
      }).every((want, x) => modules[top + y][left + x] === want),
    ).every(Boolean);
  assert.ok(finder(0, 0) && finder(0, n - 7) && finder(n - 7, 0));
  // Timing patterns alternate between the finders.
  for (let i = 8; i < n - 8; i++) {
    assert.equal(modules[6][i], i % 2 === 0);
    assert.equal(modules[i][6], i % 2 === 0);
  }
  // The dark module beside the bottom-left finder (version 4: row 4 * 4 + 9).
  assert.equal(modules[25][8], true);
});
