// A media server's WebSockets through the tunnel, in a real browser: Debian's
// Chromium, headless, opens the share link of a host forwarding to a small web app
// started by the test, with a WebSocket server (the `ws` package) on `/socket`. It
// listens on a loopback port only the host is given, so every socket the page opens
// there reaches it through the host; the relay answers `404` to a WebSocket on any
// path but its own, so the page's player (served by the relay, without the tunnel's
// script) cannot reach `/socket` at all. The host's page opens `new
// WebSocket("/socket")` and an absolute `wss://<origin>/socket` URL: text and binary
// echo (a view, an ArrayBuffer and a Blob, in order; `binaryType` both ways), a
// message the server sends in fragments, one of 1 MiB, a push the page did not ask
// for, the server's ping answered, the subprotocol chosen, the tunnel's cookie on the
// handshake, close codes both ways, and a message over 16 MiB refused with 1009. A
// socket to another origin is the browser's own. A page whose policy allows scripts
// of its own origin (`script-src 'self'`) gets the script; one that allows only
// nonces keeps the browser's WebSocket, which cannot reach the server. Twice: with
// the link as printed, where the sockets' sessions take WebTransport, and with
// `?transport=websocket`, where they take the relay's WebSocket (the browser's own,
// not the one the script put in its place); the relay counts them that way.
// Artefacts in `target/browser-tests/websocket-<transport>/`: the relay's and host's
// logs, and `failure.png` when a step failed.

import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import { createServer } from "node:http";
import os from "node:os";
import path from "node:path";
import { WebSocketServer } from "ws";

import { Processes, artefactDir } from "./support.mjs";
import { launchChromium, relayMetrics, startRelayAndHost } from "./web.mjs";

const WAIT_MS = 30_000;
/** Strings the relay must never see in the clear: the page's and the server's messages. */
const MARKERS = ["hello from the server", "echo me, señor ✓", "pushed by the server"];

for (const transport of ["webtransport", "websocket"]) {
  test(
    `a page of the host's opens WebSockets to its own origin through the tunnel, over ${transport}: echo both ways, server push, ping, close codes both ways, oversize refused; other origins untouched`,
    { timeout: 180_000 },
    () => socketsThroughTheTunnel(transport),
  );
}

async function socketsThroughTheTunnel(transport) {
  const logs = artefactDir(`websocket-${transport}`);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "blindrelay-websocket-"));
  const procs = new Processes(logs);
  let context;
  let page;
  try {
    const app = await startApp(procs);
    const { link, origin, admin, relay } = await startRelayAndHost(procs, work, app.port, { hostArgs: ["--make-key"], waitMs: WAIT_MS });
    context = await launchChromium(work, new URL(origin), { waitMs: WAIT_MS });
    page = context.pages()[0] ?? (await context.newPage());
    const pageErrors = [];
    page.on("pageerror", (err) => pageErrors.push(err.message));

    // The link as printed (WebTransport), or with WebSocket forced: the sockets' sessions go the same way.
    await page.goto(transport === "websocket" ? link.replace("/.blindrelay/#", "/.blindrelay/?transport=websocket#") : link);
    await page.waitForURL(`${origin}/`, { timeout: WAIT_MS });
    await page.locator("h1", { hasText: "sockets" }).waitFor();

    // The player's own files come from the relay, not the tunnel: no script there, and the
    // browser's WebSocket to /socket reaches the relay, which has nothing there.
    await page.goto(`${origin}/.blindrelay/player.css`);
    await installProbe(page);
    const direct = await openSocket(page, "/socket");
    const directEnd = await waitEvent(page, direct, "close");
    assert.equal(directEnd.code, 1006);
    assert.equal(await eventCount(page, direct, "open"), 0);
    assert.equal(app.upgrades.length, 0, "nothing reaches the server but through the host");

    // A cookie from the app, set through the tunnel: the handshake carries it.
    await page.goto(`${origin}/login`);
    await page.locator("h1", { hasText: "signed in" }).waitFor();
    await page.goto(`${origin}/`);
    await page.locator("h1", { hasText: "sockets" }).waitFor();
    assert.equal(await page.locator('script[src="/.blindrelay/ws.js"]').count(), 1, "the worker put the script in the page");
    const sidesBefore = await playerSessions(admin, transport);
    await installProbe(page);

    // A relative URL, two subprotocols offered; the server chooses the second.
    const a = await openSocket(page, "/socket", ["chat.v2", "chat.v1"], "arraybuffer");
    assert.equal(await readyStateNow(page, a), 0, "CONNECTING right after the constructor");
    const opened = await waitEvent(page, a, "open");
    assert.deepEqual(opened, { type: "open", readyState: 1, protocol: "chat.v1", extensions: "", url: `${origin.replace("https:", "wss:")}/socket` });
    // A push the page did not ask for: the server greets each connection.
    assert.deepEqual(await waitMessage(page, a, 0), { kind: "text", value: "hello from the server" });
    const upgrade = app.upgrades[0];
    assert.equal(upgrade.path, "/socket");
    assert.equal(upgrade.host, new URL(origin).host);
    assert.equal(upgrade.origin, origin);
    assert.deepEqual(upgrade.cookies, ["sid"]);
    assert.equal(upgrade.protocols, "chat.v2, chat.v1");

    // Text and binary echo, in the order sent: a string, a view into a larger buffer,
    // an ArrayBuffer, a Blob (read before it goes, yet kept in its place), a string.
    const buffered = await page.evaluate((id) => {
      const ws = window.sockets[id].ws;
      ws.send("echo me, señor ✓");
      const big = new Uint8Array([9, 9, 1, 2, 3, 9]);
      ws.send(big.subarray(2, 5));
      ws.send(new Uint8Array([4, 5]).buffer);
      ws.send(new Blob([new Uint8Array([6, 7, 8])]));
      ws.send("after the blob");
      return ws.bufferedAmount;
    }, a);
    assert.ok(buffered > 0, "bufferedAmount counts what is queued");
    assert.deepEqual(await waitMessage(page, a, 1), { kind: "text", value: "echo me, señor ✓" });
    assert.deepEqual(await waitMessage(page, a, 2), { kind: "arraybuffer", value: "010203" });
    assert.deepEqual(await waitMessage(page, a, 3), { kind: "arraybuffer", value: "0405" });
    assert.deepEqual(await waitMessage(page, a, 4), { kind: "arraybuffer", value: "060708" });
    assert.deepEqual(await waitMessage(page, a, 5), { kind: "text", value: "after the blob" });
    await page.waitForFunction((id) => window.sockets[id].ws.bufferedAmount === 0, a, { timeout: WAIT_MS });

    // binaryType "blob"; a message the server sends in three fragments; 1 MiB each way.
    await page.evaluate((id) => {
      const ws = window.sockets[id].ws;
      ws.binaryType = "blob";
      ws.send(new Uint8Array([0xca, 0xfe]));
      ws.send("fragments");
      const mib = new Uint8Array(1 << 20);
      for (let i = 0; i < mib.length; i++) mib[i] = (i * 7) & 0xff;
      ws.send(mib);
    }, a);
    assert.deepEqual(await waitMessage(page, a, 6), { kind: "blob", value: "cafe" });
    assert.deepEqual(await waitMessage(page, a, 7), { kind: "text", value: "frag-ment-ed" });
    const mib = await waitMessage(page, a, 8);
    assert.deepEqual(mib, { kind: "blob", value: `${1 << 20} bytes, sum ${checksum((i) => (i * 7) & 0xff, 1 << 20)}` });

    // The server pushes when the test says so, and pings: the page answers with a pong.
    const server = app.sockets[0];
    server.send("pushed by the server");
    assert.deepEqual(await waitMessage(page, a, 9), { kind: "text", value: "pushed by the server" });
    const pong = new Promise((resolve) => server.once("pong", (data) => resolve(data.toString())));
    server.ping("are you there");
    assert.equal(await withDeadline(pong, "the pong"), "are you there");

    // An absolute wss:// URL of the origin goes through the tunnel too; the server closes it.
    const b = await openSocket(page, `${origin.replace("https:", "wss:")}/socket?room=2`);
    await waitEvent(page, b, "open");
    assert.equal(app.upgrades[1].path, "/socket?room=2");
    assert.deepEqual(await waitMessage(page, b, 0), { kind: "text", value: "hello from the server" });
    app.sockets[1].close(4001, "bye from the server");
    const serverClosed = await waitEvent(page, b, "close");
    assert.deepEqual(serverClosed, { type: "close", code: 4001, reason: "bye from the server", wasClean: true, readyState: 3 });
    assert.equal(await eventCount(page, b, "error"), 0);

    // The page closes: the server gets its code and reason, and the page the echo.
    const closing = await page.evaluate((id) => {
      const ws = window.sockets[id].ws;
      ws.close(4000, "bye from the page");
      return ws.readyState;
    }, a);
    assert.equal(closing, 2, "CLOSING until the server answers");
    const pageClosed = await waitEvent(page, a, "close");
    assert.deepEqual(pageClosed, { type: "close", code: 4000, reason: "bye from the page", wasClean: true, readyState: 3 });
    assert.deepEqual(await withDeadline(app.closed[0], "the server's close"), { code: 4000, reason: "bye from the page" });
    // What the browser's own close() refuses, this one refuses too.
    const refusals = await page.evaluate((id) => {
      const ws = window.sockets[id].ws;
      const name = (f) => {
        try {
          f();
          return "none";
        } catch (err) {
          return err.name;
        }
      };
      return [name(() => ws.close(1001)), name(() => ws.close(1000, "x".repeat(124))), name(() => new WebSocket("/socket#frag"))];
    }, a);
    assert.deepEqual(refusals, ["InvalidAccessError", "SyntaxError", "SyntaxError"]);

    // A message over 16 MiB: refused with 1009 to the server; the page gets an error and 1006.
    const c = await openSocket(page, "/socket");
    await waitEvent(page, c, "open");
    await waitMessage(page, c, 0);
    await page.evaluate((id) => window.sockets[id].ws.send("too big"), c);
    const refused = await waitEvent(page, c, "close");
    assert.deepEqual(refused, { type: "close", code: 1006, reason: "", wasClean: false, readyState: 3 });
    assert.equal(await eventCount(page, c, "error"), 1);
    assert.equal((await withDeadline(app.closed[2], "the server's close")).code, 1009);

    // Another origin's socket is the browser's own.
    const foreign = await page.evaluate(() => {
      const ws = new WebSocket("wss://127.0.0.1:9/elsewhere");
      const native = Function.prototype.toString.call(ws.constructor).includes("[native code]");
      ws.close();
      return { native, isWebSocket: ws instanceof WebSocket };
    });
    assert.deepEqual(foreign, { native: true, isWebSocket: true });

    // A strict policy of the host's that allows its own origin's scripts: the script runs.
    await page.goto(`${origin}/strict`);
    await page.locator("h1", { hasText: "strict" }).waitFor();
    await installProbe(page);
    const d = await openSocket(page, "/socket");
    await waitEvent(page, d, "open");
    assert.deepEqual(await waitMessage(page, d, 0), { kind: "text", value: "hello from the server" });
    // One that allows only nonces blocks it: the browser's WebSocket, which reaches the relay.
    await page.goto(`${origin}/nonces`);
    await page.locator("h1", { hasText: "nonces" }).waitFor();
    assert.equal(await page.evaluate(() => Function.prototype.toString.call(WebSocket).includes("[native code]")), true);
    const upgrades = app.upgrades.length;
    await installProbe(page);
    const e = await openSocket(page, "/socket");
    assert.equal((await waitEvent(page, e, "close")).code, 1006);
    assert.equal(app.upgrades.length, upgrades);

    // Each tunnelled socket was a session through the relay, the way the link chose.
    const sidesAfter = await playerSessions(admin, transport);
    assert.ok(sidesAfter - sidesBefore >= 4, `the relay carried the sockets' sessions over ${transport}: ${sidesBefore} then ${sidesAfter}`);
    if (transport === "websocket") assert.equal(await playerSessions(admin, "webtransport"), 0);
    assert.ok(
      app.upgrades.every((u) => u.remote === "127.0.0.1"),
      "the server is reached on loopback, from the host",
    );
    const relayText = `${relay.lines.join("\n")}\n${relay.stderr}`;
    for (const marker of MARKERS) assert.ok(!relayText.includes(marker), "the relay's output holds no message");
    assert.deepEqual(pageErrors, []);
  } catch (err) {
    await page?.screenshot({ path: path.join(logs, "failure.png"), fullPage: true }).catch(() => {});
    throw err;
  } finally {
    await context?.close().catch(() => {});
    await procs.closeAll();
    fs.rmSync(work, { recursive: true, force: true });
  }
}

/** Records each socket's events in the page, for the test to wait on. */
async function installProbe(page) {
  await page.evaluate(() => {
    const hex = (bytes) => [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
    const describe = (bytes) => (bytes.length <= 64 ? hex(bytes) : `${bytes.length} bytes, sum ${bytes.reduce((s, b, i) => (s + b * (i + 1)) % 1_000_000_007, 0)}`);
    window.sockets = [];
    window.openSocket = (url, protocols, binaryType) => {
      const ws = protocols === undefined ? new WebSocket(url) : new WebSocket(url, protocols);
      if (binaryType !== undefined) ws.binaryType = binaryType;
      const rec = { ws, events: [], messages: [] };
      ws.onopen = () => rec.events.push({ type: "open", readyState: ws.readyState, protocol: ws.protocol, extensions: ws.extensions, url: ws.url });
      // Kept in order; a Blob is read afterwards, into the slot it arrived in.
      ws.addEventListener("message", (event) => {
        const slot = rec.messages.push(undefined) - 1;
        const data = event.data;
        if (typeof data === "string") rec.messages[slot] = { kind: "text", value: data };
        else if (data instanceof ArrayBuffer) rec.messages[slot] = { kind: "arraybuffer", value: describe(new Uint8Array(data)) };
        else void data.arrayBuffer().then((buf) => (rec.messages[slot] = { kind: "blob", value: describe(new Uint8Array(buf)) }));
      });
      ws.addEventListener("error", () => rec.events.push({ type: "error" }));
      ws.addEventListener("close", (event) =>
        rec.events.push({ type: "close", code: event.code, reason: event.reason, wasClean: event.wasClean, readyState: ws.readyState }),
      );
      return window.sockets.push(rec) - 1;
    };
  });
}

function openSocket(page, url, protocols, binaryType) {
  return page.evaluate(([u, p, b]) => window.openSocket(u, p ?? undefined, b ?? undefined), [url, protocols ?? null, binaryType ?? null]);
}

async function waitEvent(page, id, type) {
  const handle = await page.waitForFunction(([i, t]) => window.sockets[i].events.find((e) => e.type === t), [id, type], { timeout: WAIT_MS });
  return handle.jsonValue();
}

function eventCount(page, id, type) {
  return page.evaluate(([i, t]) => window.sockets[i].events.filter((e) => e.type === t).length, [id, type]);
}

function readyStateNow(page, id) {
  return page.evaluate((i) => window.sockets[i].ws.readyState, id);
}

async function waitMessage(page, id, index) {
  const handle = await page.waitForFunction(([i, n]) => window.sockets[i].messages[n], [id, index], { timeout: WAIT_MS });
  return handle.jsonValue();
}

/** Player sessions the relay has seen over `transport`. */
async function playerSessions(admin, transport) {
  return (await relayMetrics(admin, "session_sides_total"))[`side="player",transport="${transport}"`] ?? 0;
}

function checksum(byteAt, length) {
  let sum = 0;
  for (let i = 0; i < length; i++) sum = (sum + byteAt(i) * (i + 1)) % 1_000_000_007;
  return sum;
}

function withDeadline(promise, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not come within ${WAIT_MS} ms`)), WAIT_MS);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/**
 * The media server: pages, a login that sets an `HttpOnly` cookie, and a WebSocket
 * server on `/socket` (echo; `fragments` answered in three fragments; `too big`
 * answered with 16 MiB and a byte). It keeps each handshake's path, `Host`,
 * `Origin`, subprotocols, the names of its cookies (never their values) and the
 * peer's address, each connection, and the close each one received.
 */
async function startApp(procs) {
  const upgrades = [];
  const sockets = [];
  const closed = [];
  const page = (res, title, headers = {}, script = "") => {
    const html = `<!doctype html><html><head><meta charset="utf-8"><title>${title}</title><link rel="icon" href="data:,">${script}</head><body><h1>${title}</h1></body></html>`;
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8", "Content-Length": Buffer.byteLength(html), ...headers });
    res.end(html);
  };
  const server = createServer((req, res) => {
    switch (new URL(req.url, "http://app").pathname) {
      case "/":
        return page(res, "sockets");
      case "/login":
        return page(res, "signed in", { "Set-Cookie": `sid=${randomBytes(16).toString("hex")}; Path=/; HttpOnly; Secure; SameSite=Strict` });
      case "/strict":
        return page(res, "strict", { "Content-Security-Policy": "default-src 'self'; script-src 'self'; connect-src 'self'" });
      case "/nonces":
        return page(res, "nonces", { "Content-Security-Policy": "script-src 'nonce-abc123'" }, `<script nonce="abc123">window.ran = true;</script>`);
      default:
        res.writeHead(404, { "Content-Length": 0 });
        return res.end();
    }
  });
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: 64 * 1024 * 1024,
    handleProtocols: (offered) => (offered.has("chat.v1") ? "chat.v1" : false),
  });
  server.on("upgrade", (req, socket, head) => {
    if (new URL(req.url, "http://app").pathname !== "/socket") return socket.destroy();
    const cookies = (req.headers.cookie ?? "")
      .split(";")
      .map((pair) => pair.trim().split("=")[0])
      .filter((name) => name !== "")
      .sort();
    upgrades.push({
      path: req.url,
      host: req.headers.host,
      origin: req.headers.origin,
      protocols: req.headers["sec-websocket-protocol"],
      cookies,
      remote: req.socket.remoteAddress,
    });
    wss.handleUpgrade(req, socket, head, (ws) => {
      sockets.push(ws);
      let resolveClose;
      closed.push(new Promise((resolve) => (resolveClose = resolve)));
      ws.on("close", (code, reason) => resolveClose({ code, reason: reason.toString() }));
      ws.on("error", () => {});
      ws.on("message", (data, isBinary) => {
        if (!isBinary && data.toString() === "fragments") {
          ws.send("frag-", { fin: false });
          ws.send("ment-", { fin: false });
          ws.send("ed", { fin: true });
        } else if (!isBinary && data.toString() === "too big") {
          ws.send(Buffer.alloc(16 * 1024 * 1024 + 1), { binary: true });
        } else {
          ws.send(data, { binary: isBinary });
        }
      });
      ws.send("hello from the server");
    });
  });
  server.closeAllConnections = () => {
    for (const ws of wss.clients) ws.terminate();
  };
  procs.track(server);
  const port = await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve(server.address().port));
  });
  return { port, upgrades, sockets, closed };
}
