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
 *
 * In a pool (section 18), a relay that does not hold the host answers with a
 * `Redirect`: the sessions then go to the member that holds it, which is
 * remembered for the next ones, while the page keeps its origin (src/pool.ts says
 * which members and how far). There WebTransport needs no certificate hashes: a
 * pool's members share the certificate browsers trust for their names. A relay
 * trusted by pin lists the hashes of short-lived certificates each member makes for
 * itself, which no other member presents, so there the page reaches the members by
 * WebSocket, whose certificate is the pool's.
 */

import { decodeBase64 } from "./bytes.js";
import { SessionError, withDeadline } from "./link.js";
import { MAX_REDIRECTS, PoolWalk } from "./pool.js";
import { type ConnectOptions, type PlayerSession, type Route, type TransportName, connectPlayer } from "./session.js";
import type { TransportSetting } from "./store.js";
import { type WebTransportLike, keepAlive } from "./webtransport.js";

export type { TransportSetting };

/** The relay's `webtransport.json` (section 19.2). */
export interface WebTransportInfo {
  readonly url: string;
  readonly serverCertificateHashes: readonly { readonly algorithm: string; readonly value: string }[];
  /** The pool members the page may follow a redirect to; none for a relay on its own. */
  readonly members: readonly string[];
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
export type ConnectBase = Omit<ConnectOptions, "webTransport" | "url" | "reroute" | "redirects">;

/** Where WebTransport is, for QUIC's handshake on loopback or across the world; past it, WebSocket. */
const READY_TIMEOUT_MS = 5000;
/** The keep-alive datagram's interval, as the reference player's keep-alive: 2 s. */
const KEEP_ALIVE_MS = 2000;

/** As the reference player after a failed QUIC: the other way for the next minute. */
const RETRY_AFTER_MS = 60_000;

/** The page's ways to the relay, and which one its sessions take. */
export class RelayTransports {
  /**
   * The WebTransport sessions, by where they go: a pool member's name, or `""` for
   * the page's own relay. One each: sessions that run at one member while new
   * ones go to another (the host moved) keep theirs.
   */
  private readonly sessions = new Map<string, Promise<WebTransportLike>>();
  private downUntil = 0;
  /** The pool member that served the last session, where the next ones go first; `undefined`: the page's own relay. */
  private member: string | undefined;
  /** The last `webtransport.json` read. */
  private info: WebTransportInfo | undefined;
  /** Why the last WebTransport attempt failed, for the page to show; `undefined` when none did. */
  webTransportFailure: string | undefined;
  /** The transport of the last session attempt, whatever became of it. */
  lastUsed: TransportName | undefined;

  constructor(private readonly options: RelayTransportsOptions) {}

  /** The WebSocket address on the page's origin, or on pool member `member`. */
  webSocketUrl(member?: string): string {
    return `wss://${member ?? new URL(this.options.origin).host}/blindrelay/1`;
  }

  /** The pool member the page's sessions go to, found by following a redirect; `undefined` for the page's own relay. */
  poolMember(): string | undefined {
    return this.member;
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
    // Where the last session was served first, then the page's own relay, and on
    // to the members a redirect names (src/pool.ts).
    const walk = new PoolWalk(this.member);
    for (let ask = walk.next(); ask !== undefined; ask = walk.next()) {
      try {
        const session = await this.connectTo(base, ask.member, ask.redirects);
        this.member = ask.member;
        return session;
      } catch (err) {
        if (!(err instanceof SessionError)) throw err;
        const allowed = err.kind === "redirected" ? await this.poolMembers() : [];
        const end = walk.failed(err, allowed);
        if (end !== undefined) throw end;
      }
    }
    throw walk.end();
  }

  /** One session at one relay (the page's own, or pool member `member`), asked after `redirects` redirects. */
  private async connectTo(base: ConnectBase, member: string | undefined, redirects: number): Promise<PlayerSession> {
    const reroute = this.rerouter(member, redirects);
    for (let attempt = 0; attempt < 2 && this.preferredFor(member) === "webtransport"; attempt++) {
      const reused = this.sessions.has(member ?? "");
      // Reading webtransport.json and QUIC's handshake come before the stream's own set-up.
      base.onStep?.({ step: "relay", transport: "webtransport" });
      let webTransport: WebTransportLike;
      try {
        webTransport = await this.webTransport(member);
      } catch (err) {
        this.markDown(err);
        break;
      }
      this.lastUsed = "webtransport";
      try {
        return await connectPlayer({ ...base, webTransport, reroute, redirects });
      } catch (err) {
        if (!(err instanceof SessionError) || err.kind !== "connection") throw err;
        if (reused && attempt === 0) {
          this.closeTo(member);
          continue;
        }
        this.markDown(err);
      }
    }
    this.lastUsed = "websocket";
    return connectPlayer({ ...base, url: this.webSocketUrl(member), reroute, redirects });
  }

  /**
   * Where each resume attempt of one session goes, told how the attempt before it
   * failed: the WebTransport session where it can be had, else a WebSocket. A
   * WebTransport session on which an attempt failed to connect is opened again
   * for the next; a fresh one that failed too sends the attempts (and the next
   * minute's sessions) to WebSocket.
   *
   * In a pool the attempts go where the session was set up (`member`, reached
   * after `redirects` redirects). One that was redirected (the host moved: a
   * member left or joined) goes to the first member the redirect named that the
   * page may reach, once per redirect; one that could not reach a member, or that
   * the member refused (it no longer holds the host), goes back to the page's own
   * relay, which redirects it again.
   */
  rerouter(member?: string, redirects = 0): (previous?: SessionError) => Promise<Route> {
    let last: { webTransport: boolean; fresh: boolean; to: string | undefined } | undefined;
    let to = member;
    let count = redirects;
    return async (previous) => {
      if (previous?.kind === "connection" && last?.webTransport === true) {
        if (last.fresh) this.markDown(previous);
        else this.closeTo(last.to);
      }
      if (previous?.kind === "redirected") {
        const allowed = await this.poolMembers();
        const next = (previous.members ?? []).find((m) => allowed.includes(m) && m !== to);
        if (next !== undefined && count < MAX_REDIRECTS) {
          to = next;
          count += 1;
        } else {
          to = undefined;
          count = 0;
        }
        this.member = to;
      } else if ((previous?.kind === "connection" || previous?.kind === "relay-refused") && to !== undefined) {
        // Unreachable, or no longer holding the host: the page's relay knows where it went.
        to = undefined;
        count = 0;
        this.member = undefined;
      }
      if (this.preferredFor(to) === "webtransport") {
        const fresh = !this.sessions.has(to ?? "");
        try {
          const webTransport = await this.webTransport(to);
          last = { webTransport: true, fresh, to };
          this.lastUsed = "webtransport";
          return { webTransport, redirects: count };
        } catch (err) {
          this.markDown(err);
        }
      }
      last = { webTransport: false, fresh: true, to };
      this.lastUsed = "websocket";
      return { url: this.webSocketUrl(to), redirects: count };
    };
  }

  /** The transport the next session would try first. */
  preferred(): TransportName {
    return this.preferredFor(this.member);
  }

  /**
   * The transport a session to `member` (a pool member, or the page's own relay)
   * takes first: WebSocket to a member of a pool trusted by pin, whose
   * WebTransport certificates are each member's own.
   */
  private preferredFor(member: string | undefined): TransportName {
    if (this.options.setting === "websocket" || Date.now() < this.downUntil) return "websocket";
    if (member !== undefined && (this.info?.serverCertificateHashes.length ?? 1) > 0) return "websocket";
    return "webtransport";
  }

  /** The pool members the page may follow a redirect to, from its own relay's `webtransport.json`; none where it cannot be read. */
  async poolMembers(): Promise<readonly string[]> {
    try {
      this.info = await this.readInfo();
      return this.info.members;
    } catch {
      return [];
    }
  }

  private async readInfo(): Promise<WebTransportInfo> {
    return parseInfo(await (this.options.fetchInfo ?? (() => fetchInfo(this.options.origin)))());
  }

  /** Closes the WebTransport sessions that are open; sessions on them end. */
  close(): void {
    for (const member of [...this.sessions.keys()]) this.closeTo(member === "" ? undefined : member);
  }

  /** Closes the WebTransport session to `member` (or the page's own relay), if one is open. */
  private closeTo(member: string | undefined): void {
    const current = this.sessions.get(member ?? "");
    this.sessions.delete(member ?? "");
    void current?.then((wt) => wt.close()).catch(() => {});
  }

  /** The WebTransport session to `member` (or the page's own relay): the open one, or a new one. */
  private webTransport(member?: string): Promise<WebTransportLike> {
    let current = this.sessions.get(member ?? "");
    if (current === undefined) {
      current = this.openWebTransport(member);
      this.sessions.set(member ?? "", current);
    }
    return current;
  }

  private async openWebTransport(member: string | undefined): Promise<WebTransportLike> {
    const open = this.options.openWebTransport ?? browserWebTransport();
    if (open === undefined) throw new SessionError("connection", "this browser has no WebTransport");
    const info = await this.readInfo();
    this.info = info;
    let url = new URL(info.url);
    // The page's Content-Security-Policy allows its own origin only, and the pool
    // members its relay lists; anything else is not the relay's.
    if (url.origin !== new URL(this.options.origin).origin) {
      throw new SessionError("connection", `webtransport.json names another origin (${url.origin})`);
    }
    if (member !== undefined) {
      if (!info.members.includes(member)) throw new SessionError("connection", `the relay lists no pool member ${member}`);
      url = new URL(`https://${member}/blindrelay/1`);
    }
    const hashes = member !== undefined ? [] : info.serverCertificateHashes.map((hash) => ({ algorithm: hash.algorithm, value: decodeBase64(hash.value) }));
    const wt = open(url.href, hashes.length > 0 ? { serverCertificateHashes: hashes } : {});
    const mine = this.sessions.get(member ?? "");
    // A session that closes later is opened again by the next session that needs one.
    wt.closed.then(
      () => this.forget(member, mine),
      () => this.forget(member, mine),
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

  private forget(member: string | undefined, which: Promise<WebTransportLike> | undefined): void {
    if (this.sessions.get(member ?? "") === which) this.sessions.delete(member ?? "");
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
  const members = (value as { members?: unknown }).members ?? [];
  // Older relays list no members: a relay on its own.
  if (!Array.isArray(members) || !members.every((m: unknown) => typeof m === "string")) throw bad("lists pool members that are not names");
  const hashes = serverCertificateHashes.map((hash: unknown) => {
    const { algorithm, value: digest } = (hash ?? {}) as { algorithm?: unknown; value?: unknown };
    if (algorithm !== "sha-256" || typeof digest !== "string") throw bad("lists a hash that is not sha-256");
    return { algorithm, value: digest };
  });
  return { url, serverCertificateHashes: hashes, members: members as string[] };
}
