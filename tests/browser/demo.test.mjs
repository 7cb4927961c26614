// `blindrelay demo` in a real browser: the link it prints, opened with the Chromium
// command it prints, plays its film; opened by clicking past the certificate warning
// instead, the page says why the player cannot start and what to do, rather than
// "Starting the player…" for ever.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import { chromium } from "playwright-core";

import { Processes, artefactDir } from "./support.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const WAIT_MS = 30_000;

test("blindrelay demo's browser line plays its film, and a link opened past the certificate warning says what to do", async () => {
  const work = artefactDir("demo");
  const processes = new Processes(work);
  const contexts = [];
  try {
    const demo = processes.start("demo", "blindrelay", ["demo", "--state-dir", path.join(work, "state")]);
    const line = (name) => demo.waitForLine(new RegExp(`^${name}: (.+)$`), WAIT_MS);
    const link = await line("web");
    const browser = await line("browser");
    assert.ok(browser.includes(`'${link}'`), browser);
    const spki = /--ignore-certificate-errors-spki-list=(\S+)/.exec(browser)[1];
    const rules = /--host-resolver-rules='([^']+)'/.exec(browser)[1];
    assert.match(await line("check"), /arrived byte-exact/);

    const launch = async (name, extra, options = {}) => {
      const context = await chromium.launchPersistentContext(path.join(work, name), {
        executablePath: CHROMIUM,
        headless: true,
        chromiumSandbox: false,
        args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--autoplay-policy=no-user-gesture-required", ...extra],
        ...options,
      });
      context.setDefaultTimeout(WAIT_MS);
      contexts.push(context);
      return context.pages()[0] ?? (await context.newPage());
    };

    // As printed: the film plays.
    const page = await launch("printed", [`--ignore-certificate-errors-spki-list=${spki}`, `--host-resolver-rules=${rules}`]);
    await page.goto(link);
    await page.waitForFunction(() => {
      const v = document.querySelector("video");
      return v !== null && v.currentTime > 1 && !v.error;
    });
    await page.screenshot({ path: path.join(work, "playing.png") });

    // The host's panel shows the same link for browsers, with its QR code: what a
    // person hands to someone on a phone.
    await page.goto(await line("panel"));
    await page.locator("#web-link", { hasText: link }).waitFor();
    assert.equal(await page.locator("#web-link").getAttribute("href"), link);
    await page.waitForFunction(() => document.querySelector("#web-qr").naturalWidth > 0);
    await page.screenshot({ path: path.join(work, "panel.png") });

    // Past the warning (the browser told to ignore certificate errors, as a person
    // clicking "proceed" does): no service worker, and the page says why.
    const past = await launch("past-warning", [`--host-resolver-rules=${rules}`], { ignoreHTTPSErrors: true });
    await past.goto(link);
    await past.locator('body[data-state="no-service-worker"]').waitFor();
    const detail = await past.locator("#detail").textContent();
    assert.match(detail, /--ignore-certificate-errors-spki-list/);
    assert.match(detail, /certificate from a CA/);
    await past.screenshot({ path: path.join(work, "past-warning.png") });
  } finally {
    for (const context of contexts) await context.close().catch(() => {});
    await processes.closeAll();
    fs.rmSync(path.join(work, "printed"), { recursive: true, force: true });
    fs.rmSync(path.join(work, "past-warning"), { recursive: true, force: true });
  }
});
