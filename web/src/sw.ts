/**
 * The service worker, `/.blindrelay/sw.js` with scope `/`: every request of the
 * pages on this origin, except the player's own files and the relay's WebSocket,
 * goes to the host through the HTTP tunnel, end to end; the relay sees only
 * ciphertext.
 *
 * The ticket and the player's key come from IndexedDB, where the page left them.
 * When the tunnel cannot be opened (no ticket, a host that does not serve this
 * player, the host offline), a navigation gets a short page that says so and
 * links back to the player page.
 */

import { SessionError } from "./session.js";
import { loadStaticKey, loadTicket, loadTransport } from "./store.js";
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
  readonly clients: { claim(): Promise<void> };
}
interface ExtendableEvent {
  waitUntil(work: Promise<unknown>): void;
}
interface FetchEvent extends ExtendableEvent {
  readonly request: Request;
  respondWith(response: Promise<Response>): void;
}

const scope = self as unknown as WorkerScope;

/** The most of a request body the worker holds to send it (an upload to a media server's API). */
const MAX_REQUEST_BODY = 64 * 1024 * 1024;

let tunnel: Promise<{ tunnel: Tunnel; transports: RelayTransports }> | undefined;

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
  event.respondWith(tunnelled(event.request, url));
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

async function tunnelled(request: Request, url: URL): Promise<Response> {
  try {
    let body: Uint8Array | undefined;
    if (request.method !== "GET" && request.method !== "HEAD") {
      const buffer = await request.arrayBuffer();
      if (buffer.byteLength > MAX_REQUEST_BODY) return new Response("request body too large for the tunnel\n", { status: 413 });
      body = new Uint8Array(buffer);
    }
    const t = await currentTunnel();
    const response = await t.fetch({
      method: request.method,
      target: url.pathname + url.search,
      host: url.host,
      headers: request.headers.entries(),
      ...(body !== undefined ? { body } : {}),
    });
    if (response.status < 200 || response.status > 599) throw new SessionError("protocol", `the host answered status ${response.status}`);
    const headers = new Headers();
    for (const [name, value] of response.headers) {
      try {
        headers.append(name, value);
      } catch {
        // A header the Fetch API refuses (a bad value) is left out, not the response.
      }
    }
    return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
  } catch (err) {
    return failure(request, err);
  }
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
  if (request.mode !== "navigate") return new Response(`${why}\n`, { status: 502, headers: { "Content-Type": "text/plain; charset=utf-8" } });
  const page =
    `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>blindrelay: host not reached</title></head>` +
    `<body><h1>Host not reached</h1><p>${escapeHtml(why)}</p><p><a href="/.blindrelay/">Open the player page</a></p></body></html>`;
  return new Response(page, { status: 502, headers: { "Content-Type": "text/html; charset=utf-8" } });
}

function escapeHtml(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

