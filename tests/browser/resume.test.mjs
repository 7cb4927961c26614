// A film plays on across a relay that dies (PROTOCOL.md section 10.8, web/README.md
// "Resumable sessions"), in a real browser: Debian's Chromium, headless, opens the
// share link of a host forwarding to nginx, which serves a 2-minute H.264/AAC film
// at about twice its bitrate (`limit_rate`), so that the film's Range request is
// still downloading, through the Service Worker's tunnel, while it plays. A few
// seconds in, `blindrelayd` is killed with SIGKILL and started again on the same
// port with the same arguments and certificate (`--state-dir`). Playback goes on:
// the video's `currentTime` passes the end of what had been buffered when the relay
// died by several seconds (so bytes sent after the restart were played), the video
// element's `error` stays null, the page throws nothing and logs no error, and the
// host logs "session resumed" (it resumed the page's sessions rather than serving
// new ones). Once over WebTransport, as the link is printed, and once with the
// link's `?transport=websocket`. Over WebSocket the page notices the dead relay at
// once (its TCP connection is reset) and resumes as soon as the host has registered
// again (about a second); over
// WebTransport only when Chromium's QUIC next sends a packet, its keep-alive PING 15 s
// after the last, which the restarted relay answers with a stateless reset: the film
// then stands still for several seconds (about 9.6 s of it is buffered ahead when the
// relay dies), a pause, not an error. Artefacts in `target/browser-tests/resume-*/`:
// the logs of relay (before and after), host and nginx, the page's and the service
// worker's console, and `failure.png` when a step failed.

import { test } from "node:test";
import assert from "node:assert/strict";
import dgram from "node:dgram";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

import { Processes, artefactDir } from "./support.mjs";
import { freePort, makeFilm, relayMetrics, spkiHash, startNginx, startRelayAndHost } from "./web.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
/** For each step that waits on the processes or the page; generous, as two cores run all of it. */
const WAIT_MS = 30_000;
/** Long enough that the download, at `RATE`, is far from done when the relay dies. */
const FILM_SECONDS = 120;
/** nginx's rate per request: about twice the film's (320x240 test pattern, ~27 KB/s). */
const RATE = "56k";
/** How far into the film the relay is killed. */
const KILL_AT_S = 5;
/** How far past the buffered end at the kill the film must play. */
const PAST_BUFFERED_S = 5;

for (const transport of ["webtransport", "websocket"]) {
  test(
    `over ${transport}, the film plays on across blindrelayd killed (SIGKILL) and started again`,
    { timeout: 150_000 },
    () => playAcrossRestart(transport),
  );
}

async function playAcrossRestart(transport) {
  const logs = artefactDir(`resume-${transport}`);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "blindrelay-resume-"));
  const procs = new Processes(logs);
  const consoleLines = [];
  let context;
  let page;
  try {
    const site = path.join(work, "site");
    fs.mkdirSync(site);
    makeFilm(path.join(site, "film.mp4"), FILM_SECONDS);
    fs.writeFileSync(
      path.join(site, "index.html"),
      `<!doctype html><html><head><meta charset="utf-8"><title>home media</title><link rel="icon" href="data:,"></head>` +
        `<body><h1>home media</h1><video id="film" src="/film.mp4" muted playsinline preload="auto" width="640" height="480"></video></body></html>`,
    );
    const nginxPort = await freePort();
    const nginx = startNginx(procs, work, site, nginxPort, { serverConf: `    limit_rate ${RATE};` });
    await waitForPort(nginxPort, nginx);

    // A fixed port for both starts, and the certificate kept in a state folder: the
    // restarted relay has the same URL, pin and TLS certificate (the one Chromium
    // trusts for the origin). Every player is served (no --authorized-players).
    const relayPort = await freeUdpAndTcpPort();
    const listen = `127.0.0.1:${relayPort}`;
    const relayArgs = ["--state-dir", path.join(work, "relay-state")];
    const { relay, host, admin, link, origin } = await startRelayAndHost(procs, work, nginxPort, {
      listen,
      relayArgs,
      hostArgs: ["--make-key"],
      waitMs: WAIT_MS,
    });
    const relayUrl = relay.lines.find((line) => line.startsWith("relay url: "));

    context = await launch(work, new URL(origin));
    const keep = (from) => (msg) => consoleLines.push({ from, type: msg.type(), text: msg.text(), url: msg.location().url });
    context.on("serviceworker", (worker) => worker.on("console", keep("service worker")));
    page = context.pages()[0] ?? (await context.newPage());
    const pageErrors = [];
    page.on("pageerror", (err) => pageErrors.push(err.message));
    page.on("console", keep("page"));
    const failedRequests = [];
    page.on("requestfailed", (req) => failedRequests.push(`${req.url()}: ${req.failure()?.errorText}`));

    const opened = transport === "websocket" ? link.replace("/.blindrelay/#", "/.blindrelay/?transport=websocket#") : link;
    await page.goto(opened);
    await page.waitForURL(`${origin}/`, { timeout: WAIT_MS });
    await page.locator("h1", { hasText: "home media" }).waitFor();

    // Plays, `waiting` events counted from here on.
    await page.evaluate(() => {
      const v = document.getElementById("film");
      window.stalls = 0;
      v.addEventListener("waiting", () => window.stalls++);
      return v.play();
    });
    await page.waitForFunction((at) => document.getElementById("film").currentTime > at, KILL_AT_S, { timeout: WAIT_MS * 2 });

    // The page's sessions came the way asked for.
    const sidesBefore = await relayMetrics(admin, "session_sides_total");
    const other = transport === "websocket" ? "webtransport" : "websocket";
    assert.ok(sidesBefore[`side="player",transport="${transport}"`] >= 1, JSON.stringify(sidesBefore));
    assert.equal(sidesBefore[`side="player",transport="${other}"`], 0, JSON.stringify(sidesBefore));

    const atKill = await videoState(page);
    assert.ok(atKill.bufferedEnd < FILM_SECONDS - 30, `the film is still downloading at the kill: ${JSON.stringify(atKill)}`);
    const killedAt = Date.now();
    await relay.kill();
    const restarted = procs.start("relay-restarted", "blindrelayd", ["--listen", listen, "--admin", "127.0.0.1:0", ...relayArgs]);
    assert.equal(
      `relay url: ${await restarted.waitForLine(/^relay url: (\S+)$/, WAIT_MS)}`,
      relayUrl,
      "the same relay URL and pin after the restart",
    );
    const restartedAfterMs = Date.now() - killedAt;
    const adminAfter = await restarted.waitForLine(/^admin: (\S+)$/, WAIT_MS);

    // Polled until the film has played well past what it had at the kill; the
    // first moments the host resumed a session and new bytes were buffered are noted.
    const target = atKill.bufferedEnd + PAST_BUFFERED_S;
    const deadline = Date.now() + WAIT_MS * 2;
    let resumedAfterMs;
    let bufferedAgainAfterMs;
    let state;
    // The longest time currentTime stood still: the pause the viewer saw.
    let still = { since: Date.now(), at: atKill.currentTime, longestMs: 0 };
    for (;;) {
      state = await videoState(page);
      const since = Date.now() - killedAt;
      if (state.currentTime !== still.at) still = { since: Date.now(), at: state.currentTime, longestMs: still.longestMs };
      still.longestMs = Math.max(still.longestMs, Date.now() - still.since);
      if (resumedAfterMs === undefined && host.logLines.some((line) => /session resumed/.test(line))) resumedAfterMs = since;
      if (bufferedAgainAfterMs === undefined && state.bufferedEnd > atKill.bufferedEnd + 0.5) bufferedAgainAfterMs = since;
      assert.equal(state.error, null, `the video has no error: ${JSON.stringify(state)}`);
      if (state.currentTime > target && !state.paused) break;
      if (Date.now() > deadline) {
        throw new Error(
          `the film did not play past ${target.toFixed(1)} s within ${WAIT_MS * 2} ms of the restart: ` +
            `at the kill ${JSON.stringify(atKill)}, now ${JSON.stringify(state)}, ` +
            `session resumed after ${resumedAfterMs} ms, buffered again after ${bufferedAgainAfterMs} ms`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    await host.waitForLog(/session resumed/, WAIT_MS);
    resumedAfterMs ??= Date.now() - killedAt;

    // The restarted relay carried the resumed sessions, the same way as before.
    const sidesAfter = await relayMetrics(adminAfter, "session_sides_total");
    const players = (name) => sidesAfter[`side="player",transport="${name}"`];
    console.log(
      `${transport}: killed at currentTime ${atKill.currentTime.toFixed(2)} s with ${atKill.bufferedEnd.toFixed(2)} s buffered; ` +
        `relay up again after ${restartedAfterMs} ms; the host resumed a session ${resumedAfterMs} ms and new bytes were ` +
        `buffered ${bufferedAgainAfterMs} ms after the kill; played on to ${state.currentTime.toFixed(2)} s ` +
        `(${state.bufferedEnd.toFixed(2)} s buffered), standing still for ${still.longestMs} ms at most ` +
        `(${state.stalls - atKill.stalls} waiting events); player sessions on the restarted relay: ` +
        `${players(transport)} over ${transport}, ${players(other)} over ${other}`,
    );
    assert.ok(bufferedAgainAfterMs !== undefined, "bytes sent after the restart were buffered");
    // Both ends notice the restart at their next keep-alive (2 s: the page's
    // datagram over WebTransport, its PING over WebSocket; the host's QUIC PING)
    // and resume at once; Chromium's own QUIC keep-alive alone would take 15 s.
    assert.ok(resumedAfterMs < 8000, `resumed ${resumedAfterMs} ms after the kill, well inside 15 s`);
    assert.ok(players(transport) >= 1, `the sessions resumed over ${transport}: ${JSON.stringify(sidesAfter)}`);
    assert.equal(players(other), 0, `no session resumed over ${other}: ${JSON.stringify(sidesAfter)}`);

    assert.deepEqual(pageErrors, [], "the page threw nothing");
    // All but one: the relay's page at /.blindrelay/ has no icon, and Chromium asks
    // the relay for /favicon.ico (404) before the service worker is in charge.
    const errors = consoleLines.filter(
      (line) => line.from === "page" && line.type === "error" && !(line.url === `${origin}/favicon.ico` && /404/.test(line.text)),
    );
    assert.deepEqual(errors, [], "the page logged no error");
    assert.equal((await videoState(page)).error, null);
    if (failedRequests.length > 0) console.log(`failed requests: ${failedRequests.join("; ")}`);
  } catch (err) {
    await page?.screenshot({ path: path.join(logs, "failure.png"), fullPage: true }).catch(() => {});
    throw err;
  } finally {
    fs.writeFileSync(
      path.join(logs, "console.log"),
      consoleLines.map((line) => `${line.from} ${line.type}: ${line.text} (${line.url})\n`).join(""),
    );
    await context?.close().catch(() => {});
    await procs.closeAll();
    fs.rmSync(work, { recursive: true, force: true });
  }
}

/** The film's position, the end of the buffered range it is in, and its state. */
function videoState(page) {
  return page.evaluate(() => {
    const v = document.getElementById("film");
    let bufferedEnd = 0;
    for (let i = 0; i < v.buffered.length; i++) {
      if (v.buffered.start(i) <= v.currentTime + 0.5) bufferedEnd = Math.max(bufferedEnd, v.buffered.end(i));
    }
    return {
      currentTime: v.currentTime,
      bufferedEnd,
      paused: v.paused,
      readyState: v.readyState,
      error: v.error && { code: v.error.code, message: v.error.message },
      stalls: window.stalls,
    };
  });
}

/**
 * Headless Chromium as in player.test.mjs: a fresh profile that trusts exactly the
 * certificate the origin presents on TCP (the relay's, kept across the restart),
 * the host's origin mapped to 127.0.0.1 (not ::1, where the relay does not listen).
 */
async function launch(work, originUrl) {
  const spki = await spkiHash("127.0.0.1", Number(originUrl.port), originUrl.hostname);
  const context = await chromium.launchPersistentContext(path.join(work, "chromium-profile"), {
    executablePath: CHROMIUM,
    headless: true,
    chromiumSandbox: false,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--autoplay-policy=no-user-gesture-required",
      `--ignore-certificate-errors-spki-list=${spki}`,
      `--host-resolver-rules=MAP ${originUrl.hostname} 127.0.0.1`,
    ],
    viewport: { width: 800, height: 640 },
  });
  context.setDefaultTimeout(WAIT_MS);
  return context;
}

/**
 * A port free for TCP and UDP on loopback, outside the kernel's range for outgoing
 * connections (so that nothing takes it while the relay is down).
 */
async function freeUdpAndTcpPort() {
  for (let i = 0; i < 200; i++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    const ok = await new Promise((resolve) => {
      const server = net.createServer();
      server.once("error", () => resolve(false));
      server.listen(port, "127.0.0.1", () => {
        const udp = dgram.createSocket("udp4");
        udp.once("error", () => server.close(() => resolve(false)));
        udp.bind(port, "127.0.0.1", () => udp.close(() => server.close(() => resolve(true))));
      });
    });
    if (ok) return port;
  }
  throw new Error("no port free for TCP and UDP");
}

/** Waits until something accepts on 127.0.0.1:`port`, or `proc` exits. */
async function waitForPort(port, proc) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, "127.0.0.1", () => {
        s.destroy();
        resolve(true);
      });
      s.on("error", () => resolve(false));
    });
    if (ok) return;
    if (proc.exited) throw new Error(`${proc.name} exited: ${proc.stderr}`);
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port} after ${WAIT_MS} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
