// The player page as a person on a phone sees it: Debian's Chromium at a phone's
// size (390 x 844, touch, mobile viewport) and at a desktop's (1280 x 800), against
// a real relay and a host whose authorized_players lacks the browser's key. In each
// state the page fits the screen's width (`scrollWidth <= innerWidth`, and at
// 320 px too on the phone), the key is whole on screen, Copy puts exactly the key
// on the clipboard, Share (where the browser has it) sends it with the label the
// panel reads, and its QR code, scanned off a screenshot, is the key. The page
// says each step in words, counts down to its next try, and once the test adds the
// key to the host's list it gets in by itself: nobody clicks. Then the host goes
// away, and a relay that never answers keeps the page waiting for the host until
// its deadline: each said, with what to do. A screenshot of each
// state is kept as an artefact (and, with BLINDRELAY_UPDATE_SCREENSHOTS=1, in
// screenshots/ beside this file, where README's picture comes from).

import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import decodeQR from "@paulmillr/qr/decode.js";
import { chromium } from "playwright-core";

import { Processes, artefactDir, binDir, startService } from "./support.mjs";
import { readPng } from "./png.mjs";
import { spkiHash, startRelayAndHost } from "./web.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
// Generous: two cores run the relay, the host, Chromium and this test.
const WAIT_MS = 30_000;
const KEPT = path.join(path.dirname(fileURLToPath(import.meta.url)), "screenshots");

const SIZES = {
  phone: { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 1 },
  desktop: { viewport: { width: 1280, height: 800 }, isMobile: false, hasTouch: false, deviceScaleFactor: 1 },
};

for (const [size, device] of Object.entries(SIZES)) {
  test(
    `the player page at ${size} size: fits the width, Copy and the QR code give the exact key, and it gets in by itself once the key is added`,
    { timeout: 180_000 },
    () => phonePage(size, device),
  );
}

async function phonePage(size, device) {
  const shots = artefactDir(`page-${size}`);
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "blindrelay-page-"));
  const procs = new Processes(shots);
  let context;
  let page;
  try {
    const service = await startService(procs);
    const servicePort = Number(service.split(":")[1]);
    keygen(work, "host.key", "host");
    const players = path.join(work, "authorized_players");
    fs.writeFileSync(players, "# players this host serves\n");
    const { host, link, origin } = await startRelayAndHost(procs, work, servicePort, {
      hostArgs: ["--authorized-players", players],
      waitMs: WAIT_MS,
    });
    const originUrl = new URL(origin);

    context = await launch(work, originUrl, device);
    await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin });
    if (size === "phone") {
      // A phone's browser has the Web Share API; headless Chromium on Linux does
      // not. A stand-in keeps what the page hands it.
      await context.addInitScript(() => {
        Object.defineProperty(Navigator.prototype, "share", {
          configurable: true,
          value: async (data) => {
            globalThis.sharedForTest = data;
          },
        });
      });
    }
    // Every headline the page shows, in order, across its reloads.
    const statuses = [];
    await context.exposeBinding("statusShownForTest", (_source, words) => statuses.push(words));
    await context.addInitScript(() => {
      addEventListener("DOMContentLoaded", () => {
        const status = document.getElementById("status");
        if (status === null) return;
        const tell = () => globalThis.statusShownForTest(status.textContent);
        new MutationObserver(tell).observe(status, { childList: true, characterData: true, subtree: true });
      });
    });
    page = context.pages()[0] ?? (await context.newPage());
    const pageErrors = [];
    page.on("pageerror", (err) => pageErrors.push(err.message));
    const shot = async (name) => {
      const file = path.join(shots, `${size}-${name}.png`);
      await page.screenshot({ path: file, fullPage: true });
      if (process.env.BLINDRELAY_UPDATE_SCREENSHOTS === "1") {
        fs.mkdirSync(KEPT, { recursive: true });
        fs.copyFileSync(file, path.join(KEPT, `${size}-${name}.png`));
      }
    };
    const state = (name) => page.locator(`body[data-state="${name}"]`).waitFor();

    // Without a ticket: said, with what to do, within the width.
    await page.goto(`${origin}/.blindrelay/`);
    await state("no-ticket");
    await page.locator("#detail", { hasText: "Open the link the host's owner shared" }).waitFor();
    await assertFits(page, device.viewport.width);
    await shot("1-no-ticket");

    // The share link: refused, the key whole on screen, a countdown to the next try.
    await page.goto(link);
    await state("not-authorized");
    const key = (await page.locator("#player-key").textContent()).trim();
    assert.match(key, /^[a-z2-7]{52}$/);
    assert.deepEqual(
      await page.locator("#player-key span").allTextContents(),
      key.match(/.{4}/g),
      "the key in groups of four",
    );
    await page.locator("#countdown", { hasText: /^Asking the host again in \d+ s…$/ }).waitFor();
    await page.locator("#detail", { hasText: "gets in by itself" }).waitFor();
    await page.locator('#steps li.failed[data-step="verdict"]').waitFor();
    await assertFits(page, device.viewport.width);
    await assertOnScreen(page, "#player-key");
    await assertOnScreen(page, "#copy");
    await assertOnScreen(page, "#key-qr svg");
    await shot("2-not-authorized");
    await page.emulateMedia({ colorScheme: "dark" });
    const dark = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    await shot("3-not-authorized-dark");
    await page.emulateMedia({ colorScheme: "light" });
    const light = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    assert.notEqual(dark, light, "a dark theme where the device asks for one");
    if (size === "phone") {
      // The narrowest phone still in use.
      await page.setViewportSize({ width: 320, height: 640 });
      await assertFits(page, 320);
      await assertOnScreen(page, "#player-key");
      await page.setViewportSize(device.viewport);
    }

    // Copy puts exactly the key on the clipboard.
    await page.locator("#copy").click();
    await page.locator("#handed", { hasText: "Copied." }).waitFor();
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), key);

    // Share where the browser has it, with the label the host's panel reads.
    const canShare = await page.evaluate(() => typeof navigator.share === "function");
    assert.equal(canShare, size === "phone");
    assert.equal(await page.locator("#share").isVisible(), canShare);
    if (canShare) {
      await page.locator("#share").click();
      await page.locator("#handed", { hasText: "Shared." }).waitFor();
      assert.deepEqual(await page.evaluate(() => globalThis.sharedForTest), {
        title: "blindrelay player key",
        text: `player key: ${key}`,
      });
    }

    // The QR code, scanned off the screen, is the key.
    const qr = readPng(await page.locator("#key-qr").screenshot());
    assert.equal(decodeQR(qr), key);

    // The owner adds the key; the page gets in by itself, nobody clicks.
    fs.appendFileSync(players, `${key} # a phone\n`);
    await page.waitForURL(`${origin}/`, { timeout: WAIT_MS });
    await page.locator("body", { hasText: "hello from the service" }).waitFor();
    await host.waitForLog(/authorized players reloaded/, WAIT_MS);
    // In words, in order: the relay and how, the host, the question, the refusal, then in.
    const order = [
      "Reaching the relay over WebTransport…",
      "Waiting for the host…",
      "Asking the host to let this browser in…",
      "The host does not serve this browser yet.",
      "Starting the player…",
      "Playing: opening the host's page…",
    ];
    let at = 0;
    for (const words of statuses) if (words === order[at]) at++;
    assert.equal(at, order.length, `the page said ${JSON.stringify(statuses)}`);

    // The host goes away: the page says so, and what to do.
    await host.kill();
    await page.goto(`${origin}/.blindrelay/`);
    await state("host-offline");
    await page.locator("#detail", { hasText: "Ask its owner to start it" }).waitFor();
    await page.locator("#retry").waitFor();
    await assertFits(page, device.viewport.width);
    await shot("4-host-offline");

    // A relay that takes the page's WebSocket and never answers (Playwright holds
    // it): the page says it waits for the host, then, at its 15 s deadline, that
    // the relay cannot be reached, and what to do.
    await page.routeWebSocket(/\/blindrelay\/1$/, () => {});
    await page.goto(`${origin}/.blindrelay/?transport=websocket`);
    await page.locator("#status", { hasText: "Waiting for the host…" }).waitFor();
    await page.locator('#steps li[aria-current="step"][data-step="host"]').waitFor();
    await assertFits(page, device.viewport.width);
    await shot("5-waiting-for-the-host");
    await state("relay-unreachable");
    await page.locator("#detail", { hasText: "Check that this device is online" }).waitFor();
    // Stopped where it was waiting: at the host's step, the relay's done.
    await page.locator('#steps li.failed[data-step="host"]').waitFor();
    await page.locator('#steps li.done[data-step="relay"]').waitFor();
    await assertFits(page, device.viewport.width);
    await shot("6-relay-unreachable");
    assert.deepEqual(pageErrors, [], "the page threw nothing");
  } catch (err) {
    await page?.screenshot({ path: path.join(shots, "failure.png"), fullPage: true }).catch(() => {});
    throw err;
  } finally {
    await context?.close().catch(() => {});
    await procs.closeAll();
    fs.rmSync(work, { recursive: true, force: true });
  }
}

/**
 * Nothing is wider than the screen: no sideways scrolling, at the width the test
 * set. A mobile browser widens its layout viewport to take in content wider than
 * the screen (the old page's key made it 415 px at 390), so `innerWidth` is checked
 * too: `scrollWidth <= innerWidth` alone would then pass.
 */
async function assertFits(page, width) {
  const { scrollWidth, innerWidth } = await page.evaluate(() => ({
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth,
  }));
  assert.equal(innerWidth, width, "the layout viewport is the device's width");
  assert.ok(scrollWidth <= innerWidth, `the page is ${scrollWidth} px wide on a screen of ${innerWidth} px`);
}

/** `selector`'s box lies within the screen's width. */
async function assertOnScreen(page, selector) {
  const box = await page.locator(selector).boundingBox();
  const width = await page.evaluate(() => innerWidth);
  assert.ok(box !== null && box.x >= 0 && box.x + box.width <= width, `${selector} at ${JSON.stringify(box)} on a screen ${width} px wide`);
}

/**
 * Headless Chromium sized as `device`, trusting exactly the certificate the origin
 * presents, with the host's origin mapped to the relay's IPv4 address (as
 * player.test.mjs does, where the reasons are).
 */
async function launch(work, originUrl, device) {
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
      `--ignore-certificate-errors-spki-list=${spki}`,
      `--host-resolver-rules=MAP ${originUrl.hostname} 127.0.0.1`,
    ],
    ...device,
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
