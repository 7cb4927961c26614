/**
 * What the player keeps so that a resumable session outlives the stream that
 * carries it (PROTOCOL.md section 10.8): the bytes the host has not acknowledged
 * ({@link ReplayBuffer}), and when to acknowledge what the application read
 * ({@link AckClock}).
 *
 * Offsets count application bytes (the bodies of `data` frames), one count per
 * direction, from the session's first byte; they go on across resumes. Nothing
 * here reads a clock or touches a stream: the session passes the time in.
 */

import { MAX_PLAINTEXT_LEN, NoiseError } from "./noise.js";

/** What a sender keeps unacknowledged by default: also its flow-control window. */
export const DEFAULT_REPLAY_WINDOW = 4 * 1024 * 1024;

/** The largest replay window a sender may keep (section 10.8). */
export const MAX_REPLAY_WINDOW = 16 * 1024 * 1024;

/** How long a session whose stream failed waits for a new one, by default, in ms. */
export const DEFAULT_RESUME_WINDOW_MS = 30_000;

/** A receiver acknowledges at least every this many bytes read... */
export const ACK_EVERY = 256 * 1024;

/** ...and at most this long (ms) after the first byte read since its last acknowledgement. */
export const ACK_DELAY_MS = 100;

/** The bytes this side sent that the host has not acknowledged, oldest first. */
export class ReplayBuffer {
  private chunks: Uint8Array[] = [];
  /** The offset of the first byte held: everything before it is acknowledged. */
  private start = 0;
  private heldBytes = 0;
  /** The most it holds, within the protocol's bounds. */
  readonly capacity: number;

  /** An empty buffer for at most `capacity` bytes (at least one frame's worth, at most {@link MAX_REPLAY_WINDOW}). */
  constructor(capacity: number = DEFAULT_REPLAY_WINDOW) {
    this.capacity = Math.min(Math.max(Math.floor(capacity), MAX_PLAINTEXT_LEN), MAX_REPLAY_WINDOW);
  }

  /** Bytes held, not yet acknowledged. */
  get held(): number {
    return this.heldBytes;
  }

  /** Bytes that can be sent before the host acknowledges some. */
  get room(): number {
    return this.capacity - this.heldBytes;
  }

  /** Every byte sent so far: the offset the next byte will have. */
  get sent(): number {
    return this.start + this.heldBytes;
  }

  /** The offset of the first byte held. */
  get acknowledged(): number {
    return this.start;
  }

  /** Keeps a copy of as much of `bytes` as there is room for, as sent; returns how much. */
  push(bytes: Uint8Array): number {
    const n = Math.min(bytes.length, this.room);
    if (n > 0) {
      this.chunks.push(bytes.slice(0, n));
      this.heldBytes += n;
    }
    return n;
  }

  /**
   * The host has every byte before `count`: forget them. A count behind an earlier
   * one, or past what was sent, breaks the session (a `bad-ack` error).
   */
  acknowledge(count: bigint): void {
    if (count > BigInt(this.sent)) throw new NoiseError("bad-ack", "bad acknowledgement: it acknowledges bytes never sent");
    const at = Number(count);
    if (at < this.start) throw new NoiseError("bad-ack", "bad acknowledgement: it goes back behind an earlier one");
    let release = at - this.start;
    this.start = at;
    this.heldBytes -= release;
    while (release > 0) {
      const front = this.chunks[0];
      if (front === undefined) break;
      if (front.length <= release) {
        release -= front.length;
        this.chunks.shift();
      } else {
        this.chunks[0] = front.subarray(release);
        release = 0;
      }
    }
  }

  /** Every byte held, in order, in pieces of at most `max` bytes: what to send again after a resume. */
  *unacknowledged(max: number): Generator<Uint8Array> {
    for (const chunk of this.chunks) {
      for (let at = 0; at < chunk.length; at += max) yield chunk.subarray(at, at + max);
    }
  }
}

/**
 * When a receiver acknowledges: once {@link ACK_EVERY} bytes were read since the
 * last acknowledgement, or {@link ACK_DELAY_MS} after the first byte read since
 * then, whichever comes first; never on an idle session.
 */
export class AckClock {
  private deliveredBytes: number;
  private acknowledgedBytes: number;
  private dueAt: number | undefined;

  /** A clock with `delivered` bytes already read and acknowledged (0 for a new session). */
  constructor(delivered = 0) {
    this.deliveredBytes = delivered;
    this.acknowledgedBytes = delivered;
  }

  /** Bytes the application has read so far. */
  get delivered(): number {
    return this.deliveredBytes;
  }

  /** The last count acknowledged. */
  get acknowledgedCount(): number {
    return this.acknowledgedBytes;
  }

  /** When the next acknowledgement falls due if nothing more is read (ms), or `undefined` when none is owed. */
  get deadline(): number | undefined {
    return this.dueAt;
  }

  /** Records `n` more bytes read by the application at `now` (ms). */
  deliver(n: number, now: number): void {
    if (n <= 0) return;
    this.deliveredBytes += n;
    // Bytes a resume already acknowledged (received, not yet read) owe nothing.
    if (this.deliveredBytes > this.acknowledgedBytes) this.dueAt ??= now + ACK_DELAY_MS;
  }

  /** The count to acknowledge at `now`, if one is due. */
  due(now: number): number | undefined {
    // A resume may have acknowledged more than was read (everything received).
    const owed = this.deliveredBytes - this.acknowledgedBytes;
    if (owed <= 0) return undefined;
    const late = this.dueAt !== undefined && this.dueAt <= now;
    return owed >= ACK_EVERY || late ? this.deliveredBytes : undefined;
  }

  /** Records that `count` was acknowledged (sealed for the host). */
  acknowledged(count: number): void {
    this.acknowledgedBytes = Math.max(this.acknowledgedBytes, count);
    if (this.acknowledgedBytes >= this.deliveredBytes) this.dueAt = undefined;
  }
}
