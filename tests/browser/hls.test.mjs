// HLS through the tunnel, as media servers transcode for browsers (Jellyfin's web
// client plays its transcodes with hls.js): nginx behind a host serves a page that
// plays a 30 s H.264/AAC film cut by ffmpeg into 2 s MPEG-TS segments with hls.js
// (the devDependency's own dist file, served from the host like the rest, so
// nothing comes from the internet), told to buffer only a few seconds ahead. In
// Chromium, through the share link: the film plays past 3 s, is sought to 20 s,
// beyond what was buffered, so the segments there are fetched through the tunnel
// after the seek, and plays on past 23 s, with no fatal hls.js error and no error
// on the video element. Artefacts in `target/browser-tests/hls/`: the logs of
// relay, host and nginx, `playing.png`, and `failure.png` when a step failed.

import { test } from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import { createRequire } from "node:module";
import os from "node:os";
import path from "node:path";

import { Processes, artefactDir } from "./support.mjs";
import { freePort, launchChromium, makeHls, startNginx, startRelayAndHost, waitForPort } from "./web.mjs";

const WAIT_MS = 30_000;
const FILM_SECONDS = 30;
const SEGMENT_SECONDS = 2;
const SEEK_TO = 20;

test("an hls.js page behind the host plays and seeks through the tunnel", { timeout: 240_000 }, async () => {
  const shots = artefactDir("hls");
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "blindrelay-hls-"));
  const procs = new Processes(shots);
  let context;
  let page;
  try {
    const site = path.join(work, "site");
    makeHls(path.join(site, "hls"), FILM_SECONDS, SEGMENT_SECONDS);
    const segments = fs.readdirSync(path.join(site, "hls")).filter((f) => f.endsWith(".ts"));
    assert.equal(segments.length, FILM_SECONDS / SEGMENT_SECONDS, segments.join(" "));
    const hlsJs = createRequire(import.meta.url).resolve("hls.js/dist/hls.min.js");
    fs.copyFileSync(hlsJs, path.join(site, "hls.min.js"));
    fs.writeFileSync(
      path.join(site, "index.html"),
      `<!doctype html><html><head><meta charset="utf-8"><title>home media</title><link rel="icon" href="data:,"></head>` +
        `<body><h1>home media</h1><video id="film" muted playsinline width="640" height="480"></video>` +
        `<script src="/hls.min.js"></script><script src="/play.js"></script></body></html>`,
    );
    // A few seconds ahead only, so that a seek far ahead needs segments not yet fetched.
    fs.writeFileSync(
      path.join(site, "play.js"),
      `window.hlsFatal = [];
window.hlsLoaded = [];
const video = document.getElementById("film");
const hls = new Hls({ maxBufferLength: 4, maxMaxBufferLength: 6 });
hls.on(Hls.Events.ERROR, (_event, data) => {
  if (data.fatal) window.hlsFatal.push(data.type + ": " + data.details);
});
hls.on(Hls.Events.FRAG_LOADED, (_event, data) => window.hlsLoaded.push(data.frag.sn));
hls.on(Hls.Events.MANIFEST_PARSED, () => { window.manifestParsed = true; });
hls.loadSource("/hls/index.m3u8");
hls.attachMedia(video);
`,
    );
    const nginxPort = await freePort();
    const nginx = startNginx(procs, work, site, nginxPort);
    await waitForPort(nginxPort, nginx, WAIT_MS);

    const { link, origin } = await startRelayAndHost(procs, work, nginxPort, { hostArgs: ["--make-key"], waitMs: WAIT_MS });
    context = await launchChromium(work, new URL(origin), { waitMs: WAIT_MS });
    page = context.pages()[0] ?? (await context.newPage());
    const pageErrors = [];
    page.on("pageerror", (err) => pageErrors.push(err.message));
    await page.goto(link);
    await page.waitForURL(`${origin}/`, { timeout: WAIT_MS });
    await page.locator("h1", { hasText: "home media" }).waitFor();
    assert.equal(await page.evaluate(() => Hls.isSupported()), true, "Chromium has Media Source Extensions");
    await page.waitForFunction(() => window.manifestParsed === true || window.hlsFatal.length > 0, null, { timeout: WAIT_MS });

    // Plays past 3 s.
    await page.evaluate(() => document.getElementById("film").play());
    await page.waitForFunction(() => document.getElementById("film").currentTime > 3 || window.hlsFatal.length > 0, null, {
      timeout: WAIT_MS * 2,
    });
    assert.deepEqual(await page.evaluate(() => window.hlsFatal), []);
    const before = await page.evaluate(() => {
      const v = document.getElementById("film");
      return { bufferedEnd: v.buffered.length > 0 ? v.buffered.end(v.buffered.length - 1) : 0, loaded: [...window.hlsLoaded] };
    });
    assert.ok(before.bufferedEnd < SEEK_TO - SEGMENT_SECONDS, `not buffered up to the seek target: ${JSON.stringify(before)}`);

    // Sought beyond what was buffered: the segment there comes through the tunnel, and the film plays on.
    await page.evaluate((to) => {
      document.getElementById("film").currentTime = to;
    }, SEEK_TO);
    await page.waitForFunction(
      (past) => {
        const v = document.getElementById("film");
        return (v.currentTime > past && !v.paused && !v.error) || window.hlsFatal.length > 0;
      },
      SEEK_TO + 3,
      { timeout: WAIT_MS * 2 },
    );
    await page.screenshot({ path: path.join(shots, "playing.png"), fullPage: true });
    const after = await page.evaluate(() => ({
      fatal: window.hlsFatal,
      error: document.getElementById("film").error?.message ?? null,
      loaded: window.hlsLoaded,
    }));
    assert.deepEqual(after.fatal, [], "hls.js raised no fatal error");
    assert.equal(after.error, null);
    const seekSegment = SEEK_TO / SEGMENT_SECONDS;
    assert.ok(!before.loaded.includes(seekSegment), `segment ${seekSegment} was not fetched before the seek: ${before.loaded}`);
    assert.ok(after.loaded.includes(seekSegment), `segment ${seekSegment} was fetched after it: ${after.loaded}`);
    assert.deepEqual(pageErrors, []);
  } catch (err) {
    await page?.screenshot({ path: path.join(shots, "failure.png"), fullPage: true }).catch(() => {});
    throw err;
  } finally {
    await context?.close().catch(() => {});
    await procs.closeAll();
    fs.rmSync(work, { recursive: true, force: true });
  }
});
