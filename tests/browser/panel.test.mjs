// The host owner's panel in a real browser (Debian's Chromium, headless), against
// real processes: a relay, a host with --panel that forwards to a small HTTP
// service, and two relay-only players. The owner switches Enable Relay off and on
// and adds a player through the page, pasted from the clipboard, and another by
// holding its QR code up to the camera (Chromium's fake camera plays a frame the
// test draws); each change is checked where it matters, on a player's request
// through the relay. Screenshots of each step are kept as artefacts.

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import encodeQR from "@paulmillr/qr";
import { chromium } from "playwright-core";

import {
  Processes,
  artefactDir,
  binDir,
  fetchThrough,
  holdThrough,
  startService,
} from "./support.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";

// Generous: a loaded CI machine with two cores runs the relay, the host, two
// players, Chromium and this test at once. Every wait ends as soon as its
// condition holds.
const WAIT_MS = 20_000;

// Without the background-networking flags Chromium reaches out to its own
// services at start; a machine without a route out refuses those connections and
// the noise buries real failures. QUIC is off so the browser never probes UDP.
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

test(
  "the panel in a browser: Enable Relay off refuses a relay-only player, on lets it in, a player pasted into the form gets in, and a key scanned off the camera is listed",
  { timeout: 120_000 },
  async () => {
    const shots = artefactDir("panel");
    const work = fs.mkdtempSync(path.join(os.tmpdir(), "blindrelay-panel-"));
    const procs = new Processes(shots);
    let context;
    let page;
    try {
      const service = await startService(procs);
      const relay = procs.start("relay", "blindrelayd", ["--listen", "127.0.0.1:0"]);
      const relayUrl = await relay.waitForLine(/^relay url: (\S+)$/, WAIT_MS);

      keygen(work, "host.key", "host");
      const allowedKey = keygen(work, "allowed.key", "player");
      const newcomerKey = keygen(work, "newcomer.key", "player");
      // A browser player's key, as its page shows it in a QR code, in front of the camera.
      const cameraKey = keygen(work, "camera.key", "player");
      const camera = path.join(work, "camera.y4m");
      fs.writeFileSync(camera, qrFrame(cameraKey));
      const players = path.join(work, "authorized_players");
      fs.writeFileSync(players, `# players this host serves\n${allowedKey} # the first player\n`);

      const host = procs.start(
        "host",
        "blindrelay",
        [
          "host",
          "--key",
          "host.key",
          "--relay",
          relayUrl,
          "--forward",
          service,
          "--panel",
          "--authorized-players",
          players,
        ],
        { cwd: work },
      );
      const ticket = await host.waitForLine(/^ticket: (\S+)$/, WAIT_MS);
      const panelLink = await host.waitForLine(/^panel: (http:\/\/\S+#token=\S+)$/, WAIT_MS);
      await host.waitForLine(/^relay: registered$/, WAIT_MS);

      // Relay-only players: a refusal can only come from the relay path.
      const player = async (name, key) => {
        const proc = procs.start(
          `player-${name}`,
          "blindrelay",
          ["connect", ticket, "--listen", "127.0.0.1:0", "--path", "relay", "--key", key],
          { cwd: work },
        );
        const listen = await proc.waitForLine(/^listening on: (\S+)$/, WAIT_MS);
        const printedKey = await proc.waitForLine(/^player key: (\S+)$/, WAIT_MS);
        return { proc, listen, key: printedKey };
      };
      const allowed = await player("allowed", "allowed.key");
      const newcomer = await player("newcomer", "newcomer.key");
      assert.equal(allowed.key, allowedKey);
      assert.equal(newcomer.key, newcomerKey);

      context = await chromium.launchPersistentContext(path.join(work, "chromium-profile"), {
        executablePath: CHROMIUM,
        headless: true,
        chromiumSandbox: false,
        args: [
          ...CHROMIUM_ARGS,
          // A camera that shows the frame the test drew, allowed without asking.
          "--use-fake-device-for-media-stream",
          `--use-file-for-fake-video-capture=${camera}`,
          "--use-fake-ui-for-media-stream",
        ],
        viewport: { width: 960, height: 900 },
      });
      context.setDefaultTimeout(WAIT_MS);
      page = context.pages()[0] ?? (await context.newPage());
      const panelOrigin = new URL(panelLink).origin;
      await context.grantPermissions(["clipboard-read", "clipboard-write", "camera"], { origin: panelOrigin });
      await page.goto(panelLink);

      const status = page.locator("#status");
      const relaySwitch = page.getByRole("switch", { name: "Enable Relay" });
      const shot = (name) => page.screenshot({ path: path.join(shots, name), fullPage: true });

      // On at start: the page says so, and the listed player gets through.
      await status
        .filter({ hasText: /^reachable through relay 127\.0\.0\.1:\d+ over QUIC$/ })
        .waitFor();
      assert.equal(await relaySwitch.isChecked(), true);
      await page.locator("#ticket", { hasText: ticket }).waitFor();
      // A relay named by its address serves no player on a host origin: no link to share.
      assert.equal(await page.locator("#web-share").isHidden(), true);
      await shot("1-reachable.png");
      assertServed(await fetchThrough(allowed.listen), "the listed player, relay on");
      assertRefused(await fetchThrough(newcomer.listen), "the unlisted player");
      await newcomer.proc.waitForLog(/cannot open a session err=not authorized: /, WAIT_MS);

      // Off: the host leaves the relay, so a relay-only player is refused.
      await relaySwitch.click();
      await status.filter({ hasText: /^relay disabled$/ }).waitFor();
      await host.waitForLine(/^relay: disabled$/, WAIT_MS);
      assert.equal(await relaySwitch.isChecked(), false);
      await shot("2-relay-disabled.png");
      assertRefused(await fetchThrough(allowed.listen), "the listed player, relay off");
      // Refused by the relay for want of a host, not by the host.
      await allowed.proc.waitForLog(
        /cannot open a session err=host not reachable: relay disabled or host offline/,
        WAIT_MS,
      );
      // Kept for the next start, next to the key.
      const relayState = fs.readFileSync(path.join(work, "host.key.relay-state"), "utf8");
      assert.equal(relayState.trim().split("\n").pop(), "off");

      // On again: registered once more, and the same player gets through.
      await relaySwitch.click();
      await status.filter({ hasText: /^reachable through relay / }).waitFor();
      assert.equal(await relaySwitch.isChecked(), true);
      await shot("3-relay-on-again.png");
      assertServed(await fetchThrough(allowed.listen), "the listed player, relay on again");

      // The owner adds the refused player through the form, pasting what it
      // printed; it gets in at once, and the file keeps the owner's comment.
      await page.evaluate((text) => navigator.clipboard.writeText(text), `player key: ${newcomerKey}`);
      await page.getByRole("button", { name: "Paste" }).click();
      // The page reads the clipboard after the click returns.
      await page.waitForFunction(
        (text) => document.getElementById("player-key").value === text,
        `player key: ${newcomerKey}`,
      );
      await page.locator("#player-note").fill("the newcomer's laptop");
      await page.getByRole("button", { name: "Add player" }).click();
      await page.locator("#players li", { hasText: newcomerKey }).waitFor();
      assert.equal(await page.locator("#player-key").inputValue(), "");
      assertServed(await fetchThrough(newcomer.listen), "the player added in the form");
      const file = fs.readFileSync(players, "utf8");
      assert.match(file, /^# players this host serves$/m);
      assert.match(file, new RegExp(`^${newcomerKey}\\s+# the newcomer's laptop$`, "m"));

      // A phone's key, scanned: the camera sees its QR code, the host reads it,
      // and the form has the key.
      await page.getByRole("button", { name: "Scan" }).click();
      await page.locator("#scan-status", { hasText: "Key read from the camera" }).waitFor();
      assert.equal(await page.locator("#player-key").inputValue(), cameraKey);
      assert.equal(await page.locator("#scan-video").isHidden(), true, "the camera is off again");
      await page.locator("#player-note").fill("a phone, scanned");
      await page.getByRole("button", { name: "Add player" }).click();
      await page.locator("#players li", { hasText: cameraKey }).waitFor();
      assert.match(fs.readFileSync(players, "utf8"), new RegExp(`^${cameraKey}\\s+# a phone, scanned$`, "m"));

      // A session held open shows in the table, relayed; this is the README's picture.
      const release = await holdThrough(newcomer.listen);
      try {
        await page.locator("#sessions tbody tr", { hasText: "relayed" }).waitFor();
        assert.equal(await page.locator("#no-sessions").isHidden(), true);
        assert.equal(await page.locator("#error").isHidden(), true, "the page shows no error");
        await shot("panel.png");
      } finally {
        release();
      }
    } catch (err) {
      // What the page showed when it went wrong, beside the process logs.
      await page
        ?.screenshot({ path: path.join(shots, "failure.png"), fullPage: true })
        .catch(() => {});
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
  const out = execFileSync(
    path.join(binDir(), "blindrelay"),
    ["keygen", "--role", role, "--out", path.join(dir, file)],
    { encoding: "utf8" },
  );
  const m = /^(?:host id|player key): (\S+)$/m.exec(out);
  assert.ok(m, `keygen printed ${out}`);
  return m[1];
}

/**
 * One frame of video (YUV4MPEG2, 640 x 480) showing `text` as a QR code, black on
 * white, as a phone's screen held up to the camera shows it.
 */
function qrFrame(text) {
  const modules = encodeQR(text, "raw", { border: 4 });
  const [width, height, scale] = [640, 480, 8];
  const luma = Buffer.alloc(width * height, 235);
  const left = (width - modules.length * scale) >> 1;
  const top = (height - modules.length * scale) >> 1;
  modules.forEach((row, y) =>
    row.forEach((dark, x) => {
      if (!dark) return;
      for (let py = 0; py < scale; py++) luma.fill(16, (top + y * scale + py) * width + left + x * scale, (top + y * scale + py) * width + left + (x + 1) * scale);
    }),
  );
  const chroma = Buffer.alloc((width / 2) * (height / 2) * 2, 128);
  return Buffer.concat([Buffer.from(`YUV4MPEG2 W${width} H${height} F10:1 Ip A1:1 C420jpeg\nFRAME\n`), luma, chroma]);
}

function assertServed(result, who) {
  assert.deepEqual(
    result,
    { ok: true, status: 200, body: "hello from the service\n" },
    `${who} should reach the service`,
  );
}

function assertRefused(result, who) {
  assert.equal(result.ok, false, `${who} should be refused, got ${JSON.stringify(result)}`);
}
