// The browser player in a real browser (Debian's Chromium, headless): a relay that
// serves the player, a host forwarding to nginx that serves a page with a <video>
// of a real H.264/AAC film (made by ffmpeg) and a 17 MiB file, and the share link
// the host prints opened in Chromium. The page is refused while the host's
// authorized_players lacks the browser's key and gets in by itself once it is
// added (the host re-reads the file, no restart; the page asks again every 5 s); then the film plays, seeks to 45 s and plays
// on through Range requests in the tunnel, and a file fetched by the page has the
// bytes on disk. All of it twice: over WebTransport (the relay counts WebTransport
// sessions and no WebSocket one) and with the link's ?transport=websocket. And once
// with UDP to the relay unreachable: the page falls back to WebSocket by itself. A
// screenshot of the playing page is kept as an artefact.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

import { Processes, artefactDir, binDir } from "./support.mjs";
import { forwardTcp, freePort, makeFilm, relayMetrics, spkiHash, startNginx, startRelayAndHost } from "./web.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
// Generous: two cores run the relay, the host, nginx, Chromium and this test.
const WAIT_MS = 30_000;
const FILM_SECONDS = 62;
const BLOB_LEN = 17 * 1024 * 1024 + 12345;

for (const transport of ["webtransport", "websocket"]) {
  test(
    `the share link in Chromium over ${transport}: refused until the host lists the browser's key, then the film plays, seeks and a 17 MiB file arrives intact`,
    { timeout: 300_000 },
    () => watchTheFilm(transport),
  );
}

async function watchTheFilm(transport) {
  const shots = artefactDir(`player-${transport}`);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "blindrelay-player-"));
  const procs = new Processes(shots);
  let context;
  let page;
  try {
    // The host's media server: nginx serving a page, the film and a large file.
    const site = path.join(work, "site");
    fs.mkdirSync(site);
    makeFilm(path.join(site, "film.mp4"), FILM_SECONDS);
    const blob = randomBytes(BLOB_LEN);
    fs.writeFileSync(path.join(site, "blob.bin"), blob);
    const blobSha = createHash("sha256").update(blob).digest("hex");
    fs.writeFileSync(
      path.join(site, "index.html"),
      `<!doctype html><html><head><meta charset="utf-8"><title>home media</title></head>` +
        `<body><h1>home media</h1><video id="film" src="/film.mp4" controls muted playsinline width="640" height="480"></video></body></html>`,
    );
    const nginxPort = await freePort();
    const nginx = startNginx(procs, work, site, nginxPort);
    await waitForPort(nginxPort, nginx);

    keygen(work, "host.key", "host");
    const someoneElse = keygen(work, "other.key", "player");
    const players = path.join(work, "authorized_players");
    fs.writeFileSync(players, `# players this host serves\n${someoneElse}\n`);
    const { host, admin, link, origin, hostId } = await startRelayAndHost(procs, work, nginxPort, {
      hostArgs: ["--authorized-players", players],
      waitMs: WAIT_MS,
    });
    const originUrl = new URL(origin);
    assert.equal(originUrl.hostname, `${hostId}.localhost`, "the page has the host's own origin");
    const ticket = new URL(link).hash.slice(1);

    context = await launch(work, originUrl);
    page = context.pages()[0] ?? (await context.newPage());
    const pageErrors = [];
    page.on("pageerror", (err) => pageErrors.push(err.message));
    const shot = (name) => page.screenshot({ path: path.join(shots, name), fullPage: true });
    const state = (name) => page.locator(`body[data-state="${name}"]`).waitFor();

    // Without a ticket the page says so.
    await page.goto(`${origin}/.blindrelay/`);
    await state("no-ticket");

    // The link the host printed, with WebSocket forced by the query where asked.
    const opened = transport === "websocket" ? link.replace("/.blindrelay/#", "/.blindrelay/?transport=websocket#") : link;
    await page.goto(opened);
    await state("not-authorized");
    assert.equal(new URL(page.url()).hash, "", "the ticket left the address bar");
    const browserKey = (await page.locator("#player-key").textContent()).trim();
    assert.match(browserKey, /^[a-z2-7]{52}$/);
    assert.notEqual(browserKey, someoneElse);
    const words = transport === "websocket" ? "Transport: WebSocket (set by the link)" : "Transport: WebTransport;";
    await page.locator("#transport", { hasText: words }).waitFor();
    await page.locator(`body[data-transport="${transport}"]`).waitFor();
    await page.locator("#transport", { hasText: "by WebCrypto, not readable by scripts" }).waitFor();
    await shot("1-not-authorized.png");

    // The owner adds the key; the host re-reads its list at the next session, and
    // the page, counting down to its next try, gets in by itself.
    await page.locator("#countdown", { hasText: /^Asking the host again in \d+ s…$/ }).waitFor();
    fs.appendFileSync(players, `${browserKey} # the browser\n`);
    await page.waitForURL(`${origin}/`, { timeout: WAIT_MS });
    await page.locator("h1", { hasText: "home media" }).waitFor();
    await host.waitForLog(/authorized players reloaded/, WAIT_MS);

    // Plays: past 3 s, then from 45 s on.
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
    await shot("playing.png");
    console.log(`screenshot of the playing page: ${path.join(shots, "playing.png")}`);

    // A seek storm, as a person dragging the bar: each seek abandons a request's
    // stream with its code and opens another; nothing throws, and playback goes on.
    await page.evaluate(async () => {
      const v = document.getElementById("film");
      for (let i = 0; i < 40; i++) {
        v.currentTime = 5 + ((i * 7.3) % 50);
        await new Promise((resolve) => setTimeout(resolve, 40));
      }
    });
    const afterStorm = await page.evaluate(() => document.getElementById("film").currentTime);
    await page.waitForFunction(
      (from) => {
        const v = document.getElementById("film");
        return v.currentTime > from + 1 && !v.paused && !v.error;
      },
      afterStorm,
      { timeout: WAIT_MS * 2 },
    );
    assert.deepEqual(pageErrors, [], "the page threw nothing while it played and seeked");

    // A Range request crosses as it is, and the answer is nginx's 206.
    const range = await page.evaluate(async () => {
      const r = await fetch("/film.mp4", { headers: { Range: "bytes=100-199" } });
      return { status: r.status, contentRange: r.headers.get("Content-Range"), length: (await r.arrayBuffer()).byteLength };
    });
    const filmLen = fs.statSync(path.join(site, "film.mp4")).size;
    assert.deepEqual(range, { status: 206, contentRange: `bytes 100-199/${filmLen}`, length: 100 });

    // A 17 MiB file through the tunnel has the bytes on disk.
    const fetched = await page.evaluate(async () => {
      const r = await fetch("/blob.bin");
      const digest = await crypto.subtle.digest("SHA-256", await r.arrayBuffer());
      return { status: r.status, sha: [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("") };
    });
    assert.deepEqual(fetched, { status: 200, sha: blobSha });

    // Every player session of the page and its service worker came the way asked for.
    const sides = await relayMetrics(admin, "session_sides_total");
    const other = transport === "websocket" ? "webtransport" : "websocket";
    // At least the two checks of the player page and a session of the service worker.
    assert.ok(sides[`side="player",transport="${transport}"`] >= 3, JSON.stringify(sides));
    assert.equal(sides[`side="player",transport="${other}"`], 0, JSON.stringify(sides));

    // The host goes away: the player page says so.
    await host.kill();
    await page.goto(`${origin}/.blindrelay/`);
    await state("host-offline");
    await shot("2-host-offline.png");
  } catch (err) {
    await page?.screenshot({ path: path.join(shots, "failure.png"), fullPage: true }).catch(() => {});
    throw err;
  } finally {
    await context?.close().catch(() => {});
    await procs.closeAll();
    fs.rmSync(work, { recursive: true, force: true });
  }
}

test("with UDP to the relay unreachable, the page falls back to WebSocket by itself", { timeout: 180_000 }, async () => {
  const shots = artefactDir("player-fallback");
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "blindrelay-player-"));
  const procs = new Processes(shots);
  let context;
  let page;
  try {
    const site = path.join(work, "site");
    fs.mkdirSync(site);
    fs.writeFileSync(path.join(site, "index.html"), "<!doctype html><title>home media</title><h1>home media</h1>");
    const nginxPort = await freePort();
    const nginx = startNginx(procs, work, site, nginxPort);
    await waitForPort(nginxPort, nginx);
    keygen(work, "host.key", "host");
    const players = path.join(work, "authorized_players");
    fs.writeFileSync(players, "# nobody yet\n");
    const { admin, link, origin } = await startRelayAndHost(procs, work, nginxPort, {
      hostArgs: ["--authorized-players", players],
      waitMs: WAIT_MS,
    });
    const originUrl = new URL(origin);
    // Chromium reaches the origin at another loopback address, where TCP is passed
    // on to the relay and nothing answers UDP: a network that lets only TCP through.
    const forwarder = procs.track(await forwardTcp("127.0.0.2", Number(originUrl.port), "127.0.0.1", Number(originUrl.port)));
    context = await launch(work, originUrl, [`MAP ${originUrl.hostname} 127.0.0.2`]);
    page = context.pages()[0] ?? (await context.newPage());
    // Refused at first, so that the page stays to say how it came.
    await page.goto(link);
    await page.locator('body[data-state="not-authorized"]').waitFor();
    await page.locator("#transport", { hasText: "Transport: WebSocket (WebTransport failed:" }).waitFor();
    await page.locator('body[data-transport="websocket"]').waitFor();
    await page.screenshot({ path: path.join(shots, "1-fell-back.png"), fullPage: true });
    assert.ok(forwarder.connections > 0, "Chromium came through the forwarder");
    const browserKey = (await page.locator("#player-key").textContent()).trim();
    fs.appendFileSync(players, `${browserKey}\n`);
    // "Try again" asks at once, without waiting for the countdown.
    await page.getByRole("button", { name: "Try again" }).click();
    await page.waitForURL(`${origin}/`, { timeout: WAIT_MS });
    await page.locator("h1", { hasText: "home media" }).waitFor();
    const sides = await relayMetrics(admin, "session_sides_total");
    assert.ok(sides['side="player",transport="websocket"'] >= 3, JSON.stringify(sides));
    assert.equal(sides['side="player",transport="webtransport"'], 0, JSON.stringify(sides));
    const accepted = await relayMetrics(admin, "connections_accepted_total");
    assert.equal(accepted['transport="webtransport"'], 0, JSON.stringify(accepted));
  } catch (err) {
    await page?.screenshot({ path: path.join(shots, "failure.png"), fullPage: true }).catch(() => {});
    throw err;
  } finally {
    await context?.close().catch(() => {});
    await procs.closeAll();
    fs.rmSync(work, { recursive: true, force: true });
  }
});

/**
 * Headless Chromium with a fresh profile that trusts exactly the certificate the
 * origin presents on TCP, and no other: a self-signed test certificate, which
 * --ignore-certificate-errors would also let through, but with every other
 * certificate error as well. (WebTransport checks the relay's short-lived
 * certificate by the hashes the page hands it.) Chromium resolves `*.localhost` to
 * ::1 as well as 127.0.0.1, and takes ::1 for WebTransport's QUIC, where the relay
 * does not listen: the host's origin is mapped to the relay's address (after any
 * rule the test gives).
 */
async function launch(work, originUrl, rules = []) {
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
      `--host-resolver-rules=${[...rules, `MAP ${originUrl.hostname} 127.0.0.1`].join(", ")}`,
    ],
    viewport: { width: 800, height: 640 },
  });
  context.setDefaultTimeout(WAIT_MS);
  return context;
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

/** Waits until something accepts on 127.0.0.1:`port`, or `proc` exits. */
async function waitForPort(port, proc) {
  const net = await import("node:net");
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
