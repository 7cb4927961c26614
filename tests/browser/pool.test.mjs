// The browser player through a pool of relays (PROTOCOL.md section 18): three
// `blindrelayd` processes on loopback, one certificate, each listing the three as
// members (`127.0.0.1:<port>`); a host registered at its owner; the share link
// opened at a member that does not own the host. The page keeps its origin (the
// entry member's `<host id>.localhost`), follows the entry member's redirect to the
// owner, and so does its service worker: the film plays and seeks through the
// tunnel. The entry member answered redirects and served no session; the owner
// served them all, over WebSocket (a pool trusted by pin: each member's
// WebTransport certificate is its own). Over the default transport setting and
// with the link's ?transport=websocket.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import { Processes, artefactDir, binDir } from "./support.mjs";
import { freePort, launchChromium, makeFilm, relayMetrics, startNginx, waitForPort } from "./web.mjs";

// Generous: two cores run three relays, the host, nginx, Chromium and this test.
const WAIT_MS = 30_000;
const FILM_SECONDS = 62;

for (const setting of ["auto", "websocket"]) {
  test(
    `the share link opened at a pool member that does not own the host (transport ${setting}): the page follows the redirect to the owner and the film plays and seeks`,
    { timeout: 300_000 },
    () => watchThroughThePool(setting),
  );
}

async function watchThroughThePool(setting) {
  const shots = artefactDir(`pool-${setting}`);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "blindrelay-pool-"));
  const procs = new Processes(shots);
  let context;
  let page;
  try {
    const site = path.join(work, "site");
    fs.mkdirSync(site);
    makeFilm(path.join(site, "film.mp4"), FILM_SECONDS);
    fs.writeFileSync(
      path.join(site, "index.html"),
      `<!doctype html><html><head><meta charset="utf-8"><title>home media</title></head>` +
        `<body><h1>home media</h1><video id="film" src="/film.mp4" controls muted playsinline width="640" height="480"></video></body></html>`,
    );
    const nginxPort = await freePort();
    const nginx = startNginx(procs, work, site, nginxPort);
    await waitForPort(nginxPort, nginx, WAIT_MS);

    // Three members sharing one certificate: the first makes it in the state
    // folder, the others read it from there.
    const ports = [await freePort(), await freePort(), await freePort()];
    const names = ports.map((port) => `127.0.0.1:${port}`);
    const membersFile = path.join(work, "members");
    fs.writeFileSync(membersFile, `${names.join("\n")}\n`);
    const stateDir = path.join(work, "state");
    const members = [];
    for (const [i, port] of ports.entries()) {
      const relay = procs.start(`relay-${i}`, "blindrelayd", [
        "--listen", `127.0.0.1:${port}`,
        "--admin", "127.0.0.1:0",
        "--state-dir", stateDir,
        "--pool-member", names[i],
        "--pool-members-file", membersFile,
        "--pool-refresh", "200ms",
      ]);
      const url = await relay.waitForLine(/^relay url: (\S+)$/, WAIT_MS);
      const admin = await relay.waitForLine(/^admin: (\S+)$/, WAIT_MS);
      members.push({ relay, url, admin, port, name: names[i] });
    }
    assert.equal(new Set(members.map((m) => new URL(m.url).searchParams.get("pin"))).size, 1, "one certificate for the pool");
    for (const member of members) {
      await until(async () => (await relayMetrics(member.admin, "pool_members"))[""] === 3, "every member sees the three");
    }

    // The host enters at the first member by name and registers at its owner.
    keygen(work, "host.key", "host");
    const host = procs.start(
      "host",
      "blindrelay",
      ["host", "--key", "host.key", "--relay", members[0].url.replace("://127.0.0.1:", "://localhost:"), "--forward", `127.0.0.1:${nginxPort}`],
      { cwd: work },
    );
    const hostId = await host.waitForLine(/^host id: (\S+)$/, WAIT_MS);
    await host.waitForLine(/^relay: registered$/, WAIT_MS);
    const printed = host.lines.find((line) => line.startsWith("web: "));
    assert.ok(printed, `the host printed a web: link: ${host.stderr}`);
    let owner;
    await until(async () => {
      for (const member of members) {
        if ((await relayMetrics(member.admin, "registered_hosts"))[""] === 1) owner = member;
      }
      return owner !== undefined;
    }, "the host is registered at a member");
    // The link at a member that does not own the host.
    const entry = members.find((m) => m !== owner);
    const link = new URL(printed.slice(5));
    link.port = String(entry.port);
    if (setting === "websocket") link.search = "?transport=websocket";
    const origin = link.origin;
    assert.equal(link.hostname, `${hostId}.localhost`);

    context = await launchChromium(work, link, { waitMs: WAIT_MS });
    page = context.pages()[0] ?? (await context.newPage());
    const pageErrors = [];
    page.on("pageerror", (err) => pageErrors.push(err.message));

    // The page checks the host through the owner and hands over to the worker,
    // which reaches it the same way: the host's page loads on the entry's origin.
    await page.goto(link.href);
    await page.waitForURL(`${origin}/`, { timeout: WAIT_MS });
    await page.locator("h1", { hasText: "home media" }).waitFor();
    assert.equal(new URL(page.url()).origin, origin, "the page kept its origin");
    // The worker came with the relay's member list of now in its script URL (and so its policy).
    const script = new URL(await page.evaluate(() => navigator.serviceWorker.controller.scriptURL));
    assert.equal(script.pathname, "/.blindrelay/sw.js");
    assert.ok(script.searchParams.get("pool").split(",").includes(owner.name), script.href);

    // Plays past 3 s, then from 45 s on, through the tunnel to the owner.
    await page.evaluate(() => document.getElementById("film").play());
    await page.waitForFunction(() => document.getElementById("film").currentTime > 3, null, { timeout: WAIT_MS * 2 });
    await page.evaluate(() => {
      document.getElementById("film").currentTime = 45;
    });
    await page.waitForFunction(
      () => {
        const v = document.getElementById("film");
        return v.currentTime > 47 && !v.paused && !v.error;
      },
      null,
      { timeout: WAIT_MS * 2 },
    );
    await page.screenshot({ path: path.join(shots, "playing.png"), fullPage: true });
    assert.deepEqual(pageErrors, [], "the page threw nothing while it played and seeked");

    // The entry member redirected the page's and the worker's sessions and served
    // none; the owner served them, by WebSocket.
    const redirects = await relayMetrics(entry.admin, "pool_redirects_total");
    assert.ok(redirects['reason="connect"'] >= 2, JSON.stringify(redirects));
    const entrySides = await relayMetrics(entry.admin, "session_sides_total");
    const served = (sides) => Object.entries(sides).filter(([k]) => k.startsWith('side="player"')).reduce((n, [, v]) => n + v, 0);
    assert.equal(served(entrySides), 0, JSON.stringify(entrySides));
    const ownerSides = await relayMetrics(owner.admin, "session_sides_total");
    assert.ok(ownerSides['side="player",transport="websocket"'] >= 2, JSON.stringify(ownerSides));
    for (const other of members.filter((m) => m !== owner && m !== entry)) {
      assert.equal(served(await relayMetrics(other.admin, "session_sides_total")), 0, "the third member served nothing");
    }
  } catch (err) {
    await page?.screenshot({ path: path.join(shots, "failure.png"), fullPage: true }).catch(() => {});
    throw err;
  } finally {
    await context?.close().catch(() => {});
    await procs.closeAll();
    fs.rmSync(work, { recursive: true, force: true });
  }
}

/** Waits until `check()` resolves true, asking every 100 ms; fails with `what` after the deadline. */
async function until(check, what) {
  const deadline = Date.now() + WAIT_MS;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`not within ${WAIT_MS} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/** Makes a key in `dir` with `blindrelay keygen`; returns the host id or player key it printed. */
function keygen(dir, file, role) {
  const out = execFileSync(path.join(binDir(), "blindrelay"), ["keygen", "--role", role, "--out", path.join(dir, file)], {
    encoding: "utf8",
  });
  const m = /^(?:host id|player key): (\S+)$/m.exec(out);
  assert.ok(m, `keygen printed ${out}`);
  return m[1];
}
