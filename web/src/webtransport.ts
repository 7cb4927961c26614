/**
 * A player session's stream on WebTransport (PROTOCOL.md section 19.1): one
 * bidirectional stream of the page's WebTransport session with the relay is one
 * control stream, exactly as a native player's QUIC stream. The bytes are the
 * control messages and the Noise session with no framing of ours (WebTransport's
 * stream header is the browser's business); a reset or a stop-sending carries the
 * protocol's stream code as `WebTransportError.streamErrorCode`, which the browser
 * and the relay map to and from HTTP/3's code space.
 *
 * The stream is read only when the session needs bytes, so a page that stops
 * reading stops QUIC's flow-control credit, and the relay and the host slow down,
 * as with a native player.
 */

import { CLOSE_CODES, describeCode } from "./codes.js";
import { ReceivingLink, SessionError, type StreamLink, messageOf, streamCodeError, withDeadline } from "./link.js";

/** A bidirectional WebTransport stream, as the browser gives it. */
export interface WebTransportStreamLike {
  readonly readable: ReadableStream<Uint8Array>;
  readonly writable: WritableStream<Uint8Array>;
}

/** The part of a browser's `WebTransport` this module uses (or a test's stand-in). */
export interface WebTransportLike {
  readonly ready: Promise<unknown>;
  readonly closed: Promise<{ closeCode?: number; reason?: string }>;
  createBidirectionalStream(): Promise<WebTransportStreamLike>;
  close(info?: { closeCode?: number; reason?: string }): void;
  /** Where the browser has them: the session's datagrams (the keep-alive's only use). */
  readonly datagrams?: { readonly writable: WritableStream<Uint8Array> };
}

/** The keep-alive datagram: one byte, which the relay never reads (PROTOCOL.md section 1). */
const KEEP_ALIVE = new Uint8Array([0]);

/**
 * Sends a one-byte datagram on `transport` every `everyMs` while it is open, so
 * that a relay that restarted answers within seconds with a stateless reset, which
 * ends the session at once and lets its streams resume; without it, the browser's
 * own QUIC keep-alive (about 15 s) is the first packet to find out. Returns what
 * stops it (it also stops when the session closes).
 */
export function keepAlive(transport: WebTransportLike, everyMs: number): () => void {
  const writable = transport.datagrams?.writable;
  if (writable === undefined || everyMs <= 0) return () => {};
  const writer = writable.getWriter();
  const timer = setInterval(() => {
    writer.write(KEEP_ALIVE).catch(() => {});
  }, everyMs);
  // In node, a pending keep-alive must not hold the process open.
  (timer as { unref?: () => void }).unref?.();
  const stop = () => clearInterval(timer);
  transport.closed.then(stop, stop);
  return stop;
}

/** The error a stream is abandoned with: a `WebTransportError` carrying `code` where the environment has one. */
export function streamAbortReason(code: number): Error {
  const message = `stream code 0x${code.toString(16)}`;
  const Ctor = (globalThis as { WebTransportError?: new (...args: unknown[]) => Error }).WebTransportError;
  if (Ctor !== undefined) {
    // Chromium's constructor takes one dictionary, and throws a TypeError for the
    // specification's (message, options): each shape is tried, and kept only if
    // the error it makes carries the code.
    for (const args of [[{ message, streamErrorCode: code }], [message, { streamErrorCode: code }]]) {
      try {
        const err = new Ctor(...args);
        if ((err as { streamErrorCode?: unknown }).streamErrorCode === code) return err;
      } catch {
        // The other shape.
      }
    }
  }
  return Object.assign(new Error(message), { name: "WebTransportError", streamErrorCode: code });
}

/**
 * The stream code a `WebTransportError` carries, `undefined` for an error that is
 * not a stream's (the whole session closed, the network went away).
 */
export function streamCodeOf(err: unknown): number | undefined {
  if (typeof err !== "object" || err === null || (err as { name?: unknown }).name !== "WebTransportError") return undefined;
  const code = (err as { streamErrorCode?: unknown }).streamErrorCode;
  return typeof code === "number" ? code : undefined;
}

/** Above this many bytes handed to the stream and not yet taken by it, writes wait. */
const SEND_HIGH_WATER = 1 << 20;

/** One WebTransport stream carrying one session. */
export class WebTransportLink extends ReceivingLink implements StreamLink {
  private reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  private writer: WritableStreamDefaultWriter<Uint8Array> | undefined;
  private opening: Promise<void> | undefined;
  /** The read in progress: a read that outlived its caller's deadline is kept for the next caller. */
  private pending: Promise<void> | undefined;
  private finSent = false;
  private unsent = 0;
  private closeInfo: { closeCode?: number; reason?: string } | undefined;

  constructor(private readonly transport: WebTransportLike) {
    super();
    transport.closed.then(
      (info) => {
        this.closeInfo = info;
      },
      () => {},
    );
  }

  /** Opens the stream (once). */
  async opened(deadline: number): Promise<void> {
    this.opening ??= (async () => {
      try {
        const stream = await this.transport.createBidirectionalStream();
        this.reader = stream.readable.getReader();
        this.writer = stream.writable.getWriter();
        // A stop-sending from the relay shows up here, whether or not a write is waiting.
        this.writer.closed.catch((err: unknown) => this.onWriteError(err));
      } catch (err) {
        this.fail(new SessionError("connection", `no stream on the WebTransport session: ${messageOf(err)}`));
      }
    })();
    await withDeadline(this.opening, deadline);
    if (this.ended) throw this.ended;
  }

  sendStream(bytes: Uint8Array): void {
    if (bytes.length === 0 || this.writer === undefined || this.finSent || this.stopped) return;
    this.unsent += bytes.length;
    this.writer.write(bytes).then(
      () => {
        this.unsent -= bytes.length;
      },
      (err: unknown) => this.onWriteError(err),
    );
  }

  finish(): void {
    if (this.writer === undefined || this.finSent) return;
    this.finSent = true;
    this.writer.close().catch((err: unknown) => this.onWriteError(err));
  }

  abandon(code: number): void {
    this.finSent = true;
    this.writer?.abort(streamAbortReason(code)).catch(() => {});
    this.reader?.cancel(streamAbortReason(code)).catch(() => {});
    this.discarding = true;
  }

  async drained(): Promise<void> {
    // `ready` alone lets a queue of one chunk of any size through: the count bounds it in bytes.
    while (this.writer !== undefined && this.unsent > SEND_HIGH_WATER && !this.stopped && !this.ended) {
      await Promise.race([this.writer.ready, new Promise((resolve) => setTimeout(resolve, 5))]);
    }
    this.throwIfStopped();
  }

  shutdown(): void {
    this.fail(new SessionError("connection", "the session is closed"));
    // A direction not ended yet is abandoned as a QUIC stack abandons one: code 0.
    if (!this.fin) this.reader?.cancel().catch(() => {});
    if (!this.finSent) {
      this.finSent = true;
      this.writer?.abort().catch(() => {});
    }
  }

  /** Reads one chunk into the queue, or waits at most until `deadline` for it. */
  protected async pull(deadline: number): Promise<void> {
    const reader = this.reader;
    if (reader === undefined) throw this.ended ?? new SessionError("connection", "the stream is not open");
    this.pending ??= reader.read().then(
      ({ value, done }) => {
        this.pending = undefined;
        if (done) this.fin = true;
        else if (value !== undefined) this.receive(value);
      },
      (err: unknown) => {
        this.pending = undefined;
        this.fail(this.readError(err));
      },
    );
    await withDeadline(this.pending, deadline);
  }

  private readError(err: unknown): SessionError {
    const code = streamCodeOf(err);
    if (code !== undefined) return streamCodeError(code);
    if (this.closeInfo?.closeCode !== undefined) {
      const { closeCode, reason } = this.closeInfo;
      return new SessionError(
        "closed",
        `the relay closed the connection: ${describeCode(CLOSE_CODES, "close code", closeCode)}${reason ? ` (${reason})` : ""}`,
        closeCode,
      );
    }
    return new SessionError("connection", `the WebTransport session to the relay failed: ${messageOf(err)}`);
  }

  private onWriteError(err: unknown): void {
    // Once this side has ended or abandoned its direction, what becomes of its writes no longer matters.
    if (this.finSent) return;
    const code = streamCodeOf(err);
    if (code !== undefined) {
      // STOP_SENDING: writing is over; reading goes on.
      this.stopped ??= streamCodeError(code);
    } else {
      this.stopped ??= new SessionError("connection", `the WebTransport stream failed: ${messageOf(err)}`);
    }
  }
}
