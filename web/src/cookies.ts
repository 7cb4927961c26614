/**
 * The cookie jar of the tunnel: the service worker reads every `Set-Cookie` the
 * host's HTTP server sends (a worker may not hand one to the browser), keeps the
 * cookies here, and writes the matching `Cookie` header into each request it
 * tunnels. Pure state, the time passed in; the worker keeps it in IndexedDB.
 *
 * The rules are RFC 6265's (section 5: date parsing, the storage model, domain and
 * path matching, the order of the `Cookie` header) with what browsers took since
 * from its successor, RFC 6265bis: `SameSite` (unset counts as `Lax`), `Secure`
 * only from a secure origin and not overwritten from an insecure one, the
 * `__Secure-` and `__Host-` prefixes, and expiry capped at 400 days.
 *
 * A host's pages have an origin of their own, so "same-site" here means this very
 * origin: another host's origin on the same relay is another site, whatever a
 * public suffix list would say.
 *
 * Bounded as browsers bound a domain, so that a hostile media server cannot fill
 * the browser's storage through the jar: at most {@link MAX_COOKIES} cookies of at
 * most {@link MAX_COOKIE_BYTES} bytes of name and value each; past the count, the
 * expired go first, then the least recently used.
 */

/** The most cookies kept for one host's origin (RFC 6265 section 6.1 asks for at least 50). */
export const MAX_COOKIES = 50;
/** The most bytes of name and value of one cookie (RFC 6265 section 6.1: at least 4096). */
export const MAX_COOKIE_BYTES = 4096;
/** The most bytes of one attribute's value (RFC 6265bis): a longer one is ignored. */
export const MAX_ATTRIBUTE_BYTES = 1024;
/** The furthest expiry a server may set (RFC 6265bis: 400 days). */
export const MAX_AGE_MS = 400 * 24 * 3600 * 1000;

/** How a cookie goes with requests made from other sites. */
export type SameSite = "strict" | "lax" | "none" | "default";

/** A cookie as the jar keeps it (and stores it). */
export interface Cookie {
  readonly name: string;
  readonly value: string;
  /** The host (host-only) or the domain the cookie is for, lower case. */
  readonly domain: string;
  /** Sent to exactly `domain`, not to names under it (no `Domain` attribute). */
  readonly hostOnly: boolean;
  readonly path: string;
  /** When it expires, in ms since the epoch; `undefined` for a session cookie. */
  readonly expires: number | undefined;
  readonly secure: boolean;
  readonly httpOnly: boolean;
  readonly sameSite: SameSite;
  readonly created: number;
  lastAccess: number;
}

/** Where a request goes and where it comes from. */
export interface CookieRequest {
  /** The request's URL, as the page sees it (the host's origin). */
  readonly url: URL;
  readonly method: string;
  /** Whether the request was made from this origin (its initiator and every frame above it). */
  readonly sameSite: boolean;
  /** Whether it navigates a top-level window (a link followed, a form sent, an address typed). */
  readonly topLevelNavigation: boolean;
}

/** What the service worker knows of where a request comes from. */
export interface RequestInitiator {
  /** `request.mode`: `navigate` for a page or frame loaded. */
  readonly mode: string;
  /** `request.destination`: `document` for a top-level page. */
  readonly destination: string;
  /** `request.referrer`: empty where the page that made it sends none. */
  readonly referrer: string;
  /** The page or worker of this origin that made a request other than a navigation, where the worker has it. */
  readonly client?: unknown;
}

/**
 * Whether a request comes from `origin` itself, for `SameSite`, judged only on what
 * another site cannot forge, so that a doubt keeps `Strict` and `Lax` cookies back
 * rather than letting them out:
 * - a navigation (of a window or a frame) is from this origin when its referrer is;
 *   one with no referrer (an address typed, a bookmark, or another site that sends
 *   none) is not;
 * - any other request is when the worker knows the page or worker that made it: it
 *   is one of this origin's, and none of them has another origin above it, since
 *   every page of the origin refuses to be framed by another
 *   ({@link FRAME_ANCESTORS_SELF}; the browser does not tell a worker a frame's
 *   ancestors).
 */
export function requestSite(origin: string, from: RequestInitiator): Pick<CookieRequest, "sameSite" | "topLevelNavigation"> {
  if (from.mode === "navigate") {
    return { sameSite: originOf(from.referrer) === origin, topLevelNavigation: from.destination === "document" };
  }
  return { sameSite: from.client !== undefined, topLevelNavigation: false };
}

/**
 * The policy the worker adds to every response it gives a page: no other origin may
 * frame the host's pages. It is what lets {@link requestSite} take a frame of this
 * origin as having only this origin above it (the browser does not tell a worker a
 * frame's ancestors), and it keeps other sites from framing a signed-in page under
 * their own (clickjacking). A policy of the host's own is kept beside it; the
 * browser enforces both.
 */
export const FRAME_ANCESTORS_SELF = "frame-ancestors 'self'";

/** Methods `Lax` cookies go with on a navigation from another site. */
const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS", "TRACE"]);

/** Cookies for one host's origin. */
export class CookieJar {
  private cookies: Cookie[];

  /** A jar holding `stored` (as {@link snapshot} gave them), less what is malformed, expired or over the bounds. */
  constructor(stored: unknown = [], now = 0) {
    this.cookies = [];
    if (!Array.isArray(stored)) return;
    // The origin's pages can write its IndexedDB too: what comes back is checked as anything from outside.
    for (const item of stored.slice(0, MAX_COOKIES)) {
      const cookie = checkStored(item);
      if (cookie !== undefined && !expired(cookie, now)) this.cookies.push(cookie);
    }
  }

  /** How many cookies the jar holds (expired ones until they are next looked at). */
  get size(): number {
    return this.cookies.length;
  }

  /** The cookies, to store; {@link CookieJar}'s constructor takes them back. */
  snapshot(): Cookie[] {
    return this.cookies.map((c) => ({ ...c }));
  }

  /**
   * Takes one `Set-Cookie` header value from the response to `request`. Returns
   * whether the jar changed (a cookie stored, replaced or deleted).
   */
  setCookie(header: string, request: CookieRequest, now: number): boolean {
    const parsed = parseSetCookie(header, now);
    if (parsed === undefined) return false;
    const host = canonicalHost(request.url.hostname);
    const secureOrigin = request.url.protocol === "https:";

    let domain = host;
    let hostOnly = true;
    if (parsed.domain !== undefined) {
      // Only this host or a domain above it (for an address, only the address itself).
      if (!domainMatch(host, parsed.domain)) return false;
      hostOnly = false;
      domain = parsed.domain;
    }
    const path = parsed.path ?? defaultPath(request.url.pathname);
    // The default path comes from the URL, which has no bound of its own.
    if (utf8Length(path) > MAX_ATTRIBUTE_BYTES) return false;

    if (parsed.secure && !secureOrigin) return false;
    if (parsed.sameSite === "none" && !parsed.secure) return false;
    const lower = parsed.name.toLowerCase();
    if (lower.startsWith("__secure-") && !(parsed.secure && secureOrigin)) return false;
    if (lower.startsWith("__host-") && !(parsed.secure && secureOrigin && parsed.domain === undefined && path === "/")) return false;
    // A cookie that is not `SameSite=None` is taken from another site only when that site navigated here.
    if (parsed.sameSite !== "none" && !request.sameSite && !request.topLevelNavigation) return false;
    // An insecure origin leaves a secure cookie of the same name alone (RFC 6265bis).
    if (!secureOrigin) {
      const shadowed = this.cookies.some(
        (c) =>
          c.secure &&
          c.name === parsed.name &&
          (domainMatch(c.domain, domain) || domainMatch(domain, c.domain)) &&
          pathMatch(path, c.path),
      );
      if (shadowed) return false;
    }

    const at = this.cookies.findIndex((c) => c.name === parsed.name && c.domain === domain && c.hostOnly === hostOnly && c.path === path);
    const old = at >= 0 ? this.cookies[at] : undefined;
    if (at >= 0) this.cookies.splice(at, 1);
    // An expiry in the past deletes: the old cookie is gone and nothing takes its place.
    if (parsed.expires !== undefined && parsed.expires <= now) return old !== undefined;
    this.cookies.push({
      name: parsed.name,
      value: parsed.value,
      domain,
      hostOnly,
      path,
      expires: parsed.expires,
      secure: parsed.secure,
      httpOnly: parsed.httpOnly,
      sameSite: parsed.sameSite,
      created: old?.created ?? now,
      lastAccess: now,
    });
    this.evict(now);
    return true;
  }

  /**
   * The `Cookie` header for `request`, or `undefined` when no cookie matches.
   * Longer paths first, then older cookies first (RFC 6265 section 5.4).
   */
  cookieHeader(request: CookieRequest, now: number): string | undefined {
    this.removeExpired(now);
    const host = canonicalHost(request.url.hostname);
    const secureOrigin = request.url.protocol === "https:";
    const laxAllowed = request.sameSite || (request.topLevelNavigation && SAFE_METHODS.has(request.method.toUpperCase()));
    const matching = this.cookies.filter(
      (c) =>
        (c.hostOnly ? c.domain === host : domainMatch(host, c.domain)) &&
        pathMatch(request.url.pathname, c.path) &&
        (!c.secure || secureOrigin) &&
        (c.sameSite === "none" || (c.sameSite === "strict" ? request.sameSite : laxAllowed)),
    );
    if (matching.length === 0) return undefined;
    matching.sort((a, b) => b.path.length - a.path.length || a.created - b.created);
    for (const c of matching) c.lastAccess = now;
    return matching.map((c) => `${c.name}=${c.value}`).join("; ");
  }

  private removeExpired(now: number): void {
    if (this.cookies.some((c) => expired(c, now))) this.cookies = this.cookies.filter((c) => !expired(c, now));
  }

  /** Past {@link MAX_COOKIES}: the expired first, then the least recently used. */
  private evict(now: number): void {
    if (this.cookies.length <= MAX_COOKIES) return;
    this.removeExpired(now);
    while (this.cookies.length > MAX_COOKIES) {
      let oldest = 0;
      for (let i = 1; i < this.cookies.length; i++) {
        if ((this.cookies[i] as Cookie).lastAccess < (this.cookies[oldest] as Cookie).lastAccess) oldest = i;
      }
      this.cookies.splice(oldest, 1);
    }
  }
}

/** A `Set-Cookie` value read by RFC 6265 section 5.2, before the storage model. */
export interface ParsedCookie {
  readonly name: string;
  readonly value: string;
  readonly expires: number | undefined;
  /** Without its leading dot, lower case; `undefined` without the attribute. */
  readonly domain: string | undefined;
  /** `undefined` without a usable attribute: the request's default path then. */
  readonly path: string | undefined;
  readonly secure: boolean;
  readonly httpOnly: boolean;
  readonly sameSite: SameSite;
}

/** Reads one `Set-Cookie` value; `undefined` for one that is ignored as a whole. */
export function parseSetCookie(header: string, now: number): ParsedCookie | undefined {
  const semi = header.indexOf(";");
  const pair = semi < 0 ? header : header.slice(0, semi);
  const eq = pair.indexOf("=");
  if (eq < 0) return undefined;
  const name = trim(pair.slice(0, eq));
  const value = trim(pair.slice(eq + 1));
  if (name === "" || CONTROL.test(name) || CONTROL.test(value)) return undefined;
  if (utf8Length(name) + utf8Length(value) > MAX_COOKIE_BYTES) return undefined;

  let maxAge: number | undefined;
  let expires: number | undefined;
  let domain: string | undefined;
  let path: string | undefined;
  let secure = false;
  let httpOnly = false;
  let sameSite: SameSite = "default";
  // The last of each attribute wins, as RFC 6265 section 5.3 reads the list.
  for (const av of semi < 0 ? [] : header.slice(semi + 1).split(";")) {
    const at = av.indexOf("=");
    const key = trim(at < 0 ? av : av.slice(0, at)).toLowerCase();
    const val = at < 0 ? "" : trim(av.slice(at + 1));
    if (utf8Length(val) > MAX_ATTRIBUTE_BYTES) continue;
    switch (key) {
      case "expires": {
        const date = parseCookieDate(val);
        if (date !== undefined) expires = date;
        break;
      }
      case "max-age": {
        if (!/^-?[0-9]+$/.test(val)) break;
        const seconds = Number(val);
        maxAge = seconds <= 0 ? -Infinity : seconds * 1000;
        break;
      }
      case "domain":
        if (val === "") break;
        domain = canonicalHost(val.startsWith(".") ? val.slice(1) : val);
        break;
      case "path":
        path = val.startsWith("/") ? val : undefined;
        break;
      case "secure":
        secure = true;
        break;
      case "httponly":
        httpOnly = true;
        break;
      case "samesite": {
        const s = val.toLowerCase();
        sameSite = s === "strict" || s === "lax" || s === "none" ? s : "default";
        break;
      }
    }
  }
  // Max-Age wins over Expires wherever either stands; 0 or less expires at once.
  let expiry: number | undefined;
  if (maxAge !== undefined) expiry = maxAge === -Infinity ? Number.MIN_SAFE_INTEGER : now + Math.min(maxAge, MAX_AGE_MS);
  else if (expires !== undefined) expiry = Math.min(expires, now + MAX_AGE_MS);
  return { name, value, expires: expiry, domain, path, secure, httpOnly, sameSite };
}

/**
 * A cookie date by the algorithm of RFC 6265 section 5.1.1 (which reads every
 * format servers are known to send), in ms since the epoch; `undefined` where it
 * finds no date.
 */
export function parseCookieDate(text: string): number | undefined {
  let time: [number, number, number] | undefined;
  let day: number | undefined;
  let month: number | undefined;
  let year: number | undefined;
  for (const token of text.split(/[\x09\x20-\x2f\x3b-\x40\x5b-\x60\x7b-\x7e]+/)) {
    if (token === "") continue;
    let m: RegExpExecArray | null;
    if (time === undefined && (m = /^([0-9]{1,2}):([0-9]{1,2}):([0-9]{1,2})(?:[^0-9]|$)/.exec(token))) {
      time = [Number(m[1]), Number(m[2]), Number(m[3])];
    } else if (day === undefined && (m = /^([0-9]{1,2})(?:[^0-9]|$)/.exec(token))) {
      day = Number(m[1]);
    } else if (month === undefined && MONTHS.indexOf(token.slice(0, 3).toLowerCase()) >= 0 && token.length >= 3) {
      month = MONTHS.indexOf(token.slice(0, 3).toLowerCase());
    } else if (year === undefined && (m = /^([0-9]{2,4})(?:[^0-9]|$)/.exec(token))) {
      year = Number(m[1]);
    }
  }
  if (time === undefined || day === undefined || month === undefined || year === undefined) return undefined;
  if (year >= 70 && year <= 99) year += 1900;
  else if (year >= 0 && year <= 69) year += 2000;
  const [h, min, s] = time;
  if (day < 1 || day > 31 || year < 1601 || h > 23 || min > 59 || s > 59) return undefined;
  const ms = Date.UTC(year, month, day, h, min, s);
  // 31 February and the like: a day the month does not have.
  if (new Date(ms).getUTCDate() !== day) return undefined;
  return ms;
}

/** RFC 6265 section 5.1.3: `host` is `domain` or a name under it (never an address under one). */
export function domainMatch(host: string, domain: string): boolean {
  if (host === domain) return true;
  return host.endsWith(`.${domain}`) && !isAddress(host);
}

/** RFC 6265 section 5.1.4: `requestPath` is `cookiePath` or below it. */
export function pathMatch(requestPath: string, cookiePath: string): boolean {
  if (requestPath === cookiePath) return true;
  if (!requestPath.startsWith(cookiePath)) return false;
  return cookiePath.endsWith("/") || requestPath[cookiePath.length] === "/";
}

/** RFC 6265 section 5.1.4: the folder of the request's path, the path of a cookie set without one. */
export function defaultPath(requestPath: string): string {
  if (!requestPath.startsWith("/")) return "/";
  const last = requestPath.lastIndexOf("/");
  return last <= 0 ? "/" : requestPath.slice(0, last);
}

const MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"];
/** Control characters but the tab: a cookie holding one is ignored (RFC 6265bis). */
const CONTROL = /[\x00-\x08\x0a-\x1f\x7f]/;

function trim(s: string): string {
  return s.replace(/^[ \t]+|[ \t]+$/g, "");
}

function utf8Length(s: string): number {
  return new TextEncoder().encode(s).length;
}

function originOf(url: string): string | undefined {
  try {
    return new URL(url).origin;
  } catch {
    return undefined;
  }
}

function canonicalHost(host: string): string {
  return host.toLowerCase();
}

function isAddress(host: string): boolean {
  return /^[0-9.]+$/.test(host) || host.includes(":") || host.startsWith("[");
}

function expired(cookie: Cookie, now: number): boolean {
  return cookie.expires !== undefined && cookie.expires <= now;
}

function checkStored(item: unknown): Cookie | undefined {
  if (typeof item !== "object" || item === null) return undefined;
  const c = item as Record<string, unknown>;
  const str = (v: unknown, max: number) => typeof v === "string" && utf8Length(v) <= max;
  const num = (v: unknown) => typeof v === "number" && Number.isFinite(v);
  if (!str(c.name, MAX_COOKIE_BYTES) || !str(c.value, MAX_COOKIE_BYTES) || c.name === "") return undefined;
  if (utf8Length(c.name as string) + utf8Length(c.value as string) > MAX_COOKIE_BYTES) return undefined;
  if (!str(c.domain, MAX_ATTRIBUTE_BYTES) || !str(c.path, MAX_ATTRIBUTE_BYTES)) return undefined;
  if (CONTROL.test(c.name as string) || CONTROL.test(c.value as string)) return undefined;
  if (!(c.expires === undefined || num(c.expires)) || !num(c.created) || !num(c.lastAccess)) return undefined;
  if (typeof c.hostOnly !== "boolean" || typeof c.secure !== "boolean" || typeof c.httpOnly !== "boolean") return undefined;
  if (c.sameSite !== "strict" && c.sameSite !== "lax" && c.sameSite !== "none" && c.sameSite !== "default") return undefined;
  return {
    name: c.name as string,
    value: c.value as string,
    domain: c.domain as string,
    hostOnly: c.hostOnly,
    path: c.path as string,
    expires: c.expires as number | undefined,
    secure: c.secure,
    httpOnly: c.httpOnly,
    sameSite: c.sameSite,
    created: c.created as number,
    lastAccess: c.lastAccess as number,
  };
}
