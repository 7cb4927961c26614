/**
 * The player page, `/.blindrelay/` on a host's origin: takes the ticket from the
 * link's fragment (which never reaches the relay's HTTP server) and removes it from
 * the address bar, keeps it and the player's static key in IndexedDB, shows the
 * player key (in groups, with Copy, Share where the browser has it, and a QR code),
 * checks that the host serves this player, saying each step in words, installs the
 * service worker that tunnels the origin's requests, and hands the tab to the
 * host's web app at `/`. Refused by the host, it asks again by itself for a while,
 * with a countdown, so that the person who handed the key on need not come back to
 * press a button.
 *
 * Loaded as a module script from the page's own origin, with its stylesheet: no
 * inline script or style, so the relay can serve it under a Content-Security-Policy
 * of 'self'.
 */

import { keyText } from "./keys.js";
import { hostIdOfHostname, hostnameFor } from "./origin.js";
import {
  type PageState,
  RetrySchedule,
  STATE_WORDS,
  STEPS,
  type Step,
  countdownWords,
  stateOfError,
  stepWords,
} from "./progress.js";
import { qrDrawing } from "./qr.js";
import { SessionError, type TransportName } from "./session.js";
import { loadOrCreateStaticKey, loadTicket, loadTransport, saveTicket, saveTransport } from "./store.js";
import { TicketError, parseTicket } from "./ticket.js";
import { RelayTransports, type TransportSetting } from "./transport.js";

export * from "./index.js";

/** Shows `state` with its words; `more` follows what to do (an error's own words). */
function show(state: PageState, more = ""): void {
  document.body.dataset["state"] = state;
  const words = STATE_WORDS[state];
  text("status", words.status);
  text("detail", [words.todo, more].filter((part) => part !== "").join(" "));
}

function text(id: string, value: string): void {
  const el = document.getElementById(id);
  if (el !== null) el.textContent = value;
}

function reveal(id: string, visible: boolean): void {
  const el = document.getElementById(id);
  if (el !== null) el.hidden = !visible;
}

/** Shows `step` under way: the steps before it done, it current, and in words. */
function showStep(step: Step, transport: TransportName | undefined): void {
  markSteps(step, false);
  document.body.dataset["state"] = step === "playing" ? "playing" : "connecting";
  text("status", stepWords(step, transport));
  text("detail", "");
}

/** Marks the steps before `step` done and `step` current, or failed. */
function markSteps(step: Step, failed: boolean): void {
  reveal("steps", true);
  const at = STEPS.indexOf(step);
  for (const li of document.querySelectorAll<HTMLElement>("#steps li")) {
    const index = STEPS.indexOf(li.dataset["step"] as Step);
    li.classList.toggle("done", index < at);
    li.classList.toggle("failed", failed && index === at);
    if (index === at && !failed) li.setAttribute("aria-current", "step");
    else li.removeAttribute("aria-current");
  }
  document.body.dataset["step"] = step;
}

/** The step a failure most likely stopped at, where the page did not see the steps. */
function failedStep(state: PageState): Step {
  switch (state) {
    case "not-authorized":
      return "verdict";
    case "host-offline":
    case "busy":
    case "redirected":
      return "host";
    case "no-service-worker":
      return "playing";
    default:
      return "relay";
  }
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
    show("no-ticket");
    return;
  }
  let hostId: Uint8Array;
  try {
    hostId = parseTicket(ticketText).hostId;
  } catch (err) {
    show("bad-ticket", err instanceof TicketError ? err.message : String(err));
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
  const playerKey = keyText(key.publicKey);
  let schedule: RetrySchedule | undefined;
  let ticker: ReturnType<typeof setInterval> | undefined;
  // The key was handed on: the owner is being asked now, so the page asks the host
  // for longer (again, if it had stopped).
  showKey(playerKey, () => {
    if (schedule === undefined) return;
    schedule.extend(Date.now());
    ticker ??= setInterval(tick, 250);
  });
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

  let running = false;
  const stopAsking = () => {
    clearInterval(ticker);
    ticker = undefined;
    schedule = undefined;
    reveal("countdown", false);
  };
  // `quiet`: a try of the countdown, which leaves the refusal on screen unless the answer changes.
  const attempt = async (quiet: boolean) => {
    if (running) return;
    running = true;
    if (!quiet) stopAsking();
    else text("countdown", "Asking the host now…");
    try {
      const outcome = await probe(transports, hostId, key, quiet);
      sayTransport();
      // The service worker opens its own sessions; this page's WebTransport session is done.
      transports.close();
      if (outcome === "served") {
        stopAsking();
        reveal("retry", false);
        await start(await transports.poolMembers());
        return;
      }
      showFailure(outcome.state, outcome.more, outcome.at);
      if (outcome.state !== "not-authorized") {
        stopAsking();
        return;
      }
      if (schedule === undefined) schedule = new RetrySchedule(Date.now());
      else schedule.refusedAgain(Date.now());
      ticker ??= setInterval(tick, 250);
    } finally {
      running = false;
    }
    tick();
  };
  function tick(): void {
    if (schedule === undefined) return;
    const now = Date.now();
    if (schedule.due(now)) {
      void attempt(true);
      return;
    }
    if (running) return;
    const left = schedule.secondsLeft(now);
    reveal("countdown", true);
    text("countdown", countdownWords(left));
    if (left === undefined) {
      clearInterval(ticker);
      ticker = undefined;
    }
  }
  document.getElementById("retry")?.addEventListener("click", () => void attempt(false));
  await attempt(false);
}

/** Shows a failure: its words, the step it stopped at (`at`, where the page saw it), and "Try again". */
function showFailure(state: PageState, more: string, at?: Step): void {
  show(state, more);
  markSteps(at ?? failedStep(state), true);
  reveal("retry", true);
}

/**
 * Shows the player key in groups of four (the text has no spaces: selecting it
 * whole copies the key exactly), with Copy, Share where the browser can, and a QR
 * code; `handedOn` runs when the key was copied or shared.
 */
function showKey(playerKey: string, handedOn: () => void): void {
  const el = document.getElementById("player-key");
  if (el !== null) {
    el.replaceChildren(
      ...keyGroups(playerKey).map((group) => {
        const span = document.createElement("span");
        span.textContent = group;
        return span;
      }),
    );
  }
  document.getElementById("key-qr")?.replaceChildren(qrSvg(playerKey, "This browser's player key as a QR code"));
  reveal("key-section", true);

  document.getElementById("copy")?.addEventListener("click", () => {
    void copyText(playerKey, el).then((copied) => {
      text("handed", copied ? "Copied. Send it to the host's owner." : "Selected: copy it with your browser's menu.");
      if (copied) handedOn();
    });
  });
  const share = (navigator as Partial<Navigator>).share;
  if (typeof share === "function") {
    const button = document.getElementById("share");
    if (button !== null) button.hidden = false;
    button?.addEventListener("click", () => {
      // The panel reads a key after the label `blindrelay connect` prints, too.
      navigator.share({ title: "blindrelay player key", text: `player key: ${playerKey}` }).then(
        () => {
          text("handed", "Shared. The page gets in once the owner adds the key.");
          handedOn();
        },
        // Closing the share sheet is not a failure to report.
        () => {},
      );
    });
  }
}

/** `key` in groups of four characters, as people read it aloud and compare it. */
export function keyGroups(key: string): string[] {
  return key.match(/.{1,4}/g) ?? [];
}

/** Puts `value` on the clipboard: `true`; where the page may not, selects `fallback`'s text: `false`. */
async function copyText(value: string, fallback: HTMLElement | null): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(value);
    return true;
  } catch {
    if (fallback !== null) {
      const range = document.createRange();
      range.selectNodeContents(fallback);
      const selection = getSelection();
      selection?.removeAllRanges();
      selection?.addRange(range);
    }
    return false;
  }
}

/** `value` as a QR code: an SVG made with DOM calls (the CSP allows no markup strings nor `data:` images). */
function qrSvg(value: string, label: string): SVGSVGElement {
  const ns = "http://www.w3.org/2000/svg";
  const drawing = qrDrawing(value);
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${drawing.size} ${drawing.size}`);
  svg.setAttribute("width", String(drawing.size * 6));
  svg.setAttribute("height", String(drawing.size * 6));
  svg.setAttribute("shape-rendering", "crispEdges");
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  const background = document.createElementNS(ns, "rect");
  background.setAttribute("width", "100%");
  background.setAttribute("height", "100%");
  background.setAttribute("fill", "#ffffff");
  const modules = document.createElementNS(ns, "path");
  modules.setAttribute("d", drawing.path);
  modules.setAttribute("fill", "#000000");
  svg.append(background, modules);
  return svg;
}

/** What one check of the host came to: served, or the state to show and the error's words. */
type ProbeOutcome = "served" | { readonly state: PageState; readonly more: string; readonly at: Step };

/**
 * Opens one session to see that the host serves this player, showing each step
 * unless `quiet` (a try of the countdown, which leaves the refusal on screen).
 */
async function probe(
  transports: RelayTransports,
  hostId: Uint8Array,
  key: Awaited<ReturnType<typeof loadOrCreateStaticKey>>,
  quiet: boolean,
): Promise<ProbeOutcome> {
  if (!quiet) showStep("relay", transports.preferred());
  // Where a failure stopped: a relay that took the stream and never answered is
  // marked at the host's step, not the relay's.
  let at: Step = "relay";
  try {
    const session = await transports.connect({
      hostId,
      playerSecret: key,
      onStep: (step) => {
        at = step.step;
        if (!quiet) showStep(step.step, step.transport);
      },
    });
    await session.writable.close().catch(() => {});
    session.abort();
    return "served";
  } catch (err) {
    const error = err instanceof SessionError ? err : new SessionError("connection", String(err));
    const state = stateOfError(error);
    // The refusal's words are the page's own; the others add what the browser or relay said.
    const more = state === "not-authorized" || state === "host-offline" ? "" : `(${error.message})`;
    return { state, more, at };
  }
}

/** How the page reaches the relay, in words: what the link asked for and what the last session used. */
function transportWords(setting: TransportSetting, transports: RelayTransports): string {
  const member = transports.poolMember();
  // In a pool, the member the relay sent the page to.
  const where = member === undefined ? "" : `, to ${member} of the relay's pool`;
  if (setting === "websocket") return `WebSocket (set by the link)${where}`;
  const failed = transports.webTransportFailure;
  switch (transports.lastUsed) {
    case "webtransport":
      return `WebTransport${where}`;
    case "websocket":
      // A pool trusted by pin: each member's WebTransport certificate is its own.
      if (failed === undefined && member !== undefined) return `WebSocket${where}`;
      return `WebSocket (WebTransport failed: ${failed ?? "unknown"})${where}`;
    default:
      return "WebTransport, or WebSocket where it fails";
  }
}

/** How long the browser gets to start the service worker before the page says it did not. */
export const SERVICE_WORKER_PATIENCE_MS = 10_000;

/**
 * The service worker's script URL for a relay that lets the page reach pool
 * `members`: `sw.js`, with the list in its query in a pool. A worker's
 * Content-Security-Policy is the one its script came with, and a browser keeps a
 * worker whose script did not change: a new list is a new script URL, so the
 * browser installs a worker with the relay's policy of now (a member that joined
 * the pool and took the host is one the old worker could not reach). The relay
 * serves `sw.js` whatever the query.
 */
export function serviceWorkerScript(members: readonly string[]): string {
  return members.length === 0 ? "/.blindrelay/sw.js" : `/.blindrelay/sw.js?pool=${encodeURIComponent(members.join(","))}`;
}

/**
 * Installs the service worker for the whole origin and waits until it controls the
 * page: `"started"`, or why not (the browser's error, or `"timeout"` when it never
 * started, which is what Chromium does on a site whose certificate it does not
 * trust: no error reaches the page, only the console).
 */
export async function startServiceWorker(
  container: ServiceWorkerContainer,
  patienceMs = SERVICE_WORKER_PATIENCE_MS,
  script = serviceWorkerScript([]),
): Promise<"started" | "timeout" | Error> {
  const controlled = new Promise<void>((resolve) => {
    if (container.controller !== null) resolve();
    else container.addEventListener("controllerchange", () => resolve(), { once: true });
  });
  const starting = (async (): Promise<"started"> => {
    const registration = await container.register(script, { scope: "/", updateViaCache: "none" });
    // A worker in control and a new one coming (a new script URL: the pool's list
    // changed): the page hands over once the new one is active, so that the host's
    // page is not loaded through the old one.
    const incoming = registration.installing ?? registration.waiting;
    if (incoming !== null && container.controller !== null) await activated(incoming);
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

/** Resolves once `worker` is active, or was replaced (then the one after it is, or failed to install). */
function activated(worker: ServiceWorker): Promise<void> {
  return new Promise((resolve) => {
    const check = () => {
      if (worker.state === "activated" || worker.state === "redundant") resolve();
    };
    worker.addEventListener("statechange", check);
    check();
  });
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

/**
 * Installs the service worker for the whole origin and hands over to the host's
 * web app; `members` are the pool members the relay lets the page reach.
 */
async function start(members: readonly string[]): Promise<void> {
  const container = navigator.serviceWorker as ServiceWorkerContainer | undefined;
  if (container === undefined) {
    showFailure("no-service-worker", "");
    return;
  }
  markSteps("playing", false);
  show("starting");
  const outcome = await startServiceWorker(container, SERVICE_WORKER_PATIENCE_MS, serviceWorkerScript(members));
  if (outcome === "started") {
    showStep("playing", undefined);
    location.replace("/");
    return;
  }
  showFailure("no-service-worker", "");
  // The browser's refusal, and what to do about a certificate it does not trust.
  text("status", "The browser did not start the player.");
  text("detail", serviceWorkerRefusedWords(outcome));
}

// Only as the player page: a module imported elsewhere (a test, a benchmark, a
// host's page) gets the exports and nothing runs.
if (typeof document !== "undefined" && location.pathname.startsWith("/.blindrelay/")) {
  // A share link opened in a tab already on this page changes only the fragment,
  // which loads nothing: start again with the link's ticket.
  window.addEventListener("hashchange", () => location.reload());
  main().catch((err: unknown) => {
    showFailure("failed", err instanceof Error ? err.message : String(err));
    text("status", "The player stopped.");
  });
}
