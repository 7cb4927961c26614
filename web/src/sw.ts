/**
 * The service worker, `/.blindrelay/sw.js` with scope `/`: every request of the
 * pages on this origin, except the player's own files and the relay's WebSocket,
 * goes to the host through the HTTP tunnel, end to end; the relay sees only
 * ciphertext.
 *
 * The ticket and the player's key come from IndexedDB, where the page left them.
 * Cookies the host sets are kept in the worker's jar (`cookies.ts`, saved in
 * IndexedDB): a worker cannot hand `Set-Cookie` to the browser, so the worker
 * takes it out of each response and writes the matching `Cookie` header into each
 * request itself. The browser's own cookies for the origin (`document.cookie`)
 * are neither read nor written.
 * When the tunnel cannot be opened (no ticket, a host that does not serve this
 * player, the host offline), a navigation gets a short page that says so and
 * links back to the player page.
 * A page of the host's gets `/.blindrelay/ws.js` as its first script (src/inject.ts):
 * a worker never sees a page's WebSockets, so that script carries the ones to this
 * origin through the tunnel itself.
 */

import { CookieJar, type CookieRequest, FRAME_ANCESTORS_SELF, requestSite } from "./cookies.js";
import { withShim } from "./inject.js";
import { SessionError } from "./session.js";
import { loadCookies, loadStaticKey, loadTicket, loadTransport, saveCookies } from "./store.js";
import { parseTicket } from "./ticket.js";
import { RelayTransports } from "./transport.js";
import { Tunnel } from "./tunnel.js";

/** The parts of the service worker's global scope used here. */
interface WorkerScope {
  readonly location: { readonly host: string; readonly origin: string };
  addEventListener(type: "install" | "activate", listener: (event: ExtendableEvent) => void): void;
  addEventListener(type: "fetch", listener: (event: FetchEvent) => void): void;
  addEventListener(type: "message", listener: (event: MessageEvent) => void): void;
  skipWaiting(): Promise<void>;
  readonly clients: { claim(): Promise<void>; get(id: string): Promise<object | undefined> };
}
interface ExtendableEvent {
  waitUntil(work: Promise<unknown>): void;
}
interface FetchEvent extends ExtendableEvent {
  readonly request: Request;
  /** The page (or worker) that made a request other than a navigation; empty for a navigation. */
  readonly clientId: string;
  respondWith(response: Promise<Response>): void;
}

const scope = self as unknown as WorkerScope;

/** The most of a request body the worker holds to send it (an upload to a media server's API). */
const MAX_REQUEST_BODY = 64 * 1024 * 1024;

let tunnel: Promise<{ tunnel: Tunnel; transports: RelayTransports }> | undefined;
let jar: Promise<CookieJar> | undefined;
/** Saves of the jar, one after another, so that an older snapshot never overwrites a newer one. */
let saving: Promise<void> = Promise.resolve();

scope.addEventListener("install", (event) => event.waitUntil(scope.skipWaiting()));
scope.addEventListener("activate", (event) => event.waitUntil(scope.clients.claim()));
scope.addEventListener("message", (event) => {
  if ((event.data as { type?: unknown } | null)?.type === "reload") {
    // The page stored a ticket: sessions opened with the old one must not serve the next request.
    void tunnel
      ?.then((t) => {
        t.tunnel.closeIdle();
        // The link may have changed the transport setting too.
        t.transports.close();
      })
      .catch(() => {});
    tunnel = undefined;
  }
});

scope.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (url.origin !== scope.location.origin) return;
  // The player's own files (and webtransport.json) and the relay's WebSocket come from the relay itself.
  if (url.pathname.startsWith("/.blindrelay/") || url.pathname === "/.blindrelay" || url.pathname === "/blindrelay/1") return;
  event.respondWith(tunnelled(event, url));
});

async function currentTunnel(): Promise<Tunnel> {
  tunnel ??= (async () => {
    const [ticketText, key, setting] = await Promise.all([loadTicket(), loadStaticKey(), loadTransport()]);
    if (ticketText === undefined || key === undefined) throw new SessionError("refused", "this browser has no ticket for the host yet");
    const { hostId } = parseTicket(ticketText);
    // WebTransport first, as the page: its sessions are streams of one connection.
    const transports = new RelayTransports({ origin: scope.location.origin, setting });
    return { tunnel: new Tunnel({ open: () => transports.connect({ hostId, playerSecret: key }) }), transports };
  })();
  try {
    return (await tunnel).tunnel;
  } catch (err) {
    tunnel = undefined;
    throw err;
  }
}

async function tunnelled(event: FetchEvent, url: URL): Promise<Response> {
  const request = event.request;
  try {
    let body: Uint8Array | undefined;
    if (request.method !== "GET" && request.method !== "HEAD") {
      const buffer = await request.arrayBuffer();
      if (buffer.byteLength > MAX_REQUEST_BODY) return new Response("request body too large for the tunnel\n", { status: 413 });
      body = new Uint8Array(buffer);
    }
    // A request sent without credentials neither carries cookies nor stores any (as the browser's own jar).
    const context = request.credentials === "omit" ? undefined : await cookieContext(event, url);
    const cookies = context !== undefined ? await cookieJar() : undefined;
    const cookie = context !== undefined ? cookies?.cookieHeader(context, Date.now()) : undefined;
    const t = await currentTunnel();
    const response = await t.fetch({
      method: request.method,
      target: url.pathname + url.search,
      host: url.host,
      headers: request.headers.entries(),
      ...(body !== undefined ? { body } : {}),
      ...(cookie !== undefined ? { cookie } : {}),
    });
    if (response.status < 200 || response.status > 599) throw new SessionError("protocol", `the host answered status ${response.status}`);
    const headers = new Headers();
    let changed = false;
    for (const [name, value] of response.headers) {
      const lower = name.toLowerCase();
      if (lower === "set-cookie" || lower === "set-cookie2") {
        // Into the jar, never to the page: an HttpOnly cookie stays out of reach of its scripts.
        if (context !== undefined && cookies?.setCookie(value, context, Date.now())) changed = true;
        continue;
      }
      try {
        headers.append(name, value);
      } catch {
        // A header the Fetch API refuses (a bad value) is left out, not the response.
      }
    }
    headers.append("Content-Security-Policy", FRAME_ANCESTORS_SELF);
    // Saved before the page has the answer: the request it makes next (a login's redirect) finds the cookie.
    if (changed && cookies !== undefined) await saveJar(cookies);
    let page = response.body;
    if (page !== null && wantsShim(request, response.status, headers)) {
      // The page's WebSockets to this origin go through the tunnel too (src/ws.ts).
      page = withShim(page);
      headers.delete("Content-Length");
    }
    return new Response(page, { status: response.status, statusText: response.statusText, headers });
  } catch (err) {
    return failure(request, err);
  }
}

/**
 * Whether a response is a page of the host's that gets the WebSocket script: a
 * document or frame loaded (not HTML the page fetches to use as it likes, nor a
 * download), whole, in a coding and charset that the ASCII tag can go into as it is.
 */
function wantsShim(request: Request, status: number, headers: Headers): boolean {
  if (request.mode !== "navigate" || status === 206) return false;
  // A download is kept byte for byte.
  if (/^\s*attachment/i.test(headers.get("Content-Disposition") ?? "")) return false;
  const type = headers.get("Content-Type") ?? "";
  const coding = (headers.get("Content-Encoding") ?? "identity").trim().toLowerCase();
  return /^\s*text\/html\s*(;|$)/i.test(type) && !/charset\s*=\s*"?utf-(16|32)/i.test(type) && coding === "identity";
}

/** The jar, read from IndexedDB once per start of the worker; an empty one where storage fails. */
function cookieJar(): Promise<CookieJar> {
  jar ??= loadCookies().then(
    (stored) => new CookieJar(stored, Date.now()),
    () => new CookieJar(),
  );
  return jar;
}

/** Saves the jar as it is now; where storage fails, its cookies last as long as the worker. */
function saveJar(cookies: CookieJar): Promise<void> {
  const snapshot = cookies.snapshot();
  saving = saving.then(() => saveCookies(snapshot)).catch(() => {});
  return saving;
}

/** Where a request comes from, for `SameSite` (`requestSite` decides). */
async function cookieContext(event: FetchEvent, url: URL): Promise<CookieRequest> {
  const request = event.request;
  const client = request.mode !== "navigate" && event.clientId !== "" ? await scope.clients.get(event.clientId).catch(() => undefined) : undefined;
  const from = { mode: request.mode, destination: request.destination, referrer: request.referrer, client };
  return { url, method: request.method, ...requestSite(scope.location.origin, from) };
}

/** The answer when the tunnel failed: a page that says why, for a navigation; a 502 otherwise. */
function failure(request: Request, err: unknown): Response {
  const why =
    err instanceof SessionError && err.kind === "not-authorized"
      ? "The host does not serve this browser's player key."
      : err instanceof SessionError && err.kind === "relay-refused"
        ? `The relay refused the session: ${err.message}.`
        : err instanceof SessionError && err.kind === "redirected"
          ? `The relay does not hold this host: ${err.message}.`
        : `The host could not be reached: ${err instanceof Error ? err.message : String(err)}.`;
  const csp = { "Content-Security-Policy": FRAME_ANCESTORS_SELF };
  if (request.mode !== "navigate") return new Response(`${why}\n`, { status: 502, headers: { "Content-Type": "text/plain; charset=utf-8", ...csp } });
  const page =
    `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>blindrelay: host not reached</title></head>` +
    `<body><h1>Host not reached</h1><p>${escapeHtml(why)}</p><p><a href="/.blindrelay/">Open the player page</a></p></body></html>`;
  return new Response(page, { status: 502, headers: { "Content-Type": "text/html; charset=utf-8", ...csp } });
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

