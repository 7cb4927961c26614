// A media server that logs in with a session cookie, in a real browser: Debian's
// Chromium, headless, opens the share link of a host forwarding to a small web app
// started by the test. Its library answers 401 without the `HttpOnly` session
// cookie its login form sets, so each step fails if the service worker's jar is not
// used: signed in through the form, the library opens, the page's own fetch of the
// API carries the cookie (from a frame of the host's page too, which no other origin
// may frame), and it survives the service worker being stopped (the jar is read
// back from IndexedDB). `document.cookie` sees none of the host's
// cookies, and what a page script sets there never reaches the host. SameSite as a
// browser keeps it: a link from another site brings the `Lax` session cookie but
// not the `Strict` one, and a form another site posts here brings neither (the
// transfer it asks for is refused; the same form on the host's page succeeds).
// Signing out deletes the cookie (Max-Age=0), and the library is closed again.
// Artefacts in `target/browser-tests/cookies/`: the relay's and host's logs, and
// `failure.png` when a step failed.

import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import { createServer } from "node:http";
import os from "node:os";
import path from "node:path";

import { Processes, artefactDir } from "./support.mjs";
import { launchChromium, startRelayAndHost } from "./web.mjs";

const WAIT_MS = 30_000;
const PASSWORD = "open sesame";

test(
  "a login form's HttpOnly session cookie is kept by the service worker: the library opens, survives a worker restart, follows SameSite, and signing out ends it",
  { timeout: 180_000 },
  async () => {
    const logs = artefactDir("cookies");
    const work = fs.mkdtempSync(path.join(os.tmpdir(), "blindrelay-cookies-"));
    const procs = new Processes(logs);
    let context;
    let page;
    try {
      const app = await startApp(procs);
      const elsewhere = await startOtherSite(procs);
      const { link, origin } = await startRelayAndHost(procs, work, app.port, { hostArgs: ["--make-key"], waitMs: WAIT_MS });
      elsewhere.target = origin;
      context = await launchChromium(work, new URL(origin), { waitMs: WAIT_MS });
      page = context.pages()[0] ?? (await context.newPage());
      const pageErrors = [];
      page.on("pageerror", (err) => pageErrors.push(err.message));
      const heading = (text) => page.locator("h1", { hasText: text }).waitFor();

      await page.goto(link);
      await page.waitForURL(`${origin}/`, { timeout: WAIT_MS });
      await heading("home media");
      // A cookie of the page's own script: the browser keeps it, the tunnel does not send it.
      await page.evaluate(() => {
        document.cookie = "pagejs=1; path=/";
      });

      // Closed without the session cookie.
      const closed = await page.goto(`${origin}/library`);
      assert.equal(closed.status(), 401);
      await heading("Sign in first");

      // Signed in through the form: the 303 that sets the cookies leads to the library, open.
      await page.goto(`${origin}/login`);
      await page.fill("#user", "alice");
      await page.fill("#password", PASSWORD);
      await page.click("#sign-in");
      await page.waitForURL(`${origin}/library`, { timeout: WAIT_MS });
      await heading("Library of alice");
      assert.equal(await page.evaluate(() => document.cookie), "pagejs=1", "document.cookie sees none of the host's cookies");

      // The page's own fetch carries the cookie too.
      const whoami = await page.evaluate(async () => {
        const r = await fetch("/api/whoami");
        return { status: r.status, body: await r.text(), setCookie: r.headers.get("set-cookie") };
      });
      assert.deepEqual(whoami, { status: 200, body: '{"user":"alice"}', setCookie: null });
      // A fetch told to leave credentials out goes without them, as it would without the tunnel.
      assert.equal(await page.evaluate(async () => (await fetch("/api/whoami", { credentials: "omit" })).status), 401);
      assert.deepEqual(app.last("GET", "/api/whoami").cookies, []);

      // In a frame of the host's page: the frame's load and what the framed page fetches
      // carry them too. No other origin may frame the host's pages (the worker adds
      // that to each response), so a frame of the origin has only the origin above it.
      const framed = await page.goto(`${origin}/framed`);
      assert.match(framed.headers()["content-security-policy"] ?? "", /frame-ancestors 'self'/);
      await page.frameLocator("#inner").locator("#who", { hasText: '{"user":"alice"}' }).waitFor();
      assert.deepEqual(app.last("GET", "/inner").cookies, ["guard", "sid", "theme"]);
      assert.deepEqual(app.last("GET", "/api/whoami").cookies, ["guard", "sid", "theme"]);

      // The worker stopped and started again reads the jar back from IndexedDB.
      const cdp = await context.newCDPSession(page);
      await cdp.send("ServiceWorker.enable");
      await cdp.send("ServiceWorker.stopAllWorkers");
      // An address typed (a navigation with no referrer) may come from any site:
      // the Strict cookie stays behind, the Lax ones go.
      const reopened = await page.goto(`${origin}/library`);
      assert.equal(reopened.status(), 200);
      await heading("Library of alice");
      assert.deepEqual(app.last("GET", "/library").cookies, ["sid", "theme"]);
      // A link on the host's own page carries all three.
      await page.click("#to-library");
      await page.waitForURL(`${origin}/library`, { timeout: WAIT_MS });
      await heading("Library of alice");
      assert.equal(app.count("GET", "/library"), 4);
      assert.deepEqual(app.last("GET", "/library").cookies, ["guard", "sid", "theme"]);

      // A link on another site brings the Lax cookies, not the Strict one.
      await page.goto(elsewhere.url);
      await page.click("#to-library");
      await page.waitForURL(`${origin}/library`, { timeout: WAIT_MS });
      await heading("Library of alice");
      assert.deepEqual(app.last("GET", "/library").cookies, ["sid", "theme"]);

      // A form another site posts here brings no session cookie: the transfer is refused.
      await page.goto(elsewhere.url);
      await page.click("#transfer");
      await page.waitForURL(`${origin}/transfer`, { timeout: WAIT_MS });
      await heading("Sign in first");
      assert.deepEqual(app.last("POST", "/transfer").cookies, []);
      // The same form on the host's own page is sent with them.
      await page.goto(`${origin}/library`);
      await page.click("#transfer");
      await page.waitForURL(`${origin}/transfer`, { timeout: WAIT_MS });
      await heading("Transferred for alice");
      assert.deepEqual(app.last("POST", "/transfer").cookies, ["guard", "sid", "theme"]);

      // Signing out deletes the session cookie; the library is closed again.
      await page.goto(`${origin}/library`);
      await page.click("#sign-out");
      await page.waitForURL(`${origin}/library`, { timeout: WAIT_MS });
      await heading("Sign in first");
      assert.deepEqual(app.last("GET", "/library").cookies, ["theme"]);

      assert.ok(
        app.seen.every((r) => !r.cookies.includes("pagejs")),
        "a cookie set by the page's script never reaches the host",
      );
      assert.deepEqual(pageErrors, []);
    } catch (err) {
      await page?.screenshot({ path: path.join(logs, "failure.png"), fullPage: true }).catch(() => {});
      throw err;
    } finally {
      await context?.close().catch(() => {});
      await procs.closeAll();
      fs.rmSync(work, { recursive: true, force: true });
    }
  },
);

/**
 * The media server: a login form that sets an `HttpOnly` session cookie (`sid`,
 * SameSite=Lax), an `HttpOnly` `Strict` one (`guard`) and a plain one (`theme`);
 * a library and an API that answer 401 without a known `sid`; a transfer by POST;
 * sign-out deleting `sid` and `guard`. It keeps the names of the cookies each
 * request carried (never their values).
 */
async function startApp(procs) {
  const sessions = new Map();
  const seen = [];
  const page = (res, status, title, body, headers = {}) => {
    const html = `<!doctype html><html><head><meta charset="utf-8"><title>${title}</title><link rel="icon" href="data:,"></head><body><h1>${title}</h1>${body}</body></html>`;
    res.writeHead(status, { "Content-Type": "text/html; charset=utf-8", "Content-Length": Buffer.byteLength(html), ...headers });
    res.end(html);
  };
  const server = createServer(async (req, res) => {
    const url = new URL(req.url, "http://app");
    const cookies = Object.fromEntries(
      (req.headers.cookie ?? "")
        .split(";")
        .map((pair) => pair.trim())
        .filter((pair) => pair.includes("="))
        .map((pair) => [pair.slice(0, pair.indexOf("=")), pair.slice(pair.indexOf("=") + 1)]),
    );
    seen.push({ method: req.method, path: url.pathname, cookies: Object.keys(cookies).sort() });
    let body = "";
    for await (const chunk of req) body += chunk;
    const user = sessions.get(cookies.sid);
    switch (`${req.method} ${url.pathname}`) {
      case "GET /":
        return page(res, 200, "home media", `<a href="/login">Sign in</a>`);
      case "GET /login":
        return page(
          res,
          200,
          "Sign in",
          `<form method="post" action="/login"><input id="user" name="user"><input id="password" name="password" type="password">` +
            `<button id="sign-in">Sign in</button></form>`,
        );
      case "POST /login": {
        const form = new URLSearchParams(body);
        if (form.get("password") !== PASSWORD) return page(res, 403, "Wrong password", "");
        const sid = randomBytes(16).toString("hex");
        sessions.set(sid, form.get("user"));
        return page(res, 303, "Signed in", "", {
          Location: "/library",
          "Set-Cookie": [
            `sid=${sid}; Path=/; HttpOnly; SameSite=Lax`,
            `guard=${randomBytes(8).toString("hex")}; Path=/; HttpOnly; Secure; SameSite=Strict`,
            "theme=dark; Path=/; Max-Age=3600",
          ],
        });
      }
      case "GET /library":
        if (user === undefined) return page(res, 401, "Sign in first", `<a href="/login">Sign in</a>`);
        return page(
          res,
          200,
          `Library of ${user}`,
          `<a id="to-library" href="/library">Library</a>` +
            `<form method="post" action="/transfer"><button id="transfer">Transfer</button></form>` +
            `<form method="post" action="/logout"><button id="sign-out">Sign out</button></form>`,
        );
      case "GET /framed":
        return page(res, 200, "framed", `<iframe id="inner" src="/inner"></iframe>`);
      case "GET /inner":
        return page(
          res,
          200,
          "inner",
          `<p id="who"></p><script>fetch("/api/whoami").then((r) => r.text()).then((t) => { document.getElementById("who").textContent = t; })</script>`,
        );
      case "GET /api/whoami": {
        const json = user === undefined ? '{"error":"sign in first"}' : JSON.stringify({ user });
        res.writeHead(user === undefined ? 401 : 200, { "Content-Type": "application/json", "Content-Length": json.length });
        return res.end(json);
      }
      case "POST /transfer":
        if (user === undefined) return page(res, 401, "Sign in first", "");
        return page(res, 200, `Transferred for ${user}`, "");
      case "POST /logout":
        sessions.delete(cookies.sid);
        return page(res, 303, "Signed out", "", {
          Location: "/library",
          "Set-Cookie": ["sid=; Path=/; Max-Age=0", "guard=; Path=/; Secure; Expires=Thu, 01 Jan 1970 00:00:00 GMT"],
        });
      default:
        return page(res, 404, "Not found", "");
    }
  });
  procs.track(server);
  const port = await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve(server.address().port));
  });
  const last = (method, p) => {
    const found = seen.findLast((r) => r.method === method && r.path === p);
    assert.ok(found, `the app saw no ${method} ${p}`);
    return found;
  };
  const count = (method, p) => seen.filter((r) => r.method === method && r.path === p).length;
  return { port, seen, last, count };
}

/** Another site (plain HTTP on loopback): a link to the host's library and a form that posts a transfer there. */
async function startOtherSite(procs) {
  const site = { target: undefined, url: undefined };
  const server = createServer((_req, res) => {
    const html =
      `<!doctype html><html><head><meta charset="utf-8"><title>another site</title><link rel="icon" href="data:,"></head><body>` +
      `<a id="to-library" href="${site.target}/library">the library</a>` +
      `<form method="post" action="${site.target}/transfer"><button id="transfer">Win a prize</button></form></body></html>`;
    res.writeHead(200, { "Content-Type": "text/html; charset=utf-8", "Content-Length": Buffer.byteLength(html) });
    res.end(html);
  });
  procs.track(server);
  const port = await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve(server.address().port));
  });
  site.url = `http://127.0.0.1:${port}/`;
  return site;
}
