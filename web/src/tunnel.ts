/**
 * The HTTP tunnel: requests become HTTP/1.1 written into end-to-end sessions to
 * the host, and the responses come back as streams, read from the session only
 * as fast as the page reads them.
 *
 * Sessions are kept for reuse as a browser keeps connections: at most
 * `maxKept` (6, as a browser's HTTP/1.1 limit per origin) are held open between
 * requests. A request that finds none idle opens a new one; above the limit it
 * still opens one, and closes it after its response, so that a page never waits
 * on another request's long response (a film's). A response that cannot be
 * followed by another on its session (no keep-alive, read to its end, cancelled
 * midway) closes that session.
 */

import { HttpError, type HttpRequest, type HttpResponseHead, ResponseReader } from "./http1.js";
import { encodeRequest } from "./http1.js";
import type { PlayerSession } from "./session.js";

/** Options of a {@link Tunnel}. */
export interface TunnelOptions {
  /** Opens a new end-to-end session to the host. */
  readonly open: () => Promise<PlayerSession>;
  /** How many idle sessions to keep for later requests. */
  readonly maxKept?: number;
  /** How long an idle session is kept, in ms: less than the host's HTTP server keeps an idle connection. */
  readonly idleMs?: number;
  /** The clock, for tests. */
  readonly now?: () => number;
}

/** A response from the host, its body streamed out of the session. */
export interface TunnelResponse extends HttpResponseHead {
  /** `null` where the response has no body (HEAD, 204, 304). */
  readonly body: ReadableStream<Uint8Array> | null;
}

/** Counts, for tests and the page's status line. */
export interface TunnelStats {
  opened: number;
  reused: number;
  kept: number;
  retried: number;
}

/** Methods safe to send twice when a kept session turns out to be gone before answering. */
const IDEMPOTENT = new Set(["GET", "HEAD", "OPTIONS", "PUT", "DELETE"]);

/** Carries HTTP requests to the host in a pool of sessions. */
export class Tunnel {
  private idle: Conn[] = [];
  private busy = 0;
  private readonly maxKept: number;
  private readonly idleMs: number;
  private readonly now: () => number;
  readonly stats: TunnelStats = { opened: 0, reused: 0, kept: 0, retried: 0 };

  constructor(private readonly options: TunnelOptions) {
    this.maxKept = options.maxKept ?? 6;
    this.idleMs = options.idleMs ?? 30_000;
    this.now = options.now ?? Date.now;
  }

  /** Sends `request` to the host and resolves with its response head and a body stream. */
  async fetch(request: HttpRequest): Promise<TunnelResponse> {
    const bytes = encodeRequest(request);
    const method = request.method.toUpperCase();
    const kept = this.takeIdle();
    if (kept !== undefined) {
      this.stats.reused++;
      try {
        return await this.exchange(kept, method, bytes);
      } catch (err) {
        // A kept session the host (or its HTTP server) ended while idle fails
        // before any byte of the answer; a browser retries such a request once.
        if (!(err instanceof StaleSession) || !IDEMPOTENT.has(method)) throw unwrap(err);
        this.stats.retried++;
      }
    }
    const conn = new Conn(await this.openSession());
    try {
      return await this.exchange(conn, method, bytes);
    } catch (err) {
      throw unwrap(err);
    }
  }

  /** Ends every idle session (with its authenticated end). */
  closeIdle(): void {
    for (const conn of this.idle.splice(0)) conn.close();
  }

  private async openSession(): Promise<PlayerSession> {
    const session = await this.options.open();
    this.stats.opened++;
    return session;
  }

  private takeIdle(): Conn | undefined {
    const now = this.now();
    for (;;) {
      const conn = this.idle.pop();
      if (conn === undefined) return undefined;
      if (now - conn.lastUsed <= this.idleMs && !conn.ended) return conn;
      conn.close();
    }
  }

  private release(conn: Conn, reusable: boolean): void {
    this.busy--;
    if (reusable && !conn.ended && this.idle.length < this.maxKept) {
      conn.lastUsed = this.now();
      this.idle.push(conn);
      this.stats.kept++;
    } else {
      conn.close();
    }
  }

  private async exchange(conn: Conn, method: string, bytes: Uint8Array): Promise<TunnelResponse> {
    this.busy++;
    const reader = new ResponseReader(method);
    let released = false;
    const release = (reusable: boolean) => {
      if (released) return;
      released = true;
      this.release(conn, reusable);
    };
    let head: HttpResponseHead | undefined;
    const early: Uint8Array[] = [];
    let ended = false;
    let received = false;
    try {
      await conn.write(bytes);
      while (head === undefined) {
        const chunk = await conn.read();
        const events = chunk === undefined ? reader.finish() : reader.push(chunk);
        if (chunk !== undefined && chunk.length > 0) received = true;
        for (const event of events) {
          if (event.type === "head") head = event.head;
          else if (event.type === "body") early.push(event.data);
          else ended = true;
        }
        if (chunk === undefined && head === undefined) throw new HttpError("the session ended before the host's HTTP response");
      }
    } catch (err) {
      conn.abort();
      release(false);
      throw received ? err : new StaleSession(err);
    }
    if (ended && early.length === 0) {
      release(reader.reusable);
      return { ...head, body: hasBody(method, head.status) ? emptyBody() : null };
    }
    const body = new ReadableStream<Uint8Array>(
      {
        start: (controller) => {
          for (const data of early) controller.enqueue(data);
          if (ended) {
            controller.close();
            release(reader.reusable);
          }
        },
        pull: async (controller) => {
          // One pull reads until at least one body chunk is out, or the end.
          try {
            for (;;) {
              const chunk = await conn.read();
              const events = chunk === undefined ? reader.finish() : reader.push(chunk);
              let gave = false;
              for (const event of events) {
                if (event.type === "body") {
                  controller.enqueue(event.data);
                  gave = true;
                } else if (event.type === "end") {
                  controller.close();
                  release(reader.reusable && chunk !== undefined);
                  return;
                }
              }
              if (gave) return;
            }
          } catch (err) {
            conn.abort();
            release(false);
            controller.error(err);
          }
        },
        cancel: () => {
          // The page stopped reading (a seek, a closed tab): the rest of this
          // response would arrive on the session, so it cannot carry another.
          conn.abort();
          release(false);
        },
      },
      // Nothing read ahead of the page: the session's own queue is the only buffer.
      { highWaterMark: 0 },
    );
    return { ...head, body };
  }
}

/** A kept session that failed before any answer: the request may be sent again on a new one. */
class StaleSession extends Error {
  constructor(readonly inner: unknown) {
    super(inner instanceof Error ? inner.message : String(inner));
  }
}

function unwrap(err: unknown): unknown {
  return err instanceof StaleSession ? err.inner : err;
}

function hasBody(method: string, status: number): boolean {
  return method !== "HEAD" && status >= 200 && status !== 204 && status !== 205 && status !== 304;
}

function emptyBody(): ReadableStream<Uint8Array> {
  return new ReadableStream({ start: (controller) => controller.close() });
}

/** One session used for HTTP: its reader and writer held for its life. */
class Conn {
  lastUsed = 0;
  ended = false;
  private readonly reader: ReadableStreamDefaultReader<Uint8Array>;
  private readonly writer: WritableStreamDefaultWriter<Uint8Array>;

  constructor(private readonly session: PlayerSession) {
    this.reader = session.readable.getReader();
    this.writer = session.writable.getWriter();
    // An idle session whose host ends it is noticed here, not at the next request.
    void this.reader.closed.then(
      () => (this.ended = true),
      () => (this.ended = true),
    );
  }

  async write(bytes: Uint8Array): Promise<void> {
    await this.writer.write(bytes);
  }

  /** The next bytes from the host, or `undefined` at its authenticated end. */
  async read(): Promise<Uint8Array | undefined> {
    const { value, done } = await this.reader.read();
    if (done) {
      this.ended = true;
      return undefined;
    }
    return value;
  }

  /** Ends the session with its authenticated end (nothing is lost: no response is open). */
  close(): void {
    this.ended = true;
    this.writer.close().catch(() => this.session.abort());
  }

  /** Ends the session at once. */
  abort(): void {
    this.ended = true;
    this.session.abort();
  }
}
