// The browser player in a real browser (Debian's Chromium, headless): a relay, a
// host forwarding to nginx that serves a page with a <video> of a real H.264/AAC
// film (made by ffmpeg) and a 17 MiB file, and the share link opened in Chromium.
// The page is refused while the host's authorized_players lacks the browser's key
// and gets in once it is added (the host re-reads the file, no restart); then the
// film plays, seeks to 45 s and plays on through Range requests in the tunnel, and
// a file fetched by the page has the bytes on disk. A screenshot of the playing
// page is kept as an artefact.

import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

import { Processes, artefactDir, binDir } from "./support.mjs";
import { freePort, makeFilm, spkiHash, startNginx, startStandIn } from "./web.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
// Generous: two cores run the relay, the host, nginx, Chromium and this test.
const WAIT_MS = 30_000;
const FILM_SECONDS = 62;
const BLOB_LEN = 17 * 1024 * 1024 + 12345;

test(
  "the share link in Chromium: refused until the host lists the browser's key, then the film plays, seeks and a 17 MiB file arrives intact",
  { timeout: 300_000 },
  async () => {
    const shots = artefactDir("player");
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

      const relay = procs.start("relay", "blindrelayd", ["--listen", "127.0.0.1:0"]);
      const relayUrl = await relay.waitForLine(/^relay url: (\S+)$/, WAIT_MS);
      const relayPort = Number(/:(\d+)(?:\?|$)/.exec(relayUrl)[1]);

      keygen(work, "host.key", "host");
      const someoneElse = keygen(work, "other.key", "player");
      const players = path.join(work, "authorized_players");
      fs.writeFileSync(players, `# players this host serves\n${someoneElse}\n`);
      const host = procs.start(
        "host",
        "blindrelay",
        ["host", "--key", "host.key", "--relay", relayUrl, "--forward", `127.0.0.1:${nginxPort}`, "--authorized-players", players],
        { cwd: work },
      );
      const ticket = await host.waitForLine(/^ticket: (\S+)$/, WAIT_MS);
      await host.waitForLine(/^relay: registered$/, WAIT_MS);
      const hostId = keyOfTicket(ticket);

      // The relay's own share link where it serves the player; a stand-in for its
      // HTTPS side where it does not yet.
      const printed = host.lines.find((line) => line.startsWith("web: "));
      let origin;
      if (printed !== undefined) {
        origin = new URL(printed.slice(5)).origin;
      } else {
        const port = await startStandIn(procs, work, relayPort);
        origin = `https://${hostId}.localhost:${port}`;
      }
      const originUrl = new URL(origin);
      assert.equal(originUrl.hostname.split(".")[0], hostId, "the page has the host's own origin");
      // Trust exactly the certificate this origin presents, and no other: a
      // self-signed test certificate, which --ignore-certificate-errors would also
      // let through, but with every other certificate error as well.
      const spki = await spkiHash("127.0.0.1", Number(originUrl.port), originUrl.hostname);

      context = await chromium.launchPersistentContext(path.join(work, "chromium-profile"), {
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
        ],
        viewport: { width: 800, height: 640 },
      });
      context.setDefaultTimeout(WAIT_MS);
      page = context.pages()[0] ?? (await context.newPage());
      const shot = (name) => page.screenshot({ path: path.join(shots, name), fullPage: true });
      const state = (name) => page.locator(`body[data-state="${name}"]`).waitFor();

      // Without a ticket the page says so.
      await page.goto(`${origin}/.blindrelay/`);
      await state("no-ticket");

      // The share link: the ticket in the fragment, WebSocket forced by the query.
      await page.goto(`${origin}/.blindrelay/?transport=websocket#${ticket}`);
      await state("not-authorized");
      assert.equal(new URL(page.url()).hash, "", "the ticket left the address bar");
      const browserKey = (await page.locator("#player-key").textContent()).trim();
      assert.match(browserKey, /^[a-z2-7]{52}$/);
      assert.notEqual(browserKey, someoneElse);
      await page.locator("#transport", { hasText: "WebSocket (set by the link)" }).waitFor();
      await page.locator("#transport", { hasText: "by WebCrypto, not readable by scripts" }).waitFor();
      await shot("1-not-authorized.png");

      // The owner adds the key; the host re-reads its list at the next session.
      fs.appendFileSync(players, `${browserKey} # the browser\n`);
      await page.getByRole("button", { name: "Try again" }).click();
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
  },
);

/** Makes a key in `dir` with `blindrelay keygen`; returns the host id or player key it printed. */
function keygen(dir, file, role) {
  const out = execFileSync(path.join(binDir(), "blindrelay"), ["keygen", "--role", role, "--out", path.join(dir, file)], {
    encoding: "utf8",
  });
  const m = /^(?:host id|player key): (\S+)$/m.exec(out);
  assert.ok(m, `keygen printed ${out}`);
  return m[1];
}

/** The host id of a ticket's text form (PROTOCOL.md section 5): bytes 1 to 32, in base32. */
function keyOfTicket(ticket) {
  const alphabet = "abcdefghijklmnopqrstuvwxyz234567";
  let bits = "";
  for (const ch of ticket.slice(3).toLowerCase()) bits += alphabet.indexOf(ch).toString(2).padStart(5, "0");
  const idBits = bits.slice(8, 8 + 256) + "0000";
  let out = "";
  for (let at = 0; at < 260; at += 5) out += alphabet[parseInt(idBits.slice(at, at + 5), 2)];
  return out;
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
