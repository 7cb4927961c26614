/**
 * `/.blindrelay/ws.js`, the script the service worker puts first in each page of
 * the host's it tunnels (src/inject.ts): it replaces the page's `WebSocket` with
 * one that carries sockets to the page's own origin through an end-to-end session
 * (src/hostsocket.ts), and leaves every other socket to the browser.
 *
 * Its sessions are opened as the page's player opens them: with the ticket and
 * player key the page left in IndexedDB, WebTransport first, WebSocket to the
 * relay (the browser's own, kept before it was replaced) otherwise. The handshake
 * carries the tunnel's `Cookie` header for the socket's path, read from the jar the
 * worker saved; a `Set-Cookie` on the handshake's answer is not kept (the worker
 * owns the jar).
 */

import { CookieJar } from "./cookies.js";
import { type HostSocketEnvironment, type WebSocketConstructor, tunnelledWebSocket } from "./hostsocket.js";
import { SessionError } from "./session.js";
import { loadCookies, loadStaticKey, loadTicket, loadTransport } from "./store.js";
import { parseTicket } from "./ticket.js";
import { RelayTransports } from "./transport.js";

const INSTALLED = Symbol.for("blindrelay.hostsocket");

install();

function install(): void {
  const scope = globalThis as unknown as { WebSocket?: WebSocketConstructor; [INSTALLED]?: boolean };
  const Native = scope.WebSocket;
  if (Native === undefined || scope[INSTALLED] === true) return;
  scope[INSTALLED] = true;
  let transports: Promise<{ transports: RelayTransports; hostId: Uint8Array; key: NonNullable<Awaited<ReturnType<typeof loadStaticKey>>> }> | undefined;
  const env: HostSocketEnvironment = {
    origin: location.origin,
    baseUrl: () => document.baseURI,
    userAgent: navigator.userAgent,
    open: async () => {
      transports ??= (async () => {
        const [ticketText, key, setting] = await Promise.all([loadTicket(), loadStaticKey(), loadTransport()]);
        if (ticketText === undefined || key === undefined) throw new SessionError("refused", "this browser has no ticket for the host yet");
        return { transports: new RelayTransports({ origin: location.origin, setting }), hostId: parseTicket(ticketText).hostId, key };
      })();
      let t;
      try {
        t = await transports;
      } catch (err) {
        transports = undefined;
        throw err;
      }
      // The relay's own WebSocket must be the browser's, not this module's.
      return t.transports.connect({ hostId: t.hostId, playerSecret: t.key, openWebSocket: (url) => new Native(url) });
    },
    cookie: async (url) => {
      const now = Date.now();
      // A socket opened by a page of this origin, which no other origin may frame: same-site, as the worker judges a page's own fetch.
      return new CookieJar(await loadCookies(), now).cookieHeader({ url, method: "GET", sameSite: true, topLevelNavigation: false }, now);
    },
  };
  scope.WebSocket = tunnelledWebSocket(Native, env);
}
