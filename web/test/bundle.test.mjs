// The bundle a page loads: built twice it is the same bytes and the same as the
// committed dist/, and the bundled code still reproduces the pinned hello of
// PROTOCOL.md 10.7.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");

test("the bundle is reproducible, committed as built, and carries the tested player", async () => {
  const out = execFileSync(process.execPath, [join(root, "scripts", "build.mjs"), "--check"], { encoding: "utf8" });
  assert.match(out, /^reproducible: two builds give the same files$/m);
  assert.match(out, /^dist\/ matches the sources$/m);
  for (const file of ["index.html", "player.css", "player.js", "sw.js"]) assert.match(out, new RegExp(`^[0-9a-f]{64}  dist/${file.replace(".", "\\.")}$`, "m"));
  const bundle = await import(pathToFileURL(join(root, "dist", "player.js")).href);
  const hostId = bundle.publicKey(new Uint8Array(32).fill(2));
  const handshake = await bundle.PlayerHandshake.start(new Uint8Array(32).fill(1), hostId, {
    ephemeralSecretForTesting: new Uint8Array(32).fill(3),
  });
  const hex = Buffer.from(handshake.hello).toString("hex");
  assert.equal(hex.slice(0, 68), "0060" + "5dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9df1c6e0124b3ef22");
  assert.ok(hex.endsWith("4c7d5459f0dc18748700bd470db9a2c0"));
});

test("the page has no inline script or style, so a Content-Security-Policy of 'self' runs it", () => {
  const html = readFileSync(join(root, "dist", "index.html"), "utf8");
  assert.doesNotMatch(html, /<style|style=|\son[a-z]+=/i);
  for (const m of html.matchAll(/<script\b([^>]*)>([\s\S]*?)<\/script>/gi)) {
    assert.match(m[1], /\bsrc="\/\.blindrelay\/player\.js"/);
    assert.equal(m[2], "");
  }
  // Its one stylesheet is the relay's file, on the page's own origin.
  const sheets = [...html.matchAll(/<link\b[^>]*rel="stylesheet"[^>]*>/gi)].map((m) => m[0]);
  assert.deepEqual(sheets, ['<link rel="stylesheet" href="/.blindrelay/player.css">']);
  const css = readFileSync(join(root, "dist", "player.css"), "utf8");
  assert.doesNotMatch(css, /@import|url\(/i, "the stylesheet loads nothing");
});
