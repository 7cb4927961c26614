// The tunnel's cookie jar by RFC 6265 (and what browsers took from RFC 6265bis):
// dates in the formats servers send, domain and path matching, Max-Age against
// Expires, deletion by expiry, Secure and the name prefixes, SameSite from this
// origin and from others (and how the worker tells which), HttpOnly kept,
// replacement, the header's order, and the bounds pushed past: 50 cookies, 4096
// bytes each, 1024 bytes of path, and a stored jar the origin's pages could have
// written anything into.
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  CookieJar,
  MAX_AGE_MS,
  MAX_COOKIES,
  MAX_COOKIE_BYTES,
  defaultPath,
  domainMatch,
  parseCookieDate,
  parseSetCookie,
  pathMatch,
  requestSite,
} from "../build/cookies.js";
import { encodeRequest } from "../build/http1.js";

const T0 = Date.UTC(2026, 0, 1);
const ORIGIN = "https://abc.relay.example:8443";

/** A request from this origin's own page (`sameSite`), or as `opts` say. */
function req(path, opts = {}) {
  return {
    url: new URL(path, opts.origin ?? ORIGIN),
    method: opts.method ?? "GET",
    sameSite: opts.sameSite ?? true,
    topLevelNavigation: opts.topLevelNavigation ?? false,
  };
}

function jarWith(...headers) {
  const jar = new CookieJar();
  for (const h of headers) jar.setCookie(h, req("/"), T0);
  return jar;
}

test("cookie dates: the three formats servers send, two-digit years, and days a month lacks", () => {
  const at = Date.UTC(1994, 10, 6, 8, 49, 37);
  assert.equal(parseCookieDate("Sun, 06 Nov 1994 08:49:37 GMT"), at);
  assert.equal(parseCookieDate("Sunday, 06-Nov-94 08:49:37 GMT"), at);
  assert.equal(parseCookieDate("Sun Nov  6 08:49:37 1994"), at);
  assert.equal(parseCookieDate("Thu, 01 Jan 1970 00:00:00 GMT"), 0);
  assert.equal(parseCookieDate("1 Jan 69 00:00:00"), Date.UTC(2069, 0, 1));
  assert.equal(parseCookieDate("1 Jan 70 00:00:00"), Date.UTC(1970, 0, 1));
  assert.equal(parseCookieDate("31 Feb 2030 00:00:00"), undefined);
  assert.equal(parseCookieDate("06 Nov 1994"), undefined, "no time");
  assert.equal(parseCookieDate("06 Nov 1994 25:00:00"), undefined);
  assert.equal(parseCookieDate("tomorrow"), undefined);
});

test("Set-Cookie values: name and value trimmed, attributes case-insensitive, the last of each wins, bad ones ignored", () => {
  const c = parseSetCookie(" sid = a b ; PATH=/x; path=/y; HttpOnly; secure; SameSite=STRICT; Domain=.Relay.Example; Foo", T0);
  assert.deepEqual(c, {
    name: "sid",
    value: "a b",
    expires: undefined,
    domain: "relay.example",
    path: "/y",
    secure: true,
    httpOnly: true,
    sameSite: "strict",
  });
  assert.equal(parseSetCookie("novalue", T0), undefined, "no '='");
  assert.equal(parseSetCookie("=v", T0), undefined, "no name");
  assert.equal(parseSetCookie("a=b\x01c", T0), undefined, "a control character");
  assert.equal(parseSetCookie("a=b; Path=relative", T0).path, undefined, "a path not starting with / means the default");
  assert.equal(parseSetCookie("a=b; Domain=", T0).domain, undefined);
  assert.equal(parseSetCookie("a=b; SameSite=sometimes", T0).sameSite, "default");
  assert.equal(parseSetCookie(`a=b; Path=/${"p".repeat(1024)}`, T0).path, undefined, "an attribute over 1024 bytes is ignored");
});

test("Max-Age wins over Expires wherever it stands; 0 or less expires at once; both capped at 400 days", () => {
  const later = new Date(T0 + 3600_000).toUTCString();
  assert.equal(parseSetCookie(`a=b; Max-Age=60; Expires=${later}`, T0).expires, T0 + 60_000);
  assert.equal(parseSetCookie(`a=b; Expires=${later}; Max-Age=60`, T0).expires, T0 + 60_000);
  assert.equal(parseSetCookie(`a=b; Expires=${later}`, T0).expires, T0 + 3600_000);
  assert.equal(parseSetCookie(`a=b; Max-Age=1e3; Expires=${later}`, T0).expires, T0 + 3600_000, "a bad Max-Age is ignored");
  assert.ok(parseSetCookie("a=b; Max-Age=0", T0).expires <= T0);
  assert.ok(parseSetCookie("a=b; Max-Age=-5", T0).expires <= T0);
  assert.equal(parseSetCookie("a=b; Max-Age=99999999999", T0).expires, T0 + MAX_AGE_MS);
  assert.equal(parseSetCookie("a=b; Expires=Fri, 01 Jan 9999 00:00:00 GMT", T0).expires, T0 + MAX_AGE_MS);
  assert.equal(parseSetCookie("a=b", T0).expires, undefined, "a session cookie");
});

test("domain matching: a host-only cookie goes to its host alone; Domain widens to names under it, never to another", () => {
  assert.ok(domainMatch("abc.relay.example", "relay.example"));
  assert.ok(domainMatch("relay.example", "relay.example"));
  assert.ok(!domainMatch("xrelay.example", "relay.example"));
  assert.ok(!domainMatch("relay.example", "abc.relay.example"));
  assert.ok(!domainMatch("1.2.3.4", "2.3.4"), "an address has no names under it");

  const jar = new CookieJar();
  assert.ok(jar.setCookie("host=1", req("/"), T0));
  assert.ok(jar.setCookie("wide=1; Domain=.RELAY.example", req("/"), T0));
  assert.ok(!jar.setCookie("other=1; Domain=other.example", req("/"), T0), "a domain the host is not under");
  assert.ok(!jar.setCookie("below=1; Domain=x.abc.relay.example", req("/"), T0), "a name below the host");
  assert.equal(jar.cookieHeader(req("/"), T0), "host=1; wide=1");
  assert.equal(jar.cookieHeader(req("/", { origin: "https://x.abc.relay.example:8443" }), T0), "wide=1");
  assert.equal(jar.cookieHeader(req("/", { origin: "https://other.example" }), T0), undefined);

  const byAddress = new CookieJar();
  assert.ok(!byAddress.setCookie("a=1; Domain=0.0.1", req("/", { origin: "https://127.0.0.1" }), T0));
  assert.ok(byAddress.setCookie("a=1; Domain=127.0.0.1", req("/", { origin: "https://127.0.0.1" }), T0));
});

test("path matching: the default is the request's folder; a path covers itself and what is below it, not a longer name", () => {
  assert.equal(defaultPath("/a/b/c"), "/a/b");
  assert.equal(defaultPath("/a"), "/");
  assert.equal(defaultPath("/"), "/");
  assert.ok(pathMatch("/docs", "/docs"));
  assert.ok(pathMatch("/docs/", "/docs"));
  assert.ok(pathMatch("/docs/web", "/docs"));
  assert.ok(pathMatch("/docs/web", "/docs/"));
  assert.ok(!pathMatch("/docsx", "/docs"));
  assert.ok(!pathMatch("/", "/docs"));

  const jar = new CookieJar();
  jar.setCookie("folder=1", req("/app/login"), T0);
  jar.setCookie("root=1; Path=/", req("/app/login"), T0);
  jar.setCookie("deep=1; Path=/app/api", req("/app/login"), T0);
  assert.equal(jar.cookieHeader(req("/app/api/items"), T0 + 1), "deep=1; folder=1; root=1", "longer paths first");
  assert.equal(jar.cookieHeader(req("/app"), T0 + 1), "folder=1; root=1");
  assert.equal(jar.cookieHeader(req("/apple"), T0 + 1), "root=1");
  // Same path: the older cookie first.
  const two = new CookieJar();
  two.setCookie("b=2", req("/"), T0 + 1);
  two.setCookie("a=1", req("/"), T0 + 2);
  assert.equal(two.cookieHeader(req("/"), T0 + 3), "b=2; a=1");
});

test("a cookie set again replaces the old one (keeping its place); expiry in the past or running out deletes it", () => {
  const jar = new CookieJar();
  jar.setCookie("a=1", req("/"), T0);
  jar.setCookie("b=1", req("/"), T0 + 1);
  jar.setCookie("a=2", req("/"), T0 + 2);
  assert.equal(jar.cookieHeader(req("/"), T0), "a=2; b=1", "the replaced cookie keeps its creation time");
  assert.equal(jar.size, 2);
  // Another path is another cookie.
  jar.setCookie("a=3; Path=/x", req("/"), T0);
  assert.equal(jar.size, 3);
  // Deleted by Max-Age=0 and by an Expires in the past, as servers log out.
  assert.ok(jar.setCookie("a=; Max-Age=0", req("/"), T0 + 1));
  assert.ok(jar.setCookie("b=; Expires=Thu, 01 Jan 1970 00:00:00 GMT", req("/"), T0 + 1));
  assert.equal(jar.cookieHeader(req("/x"), T0 + 1), "a=3");
  assert.ok(!jar.setCookie("never=; Max-Age=0", req("/"), T0 + 1), "deleting what is not there changes nothing");

  const timed = jarWith("short=1; Max-Age=10", "long=1; Max-Age=3600", "session=1");
  assert.equal(timed.cookieHeader(req("/"), T0 + 9_999), "short=1; long=1; session=1");
  assert.equal(timed.cookieHeader(req("/"), T0 + 10_000), "long=1; session=1", "gone the moment it expires");
  assert.equal(timed.size, 2);
  assert.equal(timed.cookieHeader(req("/"), T0 + 3600_000), "session=1");
});

test("Secure: set only from a secure origin, sent only to one, never shadowed from an insecure one; the name prefixes", () => {
  const insecure = (path, opts = {}) => req(path, { ...opts, origin: "http://abc.relay.example" });
  const jar = new CookieJar();
  assert.ok(!jar.setCookie("s=1; Secure", insecure("/"), T0));
  assert.ok(jar.setCookie("s=1; Secure", req("/"), T0));
  assert.equal(jar.cookieHeader(req("/"), T0), "s=1");
  assert.equal(jar.cookieHeader(insecure("/"), T0), undefined);
  assert.ok(!jar.setCookie("s=evil", insecure("/"), T0), "an insecure origin leaves the secure cookie alone");
  assert.equal(jar.cookieHeader(req("/"), T0), "s=1");

  assert.ok(!jar.setCookie("__Secure-a=1", req("/"), T0), "__Secure- needs Secure");
  assert.ok(jar.setCookie("__Secure-a=1; Secure", req("/"), T0));
  assert.ok(!jar.setCookie("__Host-b=1; Secure; Path=/x", req("/"), T0), "__Host- needs Path=/");
  assert.ok(!jar.setCookie("__Host-b=1; Secure; Path=/; Domain=relay.example", req("/"), T0), "__Host- takes no Domain");
  assert.ok(!jar.setCookie("__host-b=1; Path=/", req("/"), T0), "the prefixes are read in any case");
  assert.ok(jar.setCookie("__Host-b=1; Secure; Path=/", req("/"), T0));
});

test("SameSite: Strict only from this origin, Lax (and unset) also with another site's top-level GET, None everywhere but only Secure", () => {
  const jar = jarWith("strict=1; SameSite=Strict", "lax=1; SameSite=Lax", "unset=1", "none=1; SameSite=None; Secure");
  assert.ok(!jar.setCookie("insecureNone=1; SameSite=None", req("/"), T0), "None without Secure is refused");
  assert.equal(jar.cookieHeader(req("/"), T0), "strict=1; lax=1; unset=1; none=1");
  const fromElsewhere = { sameSite: false };
  assert.equal(jar.cookieHeader(req("/", { ...fromElsewhere, topLevelNavigation: true }), T0), "lax=1; unset=1; none=1", "a link from another site");
  assert.equal(
    jar.cookieHeader(req("/", { ...fromElsewhere, topLevelNavigation: true, method: "POST" }), T0),
    "none=1",
    "a form another site posts here (CSRF)",
  );
  assert.equal(jar.cookieHeader(req("/", fromElsewhere), T0), "none=1", "a frame or a request made by another site");

  // What another site's request brings back is stored only when it navigated the window here.
  const set = new CookieJar();
  assert.ok(!set.setCookie("x=1", req("/", fromElsewhere), T0));
  assert.ok(!set.setCookie("x=1; SameSite=Strict", req("/", fromElsewhere), T0));
  assert.ok(set.setCookie("y=1; SameSite=None; Secure", req("/", fromElsewhere), T0));
  assert.ok(set.setCookie("z=1; SameSite=Strict", req("/", { ...fromElsewhere, topLevelNavigation: true }), T0));
});

test("HttpOnly is kept with the cookie and the cookie goes with HTTP requests; the page's own Cookie header never does", () => {
  const jar = jarWith("sid=secret; HttpOnly; Path=/");
  assert.equal(jar.snapshot()[0].httpOnly, true);
  assert.equal(new CookieJar(jar.snapshot(), T0).snapshot()[0].httpOnly, true, "and kept through storage");
  const cookie = jar.cookieHeader(req("/api"), T0);
  assert.equal(cookie, "sid=secret");
  const wire = Buffer.from(
    encodeRequest({ method: "GET", target: "/api", host: "h", headers: [["Cookie", "sid=forged"]], cookie }),
  ).toString("latin1");
  assert.equal(wire, "GET /api HTTP/1.1\r\nHost: h\r\nAccept-Encoding: identity\r\nCookie: sid=secret\r\n\r\n");
  assert.ok(!wire.includes("forged"));
});

test("at most 50 cookies: the 51st pushes out the least recently used, expired ones first", () => {
  const jar = new CookieJar();
  for (let i = 0; i < MAX_COOKIES; i++) jar.setCookie(`c${i}=v`, req("/"), T0 + i);
  assert.equal(jar.size, MAX_COOKIES);
  // c0 set again is the most recently used, so c1 is the least.
  jar.setCookie("c0=w", req("/"), T0 + 100);
  jar.setCookie("late=v", req("/"), T0 + 101);
  assert.equal(jar.size, MAX_COOKIES);
  const names = jar.snapshot().map((c) => c.name);
  assert.ok(names.includes("late") && names.includes("c0") && names.includes("c2"));
  assert.ok(!names.includes("c1"));
  // Sending a cookie is using it: c0, read at a path only it has, outlives c1.
  const used = new CookieJar();
  for (let i = 0; i < MAX_COOKIES; i++) used.setCookie(`c${i}=v; Path=/p${i}`, req("/"), T0 + i);
  assert.equal(used.cookieHeader(req("/p0"), T0 + 100), "c0=v");
  used.setCookie("late=v", req("/"), T0 + 101);
  const left = used.snapshot().map((c) => c.name);
  assert.ok(left.includes("c0") && !left.includes("c1"));

  // A server that sets a thousand cookies keeps fifty, the newest.
  const flood = new CookieJar();
  for (let i = 0; i < 1000; i++) flood.setCookie(`f${i}=v`, req("/"), T0 + i);
  assert.equal(flood.size, MAX_COOKIES);
  assert.deepEqual(
    flood.snapshot().map((c) => c.name),
    Array.from({ length: MAX_COOKIES }, (_, i) => `f${1000 - MAX_COOKIES + i}`),
  );

  // An expired cookie goes before a live one, however recently used.
  const mixed = new CookieJar();
  mixed.setCookie("dying=v; Max-Age=1", req("/"), T0 + 1000);
  for (let i = 0; i < MAX_COOKIES - 1; i++) mixed.setCookie(`m${i}=v`, req("/"), T0 + i);
  mixed.setCookie("new=v", req("/"), T0 + 5000);
  const kept = mixed.snapshot().map((c) => c.name);
  assert.ok(!kept.includes("dying") && kept.includes("m0") && kept.includes("new"));
});

test("at most 4096 bytes of name and value: a larger cookie is ignored, one at the limit kept", () => {
  const jar = new CookieJar();
  const value = "v".repeat(MAX_COOKIE_BYTES - 1);
  assert.ok(jar.setCookie(`a=${value}`, req("/"), T0));
  assert.ok(!jar.setCookie(`bb=${value}`, req("/"), T0));
  assert.ok(!jar.setCookie(`c=${"é".repeat(MAX_COOKIE_BYTES / 2)}`, req("/"), T0), "bytes, not characters");
  assert.equal(jar.size, 1);
});

test("a stored jar is taken back checked: malformed, expired and surplus cookies are dropped", () => {
  const good = jarWith("a=1; Max-Age=60", "b=2").snapshot();
  assert.deepEqual(new CookieJar(good, T0).snapshot(), good);
  assert.equal(new CookieJar(good, T0 + 60_000).size, 1, "the expired one is gone");
  const hostile = [
    ...good,
    null,
    "a=b",
    { ...good[0], name: "" },
    { ...good[0], value: "x".repeat(MAX_COOKIE_BYTES) },
    { ...good[0], sameSite: "sometimes" },
    { ...good[0], expires: "never" },
    { ...good[0], value: "a\r\nb" },
  ];
  assert.equal(new CookieJar(hostile, T0).size, 2);
  const many = Array.from({ length: 10_000 }, (_, i) => ({ ...good[1], name: `n${i}` }));
  assert.equal(new CookieJar(many, T0).size, MAX_COOKIES);
  assert.equal(new CookieJar({ not: "a list" }, T0).size, 0);
});

test("where a request comes from: a referrer of this origin, or a page of it (framed only by it); anything in doubt is another site", () => {
  const here = "https://abc.relay.example:8443";
  const nav = (destination, referrer) => requestSite(here, { mode: "navigate", destination, referrer });
  assert.deepEqual(nav("document", `${here}/login`), { sameSite: true, topLevelNavigation: true });
  assert.deepEqual(nav("document", "https://other.example/"), { sameSite: false, topLevelNavigation: true });
  assert.deepEqual(nav("document", "https://xyz.relay.example:8443/"), { sameSite: false, topLevelNavigation: true }, "another host's origin");
  assert.deepEqual(nav("document", ""), { sameSite: false, topLevelNavigation: true }, "no referrer: an address typed, or a site that hides itself");
  assert.deepEqual(nav("iframe", `${here}/`), { sameSite: true, topLevelNavigation: false });
  assert.deepEqual(nav("iframe", "https://other.example/"), { sameSite: false, topLevelNavigation: false });

  const sub = (client) => requestSite(here, { mode: "cors", destination: "", referrer: `${here}/`, client }).sameSite;
  assert.equal(sub({ type: "window", frameType: "top-level" }), true);
  assert.equal(sub({ type: "window", frameType: "nested" }), true, "only this origin may frame its pages");
  assert.equal(sub({ type: "window", frameType: "auxiliary" }), true, "a window another page opened is top-level");
  assert.equal(sub({ type: "worker", frameType: "none" }), true, "a worker of this origin's pages");
  assert.equal(sub(undefined), false, "no page or worker known");
});

test("a cookie whose path, given or taken from a long URL, is over 1024 bytes is ignored", () => {
  const jar = new CookieJar();
  const long = `/${"d".repeat(1100)}/page`;
  assert.ok(!jar.setCookie("a=1", req(long), T0));
  assert.ok(jar.setCookie("a=1; Path=/", req(long), T0));
  assert.ok(jar.setCookie(`b=1; Path=/${"p".repeat(1022)}`, req("/"), T0));
  assert.equal(jar.snapshot().find((c) => c.name === "b").path.length, 1023);
});
