// The browser player through a pool of relays (PROTOCOL.md section 18): three
// `blindrelayd` processes on loopback, one certificate, each listing the three as
// members (`127.0.0.1:<port>`); a host registered at its owner; the share link
// opened at a member that does not own the host. The page keeps its origin (the
// entry member's `<host id>.localhost`), follows the entry member's redirect to the
// owner, and so does its service worker: the film plays and seeks through the
// tunnel. The entry member answered redirects and served no session; the owner
// served them all, over WebSocket (a pool trusted by pin: each member's
// WebTransport certificate is its own). Over the default transport setting and
// with the link's ?transport=websocket. And a member that joins the pool and takes
// the host: the page, opened again, installs a worker whose policy lets it reach
// the new owner (its script URL names the members), and the film is served from there.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
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

    const members = await startMembers(procs, work, 3, 3);
    keygen(work, "host.key", "host");
    const { hostId, printed, owner } = await startHost(procs, work, members, members[0], nginxPort);
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

test(
  "a member joins the pool and takes the host: the page opened again installs a worker that reaches the new owner",
  { timeout: 300_000 },
  async () => {
    const shots = artefactDir("pool-join");
    const work = fs.mkdtempSync(path.join(os.tmpdir(), "blindrelay-pool-"));
    const procs = new Processes(shots);
    let context;
    let page;
    try {
      const site = path.join(work, "site");
      fs.mkdirSync(site);
      makeFilm(path.join(site, "film.mp4"), 10);
      fs.writeFileSync(path.join(site, "index.html"), "<!doctype html><title>home media</title><h1>home media</h1>");
      const nginxPort = await freePort();
      const nginx = startNginx(procs, work, site, nginxPort);
      await waitForPort(nginxPort, nginx, WAIT_MS);
      // Two members listed; the third runs, unlisted, until it joins.
      const members = await startMembers(procs, work, 3, 2);
      const [a, b, joiner] = members;
      // A host the joiner will own once listed.
      let hostId;
      for (let i = 0; hostId === undefined && i < 40; i++) {
        const id = keygen(work, `host-${i}.key`, "host");
        if (ownerOf(id, members.map((m) => m.name)) === joiner.name) {
          fs.copyFileSync(path.join(work, `host-${i}.key`), path.join(work, "host.key"));
          hostId = id;
        }
      }
      assert.ok(hostId, "a host id the joiner owns");
      const before = members.find((m) => m.name === ownerOf(hostId, [a.name, b.name]));
      const entry = before === a ? b : a;
      const started = await startHost(procs, work, [a, b], entry, nginxPort);
      assert.equal(started.hostId, hostId);
      assert.equal(started.owner, before);
      const origin = new URL(started.printed.slice(5)).origin;

      context = await launchChromium(work, new URL(origin), { waitMs: WAIT_MS });
      page = context.pages()[0] ?? (await context.newPage());
      await page.goto(started.printed.slice(5));
      await page.waitForURL(`${origin}/`, { timeout: WAIT_MS });
      await page.locator("h1", { hasText: "home media" }).waitFor();
      const poolOf = async () =>
        new URL(await page.evaluate(() => navigator.serviceWorker.controller.scriptURL)).searchParams.get("pool").split(",");
      assert.ok(!(await poolOf()).includes(joiner.name), "the first worker's list lacks the member to come");

      // The third member joins; the host moves to it.
      fs.writeFileSync(path.join(work, "members"), `${members.map((m) => m.name).join("\n")}\n`);
      for (const member of members) {
        await until(async () => (await relayMetrics(member.admin, "pool_members"))[""] === 3, "every member sees the three");
      }
      await until(async () => (await relayMetrics(joiner.admin, "registered_hosts"))[""] === 1, "the host moved to the joiner");

      // The page opened again (its ticket is kept): a worker with the new list, and the film from the joiner.
      await page.goto(`${origin}/.blindrelay/`);
      await page.waitForURL(`${origin}/`, { timeout: WAIT_MS });
      await page.locator("h1", { hasText: "home media" }).waitFor();
      assert.ok((await poolOf()).includes(joiner.name), "the new worker may reach the joiner");
      const served = await relayMetrics(joiner.admin, "session_sides_total");
      const range = await page.evaluate(async () => {
        const r = await fetch("/film.mp4", { headers: { Range: "bytes=0-99" }, cache: "no-store" });
        return { status: r.status, length: (await r.arrayBuffer()).byteLength };
      });
      assert.deepEqual(range, { status: 206, length: 100 });
      const after = await relayMetrics(joiner.admin, "session_sides_total");
      const players = (sides) => sides['side="player",transport="websocket"'] ?? 0;
      assert.ok(players(after) >= 1 && players(after) >= players(served), JSON.stringify(after));
    } catch (err) {
      await page?.screenshot({ path: path.join(shots, "failure.png"), fullPage: true }).catch(() => {});
      throw err;
    } finally {
      await context?.close().catch(() => {});
      await procs.closeAll();
      fs.rmSync(work, { recursive: true, force: true });
    }
  },
);

/**
 * `count` members on loopback sharing one certificate (the first makes it in the
 * state folder, the others read it from there), the first `listed` of them in the
 * member file they all read; resolves once each listed member sees them all.
 */
async function startMembers(procs, work, count, listed) {
  const ports = [];
  for (let i = 0; i < count; i++) ports.push(await freePort());
  const names = ports.map((port) => `127.0.0.1:${port}`);
  const membersFile = path.join(work, "members");
  fs.writeFileSync(membersFile, `${names.slice(0, listed).join("\n")}\n`);
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
  for (const member of members.slice(0, listed)) {
    await until(async () => (await relayMetrics(member.admin, "pool_members"))[""] === listed, "every member sees the others");
  }
  return members;
}

/**
 * `blindrelay host` with `host.key` in `work`, entering the pool at `at` by name and
 * forwarding to nginx: resolves with its host id, its `web:` line and the member
 * of `members` it registered at.
 */
async function startHost(procs, work, members, at, nginxPort) {
  const host = procs.start(
    "host",
    "blindrelay",
    ["host", "--key", "host.key", "--relay", at.url.replace("://127.0.0.1:", "://localhost:"), "--forward", `127.0.0.1:${nginxPort}`],
    { cwd: work },
  );
  const hostId = await host.waitForLine(/^host id: (\S+)$/, WAIT_MS);
  await host.waitForLine(/^relay: registered$/, WAIT_MS);
  const printed = host.lines.find((line) => line.startsWith("web: "));
  assert.ok(printed, `the host printed a web: link: ${host.stderr}`);
  let registeredAt;
  await until(async () => {
    for (const member of members) {
      if ((await relayMetrics(member.admin, "registered_hosts"))[""] === 1) registeredAt = member;
    }
    return registeredAt !== undefined;
  }, "the host is registered at a member");
  return { hostId, printed, owner: registeredAt };
}

/** The owner of host id `hostId` (its text form) among `names` (PROTOCOL.md section 18.2). */
function ownerOf(hostId, names) {
  const h = base32(hostId);
  const score = (name) => {
    const bytes = Buffer.from(name, "ascii");
    return createHash("sha256")
      .update(Buffer.concat([Buffer.from("blindrelay/1 placement", "ascii"), Buffer.of(bytes.length), bytes, h]))
      .digest()
      .readBigUInt64BE(0);
  };
  return [...names].sort((x, y) => {
    const d = score(y) - score(x);
    return d > 0n ? 1 : d < 0n ? -1 : Buffer.compare(Buffer.from(x), Buffer.from(y));
  })[0];
}

/** Bytes of lower-case base32 without padding (RFC 4648). */
function base32(text) {
  const alphabet = "abcdefghijklmnopqrstuvwxyz234567";
  let acc = 0;
  let bits = 0;
  const out = [];
  for (const ch of text) {
    acc = (acc << 5) | alphabet.indexOf(ch);
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out.push((acc >> bits) & 0xff);
    }
  }
  return Buffer.from(out);
}

test("the placement here is the protocol's: PROTOCOL.md section 18.2's example", () => {
  const h = Buffer.alloc(32, 0x11);
  const id = toBase32(h);
  assert.equal(ownerOf(id, ["relay-1.relay.example.net", "relay-2.relay.example.net", "relay-0.relay.example.net"]), "relay-0.relay.example.net");
  assert.equal(ownerOf(id, ["relay-1.relay.example.net", "relay-2.relay.example.net"]), "relay-2.relay.example.net");
});

function toBase32(bytes) {
  const alphabet = "abcdefghijklmnopqrstuvwxyz234567";
  let acc = 0;
  let bits = 0;
  let out = "";
  for (const byte of bytes) {
    acc = (acc << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += alphabet[(acc >> bits) & 31];
    }
    acc &= (1 << bits) - 1;
  }
  if (bits > 0) out += alphabet[(acc << (5 - bits)) & 31];
  return out;
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
