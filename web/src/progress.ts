/**
 * What the player page says, in one table: each state's words and what a person
 * does about it, the steps of getting in, and when the page asks a host that
 * refused it again. No DOM here, so that tests read the same words and drive the
 * schedule on a clock of their own.
 *
 * ```text
 * reaching the relay ──> waiting for the host ──> asking the host ──> playing
 *   (WebTransport,         (the relay looks it      (the host reads      (service worker
 *    or WebSocket)          up and opens a stream)   the hello, decides)  started, on to /)
 * ```
 */

import { ErrorCode } from "./codes.js";
import type { SessionError, TransportName } from "./session.js";

/** What the page is showing; `data-state` on `<body>`, for people's stylesheets and for tests. */
export type PageState =
  | "loading"
  | "no-ticket"
  | "bad-ticket"
  | "connecting"
  | "not-authorized"
  | "host-offline"
  | "busy"
  | "redirected"
  | "relay-unreachable"
  | "failed"
  | "no-service-worker"
  | "starting"
  | "playing";

/** A state's words: the headline, and what to do about it (empty where nothing is to be done). */
export interface StateWords {
  readonly status: string;
  readonly todo: string;
}

/**
 * Every state's words. The failures say what a person does next, as the table in
 * README's "Watch in a browser" does (test/progress.test.mjs holds the headlines
 * the same).
 */
export const STATE_WORDS: Readonly<Record<PageState, StateWords>> = {
  loading: { status: "Loading…", todo: "" },
  "no-ticket": {
    status: "No ticket.",
    todo: "Open the link the host's owner shared: it ends with #brt… and carries the ticket.",
  },
  "bad-ticket": {
    status: "This link's ticket cannot be read.",
    todo: "Ask the host's owner to send the link again: it may have been cut short on the way.",
  },
  connecting: { status: "Connecting…", todo: "" },
  "not-authorized": {
    status: "The host does not serve this browser yet.",
    todo:
      "Send the player key below to the host's owner (Copy or Share, or let them scan the code). " +
      "Once they add it, this page gets in by itself.",
  },
  "host-offline": {
    status: "The host is offline.",
    todo: "The relay has no connection from this host now. Ask its owner to start it (or to switch Enable Relay on), then try again.",
  },
  busy: {
    status: "The relay or the host is busy.",
    todo: "Wait a minute, then try again.",
  },
  redirected: {
    status: "The relay's pool could not take the page to this host.",
    todo: "The relay sent the page on to the relay of its pool that holds the host, which could not be reached. Try again; if it goes on, tell the host's owner what the page says here.",
  },
  "relay-unreachable": {
    status: "The relay cannot be reached.",
    todo: "Check that this device is online (Wi-Fi or mobile data), then try again. If it goes on, the relay may be down: tell the host's owner.",
  },
  failed: {
    status: "The host could not be reached.",
    todo: "Try again; if it goes on, tell the host's owner what the page says here.",
  },
  "no-service-worker": {
    status: "This browser cannot run the player here.",
    todo: "It gives this page no service worker (a private window may not): open the link in a normal window.",
  },
  starting: { status: "Starting the player…", todo: "" },
  playing: { status: "Playing: opening the host's page…", todo: "" },
};

/** The page's state after a session that failed with `error`, while setting up. */
export function stateOfError(error: SessionError): PageState {
  switch (error.kind) {
    case "not-authorized":
      return "not-authorized";
    // The relay paired the session with a host connection that was just then going away.
    case "host-left":
      return "host-offline";
    case "redirected":
      return "redirected";
    case "connection":
    case "timeout":
      return "relay-unreachable";
    case "relay-refused":
      switch (error.code) {
        case ErrorCode.HostOffline:
        case ErrorCode.HostUnreachable:
          return "host-offline";
        case ErrorCode.AtCapacity:
        case ErrorCode.RateLimited:
        case ErrorCode.HostBusy:
          return "busy";
        default:
          return "failed";
      }
    default:
      return "failed";
  }
}

/** The four steps of getting in, in order, as the page lists them. */
export const STEPS = ["relay", "host", "verdict", "playing"] as const;
export type Step = (typeof STEPS)[number];

/** A step in words, while it is under way. */
export function stepWords(step: Step, transport: TransportName | undefined): string {
  switch (step) {
    case "relay":
      return transport === undefined ? "Reaching the relay…" : `Reaching the relay over ${transportName(transport)}…`;
    case "host":
      return "Waiting for the host…";
    case "verdict":
      return "Asking the host to let this browser in…";
    case "playing":
      return "Playing: opening the host's page…";
  }
}

/** A transport's name as people read it. */
export function transportName(transport: TransportName): string {
  return transport === "webtransport" ? "WebTransport" : "WebSocket";
}

/**
 * When a page refused by its host asks again: every `everyMs`, for `forMs` after the
 * refusal or after the person last handed the key on (Copy, Share), whichever is
 * later. Owners add a key within minutes or not that day; a page left open asks
 * no more than a person pressing "Try again" would, and then stops.
 */
export class RetrySchedule {
  private until: number;
  private next: number;

  constructor(
    now: number,
    private readonly everyMs = 5_000,
    private readonly forMs = 10 * 60_000,
  ) {
    this.until = now + forMs;
    this.next = now + everyMs;
  }

  /** The key was handed on (the owner is being asked now): ask for a while longer. */
  extend(now: number): void {
    this.until = Math.max(this.until, now + this.forMs);
  }

  /** Whole seconds to the next try (at least 1 while one is to come); `undefined` once the page has stopped asking. */
  secondsLeft(now: number): number | undefined {
    if (this.next > this.until) return undefined;
    return Math.max(1, Math.ceil((this.next - now) / 1000));
  }

  /** Whether a try is due now. */
  due(now: number): boolean {
    return this.next <= this.until && now >= this.next;
  }

  /** A try ended in another refusal at `now`: the next one is `everyMs` later. */
  refusedAgain(now: number): void {
    this.next = now + this.everyMs;
  }
}

/** The countdown line: when the page asks again, or that it stopped. */
export function countdownWords(secondsLeft: number | undefined): string {
  return secondsLeft === undefined
    ? "The page stopped asking the host. Press Try again once the key has been added."
    : `Asking the host again in ${secondsLeft} s…`;
}
