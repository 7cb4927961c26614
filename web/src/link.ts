/**
 * The link layer: one stream to the relay, whatever carries it (a WebSocket or a
 * WebTransport stream), as the session sees it, and the errors a session ends with.
 *
 * Both links keep what arrives in a queue until the session parses it, and report
 * the stream's ends the same way; that receive side is {@link ReceivingLink}. Each
 * link supplies only its send side and how it waits for more to arrive (`pull`):
 * src/websocket.ts and src/webtransport.ts.
 */

import { ByteQueue } from "./bytes.js";
import { STREAM_CODES, StreamCode, describeCode } from "./codes.js";
import { ControlError } from "./control.js";
import { FrameError } from "./frames.js";
import { NoiseError } from "./noise.js";

/** Why a session failed or could not start. */
export type SessionErrorKind =
  /** The relay answered `Error` instead of `Connected` (code and reason attached). */
  | "relay-refused"
  /** The relay is a pool member that does not hold the host and named the members that may (section 18.4). */
  | "redirected"
  /** The host does not serve this player's key. */
  | "not-authorized"
  /** The host's side went away without ending the session (`PEER_GONE`). */
  | "host-left"
  /** The relay ended the session at its stall timeout (`STALLED`). */
  | "stalled"
  /** The relay ended the session at its idle timeout (`SESSION_IDLE`). */
  | "idle"
  /** The relay ended the session at its maximum duration (`DURATION_LIMIT`). */
  | "duration-limit"
  /** The relay ended the session at its byte limit (`BYTE_LIMIT`). */
  | "byte-limit"
  /** The session was refused (`REFUSED`): the hello was not made for this host. */
  | "refused"
  /** The other side cancelled (`CANCELLED`). */
  | "cancelled"
  /** The host rejected what this side sent (`PROTOCOL_VIOLATION`). */
  | "rejected"
  /** The host could not reach the service it forwards to (`SERVICE_UNAVAILABLE`). */
  | "service-unavailable"
  /** The host's application dropped the resumable session (`CLOSED`). */
  | "host-closed"
  /** A resume asked for a session the host does not hold (verdict "unknown session"). */
  | "unknown-session"
  /** A resumable session's stream failed and no new one could be had: the window ended, or the host no longer holds it. */
  | "session-lost"
  /** Reset or stopped with a code this version does not know. */
  | "reset"
  /** The relay closed the connection (`CLOSE`, code attached). */
  | "closed"
  /** The host's stream ended without its authenticated end: someone cut it short. */
  | "truncated"
  /** What arrived broke the protocol (frames, control messages or the Noise session). */
  | "protocol"
  /** The WebSocket or WebTransport session failed or closed. */
  | "connection"
  /** Set-up did not finish in time. */
  | "timeout";

/** A session that failed, with the kind that says why. */
export class SessionError extends Error {
  override readonly name = "SessionError";

  constructor(
    /** Why, for code that reacts to it. */
    readonly kind: SessionErrorKind,
    message: string,
    /** The stream, close or relay error code that said so, where one did. */
    readonly code?: number,
    /** For `redirected`: the pool members the relay named, the host's owner first. */
    readonly members?: readonly string[],
  ) {
    super(message);
  }
}

/** The error a stream code in a `RESET` or `STOP` stands for. */
export function streamCodeError(code: number): SessionError {
  const words = describeCode(STREAM_CODES, "stream code", code);
  const kinds: Record<number, SessionErrorKind> = {
    [StreamCode.PEER_GONE]: "host-left",
    [StreamCode.REFUSED]: "refused",
    [StreamCode.STALLED]: "stalled",
    [StreamCode.SESSION_IDLE]: "idle",
    [StreamCode.DURATION_LIMIT]: "duration-limit",
    [StreamCode.BYTE_LIMIT]: "byte-limit",
    [StreamCode.CANCELLED]: "cancelled",
    [StreamCode.PROTOCOL_VIOLATION]: "rejected",
    [StreamCode.SERVICE_UNAVAILABLE]: "service-unavailable",
    [StreamCode.CLOSED]: "host-closed",
  };
  const kind = kinds[code] ?? "reset";
  const lead =
    kind === "host-left" ? "host left" : kind === "reset" ? "session reset" : kind === "host-closed" ? "host closed" : kind.replace("-", " ");
  return new SessionError(kind, `${lead}: ${words}`, code);
}

/**
 * One stream to the relay, whatever carries it: bytes out, bytes in (kept until
 * parsed), the stream's ends, and the codes it may end with (section 11).
 */
export interface StreamLink {
  /** Waits until bytes can be sent. */
  opened(deadline: number): Promise<void>;
  /** Sends stream bytes. */
  sendStream(bytes: Uint8Array): void;
  /** Ends this side's direction cleanly (FIN). */
  finish(): void;
  /** Resets this side's direction and stops the other's, both with `code`. */
  abandon(code: number): void;
  /** Takes what `parse` finds in the received bytes, waiting for more as needed; a stream that ends first is a truncation. */
  read<T>(parse: (buf: Uint8Array) => { message: T; used: number } | undefined, deadline: number): Promise<T>;
  /** Reads and discards until the other side's direction ends, or `deadline`. */
  drainToEnd(deadline: number): Promise<void>;
  /** From now on, bytes that arrive are dropped unread. */
  discardData(): void;
  /** Whether the other side's direction ended cleanly (FIN). */
  finReceived(): boolean;
  /** Throws if the other side asked this one to stop sending, or the link is gone. */
  throwIfStopped(): void;
  /** Waits while too much is queued to send. */
  drained(): Promise<void>;
  /** Records why the link ended, if nothing did before. */
  fail(error: SessionError): void;
  /** Lets go of the stream (and its WebSocket, where it has one). */
  shutdown(): void;
}

/**
 * The receive side every link shares: bytes kept until parsed, the other side's
 * FIN, and why the link ended or was told to stop sending. A link adds how it
 * waits for more to arrive ({@link ReceivingLink.pull}) and hands what arrives to
 * {@link ReceivingLink.receive}.
 */
export abstract class ReceivingLink {
  /** Stream bytes not read yet. A queue, not a concatenation per chunk: a page busy
   * decrypting falls behind the network, and its backlog can reach megabytes. */
  protected readonly received = new ByteQueue();
  protected fin = false;
  protected discarding = false;
  protected ended: SessionError | undefined;
  protected stopped: SessionError | undefined;

  /** Waits until something more arrives (bytes, the FIN, an end); rejects with a timeout at `deadline`. */
  protected abstract pull(deadline: number): Promise<void>;

  /** Keeps bytes that arrived for the next read, unless the direction ended or they are discarded. */
  protected receive(bytes: Uint8Array): void {
    if (!this.fin && !this.discarding) this.received.push(bytes);
  }

  /** Takes what `parse` finds in the received bytes, waiting for more as needed; a stream that ends first is a truncation. */
  async read<T>(parse: (buf: Uint8Array) => { message: T; used: number } | undefined, deadline: number): Promise<T> {
    for (;;) {
      // `parse` copies what it keeps: the view is reused by the next push.
      const taken = parse(this.received.view());
      if (taken !== undefined) {
        this.received.consume(taken.used);
        return taken.message;
      }
      if (this.fin) throw new NoiseError("truncated", "session truncated: the stream ended without an authenticated end of stream");
      if (this.ended) throw this.ended;
      await this.pull(deadline);
    }
  }

  /** Reads and discards until the other side's direction ends, or `deadline`. */
  async drainToEnd(deadline: number): Promise<void> {
    this.discardData();
    while (!this.fin && this.ended === undefined && Date.now() < deadline) {
      try {
        await this.pull(deadline);
      } catch {
        return;
      }
    }
  }

  /** From now on, bytes that arrive are dropped unread. */
  discardData(): void {
    this.discarding = true;
    this.received.clear();
  }

  /** Whether the other side's direction ended cleanly (FIN). */
  finReceived(): boolean {
    return this.fin;
  }

  /** Throws if the other side asked this one to stop sending, or the link is gone. */
  throwIfStopped(): void {
    if (this.stopped) throw this.stopped;
    if (this.ended && !this.fin) throw this.ended;
  }

  /** Records why the link ended, if nothing did before. */
  fail(error: SessionError): void {
    this.ended ??= error;
  }
}

/**
 * Whether a resumable session's stream failed in a way a new stream can mend
 * (section 10.8): the stream or its connection was lost or closed, the relay lost
 * the other side (`PEER_GONE`), it was reset or stopped with code 0 (what a QUIC
 * stack sends for a half dropped unread), or it ended before the host's `end`.
 * Not what a side or the relay meant by a code (a refusal, a limit, a cancel, a
 * protocol violation, `SERVICE_UNAVAILABLE`, `CLOSED`), nor a broken session.
 */
export function mendable(error: SessionError): boolean {
  switch (error.kind) {
    case "connection":
    case "closed":
    case "host-left":
    case "truncated":
      return true;
    case "reset":
      return error.code === 0;
    default:
      return false;
  }
}

/** `err` as a {@link SessionError}: kept where it is one, else named for what failed. */
export function toSessionError(err: unknown): SessionError {
  if (err instanceof SessionError) return err;
  if (err instanceof NoiseError) {
    return new SessionError(err.kind === "truncated" ? "truncated" : "protocol", err.message);
  }
  if (err instanceof ControlError || err instanceof FrameError) return new SessionError("protocol", err.message);
  return new SessionError("connection", err instanceof Error ? err.message : String(err));
}

/** `work`, or a timeout error at `deadline` (the work goes on, for whoever waits next). */
export async function withDeadline<T>(work: Promise<T>, deadline: number): Promise<T> {
  if (!Number.isFinite(deadline)) return work;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new SessionError("timeout", "the session was not set up in time")),
      Math.max(0, deadline - Date.now()),
    );
  });
  try {
    return await Promise.race([work, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** What an error says, whatever was thrown. */
export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Takes one Noise message (2-byte length, then the message) off the front of `buf` if it has all arrived. */
export function takeNoiseMessage(buf: Uint8Array): { message: Uint8Array; used: number } | undefined {
  if (buf.length < 2) return undefined;
  const len = ((buf[0] ?? 0) << 8) | (buf[1] ?? 0);
  if (buf.length < 2 + len) return undefined;
  return { message: buf.slice(2, 2 + len), used: 2 + len };
}
