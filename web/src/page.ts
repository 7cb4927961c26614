/**
 * The player page, `/.blindrelay/` on a host's origin: takes the ticket from the
 * link's fragment (which never reaches the relay's HTTP server) and removes it from
 * the address bar, keeps it and the player's static key in IndexedDB, shows the
 * player key, checks once that the host serves this player, installs the service
 * worker that tunnels the origin's requests, and hands the tab to the host's web
 * app at `/`.
 *
 * Loaded as a module script from the page's own origin: no inline script or
 * style, so the relay can serve it under a Content-Security-Policy of 'self'.
 */

import { ErrorCode } from "./codes.js";
import { keyText } from "./keys.js";
import { hostIdOfHostname, hostnameFor } from "./origin.js";
import { SessionError } from "./session.js";
import { loadOrCreateStaticKey, loadTicket, loadTransport, saveTicket, saveTransport } from "./store.js";
import { TicketError, parseTicket } from "./ticket.js";
import { RelayTransports, type TransportSetting } from "./transport.js";

export * from "./index.js";

/** What the page is showing; `data-state` on `<body>`, for people's stylesheets and for tests. */
type PageState =
  | "loading"
  | "no-ticket"
  | "bad-ticket"
  | "connecting"
  | "not-authorized"
  | "host-offline"
  | "redirected"
  | "relay-unreachable"
  | "failed"
  | "no-service-worker"
  | "starting";

function show(state: PageState, status: string, detail = ""): void {
  document.body.dataset["state"] = state;
  text("status", status);
  text("detail", detail);
}

function text(id: string, value: string): void {
  const el = document.getElementById(id);
  if (el !== null) el.textContent = value;
}

function reveal(id: string, visible: boolean): void {
  const el = document.getElementById(id);
  if (el !== null) el.hidden = !visible;
}

async function main(): Promise<void> {
  const params = new URLSearchParams(location.search);
  const wanted = params.get("transport");
  if (wanted === "websocket" || wanted === "auto") await saveTransport(wanted);

  // The ticket rides in the fragment so that no HTTP server sees it; once read it
  // leaves the address bar, the history entry and anything a person copies from it.
  const fromLink = decodeURIComponent(location.hash.slice(1)).trim();
  if (fromLink !== "") history.replaceState(null, "", location.pathname + location.search);
  const ticketText = fromLink !== "" ? fromLink : await loadTicket();
  if (ticketText === undefined) {
    show("no-ticket", "No ticket.", "Open the link the host's owner shared: it ends with #brt… and carries the ticket.");
    return;
  }
  let hostId: Uint8Array;
  try {
    hostId = parseTicket(ticketText).hostId;
  } catch (err) {
    show("bad-ticket", "This link's ticket cannot be read.", err instanceof TicketError ? err.message : String(err));
    return;
  }
  const here = hostIdOfHostname(location.hostname);
  if (here === undefined || keyText(here) !== keyText(hostId)) {
    // Every host has its own origin; a ticket opened on another one moves there.
    const target = new URL(location.href);
    target.hostname = hostnameFor(hostId, location.hostname);
    target.hash = ticketText;
    location.replace(target.href);
    return;
  }
  await saveTicket(ticketText);

  const key = await loadOrCreateStaticKey();
  text("player-key", keyText(key.publicKey));
  reveal("key-section", true);
  const setting = await loadTransport();
  const keptHow =
    key.kind === "webcrypto" ? "by WebCrypto, not readable by scripts" : "as bytes (this browser has no X25519 in WebCrypto)";
  const transports = new RelayTransports({ origin: location.origin, setting });
  const sayTransport = () => {
    const used = transports.lastUsed;
    if (used !== undefined) document.body.dataset["transport"] = used;
    text("transport", `Transport: ${transportWords(setting, transports)}; key kept ${keptHow}.`);
  };
  sayTransport();

  const retry = document.getElementById("retry");
  let running = false;
  const attempt = async () => {
    if (running) return;
    running = true;
    reveal("retry", false);
    try {
      const served = await probe(transports, hostId, key);
      sayTransport();
      // The service worker opens its own sessions; this page's WebTransport session is done.
      transports.close();
      if (served) await start();
    } finally {
      running = false;
    }
  };
  retry?.addEventListener("click", () => void attempt());
  await attempt();
}

/** Opens one session to see that the host serves this player; says why not where it does not. */
async function probe(
  transports: RelayTransports,
  hostId: Uint8Array,
  key: Awaited<ReturnType<typeof loadOrCreateStaticKey>>,
): Promise<boolean> {
  show("connecting", "Connecting to the host through the relay…");
  try {
    const session = await transports.connect({ hostId, playerSecret: key });
    await session.writable.close().catch(() => {});
    session.abort();
    return true;
  } catch (err) {
    const error = err instanceof SessionError ? err : new SessionError("connection", String(err));
    if (error.kind === "not-authorized") {
      show(
        "not-authorized",
        "The host does not serve this browser yet.",
        "Ask the host's owner to add the player key below to the host's authorized players, then try again.",
      );
    } else if (
      (error.kind === "relay-refused" && (error.code === ErrorCode.HostOffline || error.code === ErrorCode.HostUnreachable)) ||
      // The relay paired the session with a host connection that was just then going away.
      error.kind === "host-left"
    ) {
      show("host-offline", "The host is offline.", "The relay has no connection from this host now. Try again when its owner has it running.");
    } else if (error.kind === "redirected") {
      show(
        "redirected",
        "This relay is part of a pool and does not hold this host.",
        `${error.message}. This page cannot follow the relay there yet: ask the host's owner for a link to that relay.`,
      );
    } else if (error.kind === "connection" || error.kind === "timeout") {
      show("relay-unreachable", "The relay cannot be reached.", error.message);
    } else {
      show("failed", "The host could not be reached.", error.message);
    }
    reveal("retry", true);
    return false;
  }
}

/** How the page reaches the relay, in words: what the link asked for and what the last session used. */
function transportWords(setting: TransportSetting, transports: RelayTransports): string {
  if (setting === "websocket") return "WebSocket (set by the link)";
  const failed = transports.webTransportFailure;
  switch (transports.lastUsed) {
    case "webtransport":
      return "WebTransport";
    case "websocket":
      return `WebSocket (WebTransport failed: ${failed ?? "unknown"})`;
    default:
      return "WebTransport, or WebSocket where it fails";
  }
}

/** How long the browser gets to start the service worker before the page says it did not. */
export const SERVICE_WORKER_PATIENCE_MS = 10_000;

/**
 * Installs the service worker for the whole origin and waits until it controls the
 * page: `"started"`, or why not (the browser's error, or `"timeout"` when it never
 * started, which is what Chromium does on a site whose certificate it does not
 * trust: no error reaches the page, only the console).
 */
export async function startServiceWorker(
  container: ServiceWorkerContainer,
  patienceMs = SERVICE_WORKER_PATIENCE_MS,
): Promise<"started" | "timeout" | Error> {
  const controlled = new Promise<void>((resolve) => {
    if (container.controller !== null) resolve();
    else container.addEventListener("controllerchange", () => resolve(), { once: true });
  });
  const starting = (async (): Promise<"started"> => {
    const registration = await container.register("/.blindrelay/sw.js", { scope: "/", updateViaCache: "none" });
    await container.ready;
    // A worker already in control may hold a previous ticket's sessions.
    (container.controller ?? registration.active)?.postMessage({ type: "reload" });
    await controlled;
    return "started";
  })().catch((err: unknown) => (err instanceof Error ? err : new Error(String(err))));
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<"timeout">((resolve) => {
    timer = setTimeout(() => resolve("timeout"), patienceMs);
  });
  try {
    return await Promise.race([starting, late]);
  } finally {
    clearTimeout(timer);
  }
}

/** What to do when the browser would not start the player's service worker. */
export function serviceWorkerRefusedWords(outcome: "timeout" | Error): string {
  const why = outcome === "timeout" ? "It gave no reason in " + SERVICE_WORKER_PATIENCE_MS / 1000 + " s." : `It said: ${outcome.message}`;
  return (
    `${why} Browsers run the player only on a site whose certificate they trust, and a development ` +
    "relay's own certificate is not: use a relay with a certificate from a CA, or start Chromium with " +
    "--ignore-certificate-errors-spki-list=<the hash of the relay's key> (blindrelay demo prints the whole command), " +
    "not by clicking past the browser's warning."
  );
}

/** Installs the service worker for the whole origin and hands over to the host's web app. */
async function start(): Promise<void> {
  const container = navigator.serviceWorker as ServiceWorkerContainer | undefined;
  if (container === undefined) {
    show("no-service-worker", "This browser cannot run the player here.", "It gives this page no service worker (a private window may not).");
    return;
  }
  show("starting", "Starting the player…");
  const outcome = await startServiceWorker(container);
  if (outcome === "started") {
    location.replace("/");
    return;
  }
  show("no-service-worker", "The browser did not start the player.", serviceWorkerRefusedWords(outcome));
}

// Only as the player page: a module imported elsewhere (a test, a benchmark, a
// host's page) gets the exports and nothing runs.
if (typeof document !== "undefined" && location.pathname.startsWith("/.blindrelay/")) {
  // A share link opened in a tab already on this page changes only the fragment,
  // which loads nothing: start again with the link's ticket.
  window.addEventListener("hashchange", () => location.reload());
  main().catch((err: unknown) => {
    show("failed", "The player stopped.", err instanceof Error ? err.message : String(err));
  });
}
