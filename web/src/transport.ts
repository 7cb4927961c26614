/**
 * Which way the page's sessions reach the relay (PROTOCOL.md section 19):
 * WebTransport first, on one WebTransport session shared by all of them (each
 * player session is a stream of it); WebSocket, one per session, where the browser
 * has no WebTransport, where it fails, or where the link said `?transport=websocket`.
 *
 * Where WebTransport goes, and which certificates it may accept there, the relay
 * says in `/.blindrelay/webtransport.json` on the page's own origin: a relay trusted
 * by pin lists the SHA-256 digests of its short-lived certificates
 * (`serverCertificateHashes`), one with a CA's certificate lists none. After a
 * failure the page uses WebSocket for a while before it tries WebTransport again,
 * as the reference player does after QUIC failed (section 17.7).
 */

import { decodeBase64 } from "./bytes.js";
import { SessionError, withDeadline } from "./link.js";
import { type ConnectOptions, type PlayerSession, type Route, type TransportName, connectPlayer } from "./session.js";
import type { TransportSetting } from "./store.js";
import { type WebTransportLike, keepAlive } from "./webtransport.js";

export type { TransportSetting };

/** The relay's `webtransport.json` (section 19.2). */
export interface WebTransportInfo {
  readonly url: string;
  readonly serverCertificateHashes: readonly { readonly algorithm: string; readonly value: string }[];
}

/** Options of {@link RelayTransports}. */
export interface RelayTransportsOptions {
  /** The page's origin, `https://<host id>.<relay name>:<port>`. */
  readonly origin: string;
  readonly setting: TransportSetting;
  /** Reads `webtransport.json`; by default, with `fetch` on the page's origin. */
  readonly fetchInfo?: () => Promise<unknown>;
  /** Makes a WebTransport session; by default the browser's `WebTransport`, where it has one. */
  readonly openWebTransport?: (url: string, options: WebTransportOptions) => WebTransportLike;
  /** Time for the WebTransport session to become ready, in ms. */
  readonly readyTimeoutMs?: number;
  /** How long WebSocket is used after WebTransport failed, in ms. */
  readonly retryAfterMs?: number;
  /** A keep-alive datagram on the WebTransport session this often, in ms (2 s; 0: none). */
  readonly keepAliveMs?: number;
}

/** A session and the way it reaches the relay. */
export type ConnectBase = Omit<ConnectOptions, "webTransport" | "url" | "reroute">;

/** Where WebTransport is, for QUIC's handshake on loopback or across the world; past it, WebSocket. */
const READY_TIMEOUT_MS = 5000;
/** The keep-alive datagram's interval, as the reference player's keep-alive: 2 s. */
const KEEP_ALIVE_MS = 2000;

/** As the reference player after a failed QUIC: the other way for the next minute. */
const RETRY_AFTER_MS = 60_000;

/** The page's ways to the relay, and which one its sessions take. */
export class RelayTransports {
  private current: Promise<WebTransportLike> | undefined;
  private downUntil = 0;
  /** Why the last WebTransport attempt failed, for the page to show; `undefined` when none did. */
  webTransportFailure: string | undefined;
  /** The transport of the last session attempt, whatever became of it. */
  lastUsed: TransportName | undefined;

  constructor(private readonly options: RelayTransportsOptions) {}

  /** The WebSocket address on the page's origin. */
  webSocketUrl(): string {
    return `wss://${new URL(this.options.origin).host}/blindrelay/1`;
  }

  /**
   * Opens a player session: on the WebTransport session where it can be had, else
   * over a WebSocket. A WebTransport session that was open but cannot carry a new
   * stream (the relay closed it while idle, the network changed) is opened again
   * once; one that cannot be opened, or whose new stream fails too, sends this
   * session and the next minute's to WebSocket. A refusal from the relay or the
   * host is an answer, and is not retried. A resumable session's resume attempts
   * choose their way the same way ({@link RelayTransports.rerouter}).
   */
  async connect(base: ConnectBase): Promise<PlayerSession> {
    const reroute = this.rerouter();
    for (let attempt = 0; attempt < 2 && this.preferred() === "webtransport"; attempt++) {
      const reused = this.current !== undefined;
      // Reading webtransport.json and QUIC's handshake come before the stream's own set-up.
      base.onStep?.({ step: "relay", transport: "webtransport" });
      let webTransport: WebTransportLike;
      try {
        webTransport = await this.webTransport();
      } catch (err) {
        this.markDown(err);
        break;
      }
      this.lastUsed = "webtransport";
      try {
        return await connectPlayer({ ...base, webTransport, reroute });
      } catch (err) {
        if (!(err instanceof SessionError) || err.kind !== "connection") throw err;
        if (reused && attempt === 0) {
          this.close();
          continue;
        }
        this.markDown(err);
      }
    }
    this.lastUsed = "websocket";
    return connectPlayer({ ...base, url: this.webSocketUrl(), reroute });
  }

  /**
   * Where each resume attempt of one session goes, told how the attempt before it
   * failed: the WebTransport session where it can be had, else a WebSocket. A
   * WebTransport session on which an attempt failed to connect is opened again
   * for the next; a fresh one that failed too sends the attempts (and the next
   * minute's sessions) to WebSocket.
   */
  rerouter(): (previous?: SessionError) => Promise<Route> {
    let last: { webTransport: boolean; fresh: boolean } | undefined;
    return async (previous) => {
      if (previous?.kind === "connection" && last?.webTransport === true) {
        if (last.fresh) this.markDown(previous);
        else this.close();
      }
      if (this.preferred() === "webtransport") {
        const fresh = this.current === undefined;
        try {
          const webTransport = await this.webTransport();
          last = { webTransport: true, fresh };
          this.lastUsed = "webtransport";
          return { webTransport };
        } catch (err) {
          this.markDown(err);
        }
      }
      last = { webTransport: false, fresh: true };
      this.lastUsed = "websocket";
      return { url: this.webSocketUrl() };
    };
  }

  /** The transport the next session would try first. */
  preferred(): TransportName {
    return this.options.setting !== "websocket" && Date.now() >= this.downUntil ? "webtransport" : "websocket";
  }

  /** Closes the WebTransport session, if one is open; sessions on it end. */
  close(): void {
    const current = this.current;
    this.current = undefined;
    void current?.then((wt) => wt.close()).catch(() => {});
  }

  private webTransport(): Promise<WebTransportLike> {
    this.current ??= this.openWebTransport();
    return this.current;
  }

  private async openWebTransport(): Promise<WebTransportLike> {
    const open = this.options.openWebTransport ?? browserWebTransport();
    if (open === undefined) throw new SessionError("connection", "this browser has no WebTransport");
    const info = parseInfo(await (this.options.fetchInfo ?? (() => fetchInfo(this.options.origin)))());
    const url = new URL(info.url);
    // The page's Content-Security-Policy allows its own origin only; anything else is not the relay's.
    if (url.origin !== new URL(this.options.origin).origin) {
      throw new SessionError("connection", `webtransport.json names another origin (${url.origin})`);
    }
    const hashes = info.serverCertificateHashes.map((hash) => ({ algorithm: hash.algorithm, value: decodeBase64(hash.value) }));
    const wt = open(url.href, hashes.length > 0 ? { serverCertificateHashes: hashes } : {});
    const mine = this.current;
    // A session that closes later is opened again by the next session that needs one.
    wt.closed.then(
      () => this.forget(mine),
      () => this.forget(mine),
    );
    try {
      await withDeadline(wt.ready, Date.now() + (this.options.readyTimeoutMs ?? READY_TIMEOUT_MS));
      keepAlive(wt, this.options.keepAliveMs ?? KEEP_ALIVE_MS);
    } catch (err) {
      try {
        wt.close();
      } catch {
        // Never opened: nothing to close.
      }
      throw err instanceof SessionError && err.kind === "timeout"
        ? new SessionError("connection", "the WebTransport session did not open in time")
        : err;
    }
    return wt;
  }

  private forget(which: Promise<WebTransportLike> | undefined): void {
    if (this.current === which) this.current = undefined;
  }

  private markDown(err: unknown): void {
    this.webTransportFailure = err instanceof Error ? err.message : String(err);
    this.downUntil = Date.now() + (this.options.retryAfterMs ?? RETRY_AFTER_MS);
    this.close();
  }
}

function browserWebTransport(): ((url: string, options: WebTransportOptions) => WebTransportLike) | undefined {
  const Ctor = (globalThis as { WebTransport?: new (url: string, options?: WebTransportOptions) => WebTransportLike }).WebTransport;
  return Ctor === undefined ? undefined : (url, options) => new Ctor(url, options);
}

async function fetchInfo(origin: string): Promise<unknown> {
  const response = await fetch(new URL("/.blindrelay/webtransport.json", origin), { cache: "no-store" });
  if (!response.ok) throw new SessionError("connection", `webtransport.json: HTTP status ${response.status}`);
  return response.json();
}

/** Checks the shape of `webtransport.json`; anything else is a failure to open WebTransport. */
export function parseInfo(value: unknown): WebTransportInfo {
  const bad = (why: string) => new SessionError("connection", `webtransport.json ${why}`);
  if (typeof value !== "object" || value === null) throw bad("is not an object");
  const { url, serverCertificateHashes } = value as { url?: unknown; serverCertificateHashes?: unknown };
  if (typeof url !== "string" || !url.startsWith("https://")) throw bad("has no https URL");
  if (!Array.isArray(serverCertificateHashes)) throw bad("has no list of certificate hashes");
  const hashes = serverCertificateHashes.map((hash: unknown) => {
    const { algorithm, value: digest } = (hash ?? {}) as { algorithm?: unknown; value?: unknown };
    if (algorithm !== "sha-256" || typeof digest !== "string") throw bad("lists a hash that is not sha-256");
    return { algorithm, value: digest };
  });
  return { url, serverCertificateHashes: hashes };
}
