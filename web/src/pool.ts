/**
 * A page's way through a pool of relays (PROTOCOL.md section 18.4), decided with no
 * I/O, as the reference player's `client/src/player/walk.rs`: which relay to ask
 * next and with how many redirects, and what each one's failure leads to.
 *
 * The page stays on its origin (`<host id>.<relay name>`, where its service worker
 * and storage live); only its sessions go to the member a redirect names, at
 * `wss://<member>/blindrelay/1` or `https://<member>/blindrelay/1`. It follows a
 * redirect only to the members its relay lets it reach (`members` in
 * `webtransport.json`, the same names its Content-Security-Policy lists), at most
 * {@link MAX_REDIRECTS} times per session, and asks no relay twice: a relay that
 * keeps redirecting cannot bounce the page for ever, nor send it anywhere else.
 * When the owner a redirect named does not hold the host, the members named last
 * are asked for themselves, as the protocol says.
 */

import { ErrorCode } from "./codes.js";
import { SessionError } from "./link.js";

/** Redirects followed per session at most (PROTOCOL.md section 18.4). */
export const MAX_REDIRECTS = 2;

/** One relay to ask: a pool member by name (`host:port`), or `undefined` for the page's own relay. */
export interface Ask {
  readonly member: string | undefined;
  readonly redirects: number;
}

/** Where a page asks for a session next, and what it learned so far. */
export class PoolWalk {
  private queue: (string | undefined)[];
  private redirects = 0;
  private last: SessionError | undefined;
  private readonly asked = new Set<string>();

  /** A walk that starts at `remembered` (the member that served the last session), if any, then the page's own relay. */
  constructor(remembered?: string) {
    this.queue = remembered === undefined ? [undefined] : [remembered, undefined];
  }

  /** The next relay to ask, or `undefined` once every one named was asked. */
  next(): Ask | undefined {
    while (this.queue.length > 0) {
      const member = this.queue.shift();
      const key = member ?? "";
      if (this.asked.has(key)) continue;
      this.asked.add(key);
      return { member, redirects: this.redirects };
    }
    return undefined;
  }

  /**
   * What a relay's failure leads to: `undefined` to ask the next, or the error the
   * walk ends with. `allowed` are the members the page may connect to (its relay's
   * list); a redirect's other members are not asked.
   */
  failed(err: SessionError, allowed: readonly string[]): SessionError | undefined {
    if (err.kind === "redirected" && this.redirects < MAX_REDIRECTS) {
      this.redirects += 1;
      this.queue = (err.members ?? []).filter((member) => allowed.includes(member));
      this.last = err;
      return undefined;
    }
    if (err.kind === "connection" || err.kind === "timeout" || err.kind === "redirected") {
      this.last = err;
      return undefined;
    }
    if (err.kind === "relay-refused" && err.code === ErrorCode.HostOffline && this.queue.length > 0) {
      // The owner a redirect named does not hold the host: the members ranked
      // after it answer for themselves (one whose view lags may hold it).
      this.redirects = MAX_REDIRECTS;
      if (this.last?.kind !== "relay-refused") this.last = err;
      return undefined;
    }
    return err;
  }

  /** Why the walk ended without a session: what the last relay said. */
  end(): SessionError {
    return this.last ?? new SessionError("connection", "no relay of the pool could be reached");
  }
}
