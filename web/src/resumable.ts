/**
 * A resumable session (PROTOCOL.md section 10.8): a player session that outlives
 * the stream under it. The host agreed to it with "welcome, resumable".
 *
 * ```text
 *  up --stream lost--> down --new stream, "resumed"--> awaiting count --count--> up
 *                       \--window over / "unknown session" / "not authorized"--> failed
 * ```
 *
 * - **Sending.** Each byte the application writes is kept in the
 *   {@link ReplayBuffer} until the host acknowledges it; a writer whose buffer is
 *   full waits, so the replay window is also the session's flow control.
 * - **Receiving.** The host's bytes are kept until the application reads them; the
 *   {@link AckClock} says when to acknowledge what it read (every 256 KiB, or 100 ms
 *   after the first byte read since the last ack; never on an idle session). The
 *   host's `end` is acknowledged at once, read or not.
 * - **Down.** When the stream fails in a way a new stream can mend ({@link mendable}:
 *   lost, closed, reset with code 0 or `PEER_GONE`, cut short before the host's
 *   `end`), reads and writes wait while the session dials the relay again, every
 *   500 ms within the resume window (30 s), with a hello whose payload is the
 *   current resume id. On "resumed" each side's first frame is its count: this
 *   side's is everything it received (read or not), and on the host's it forgets
 *   what the host has and sends the rest again, then its `end` again if it had
 *   ended. "Unknown session", "not authorized" or the window's end fail the
 *   session with a `session-lost` error.
 * - **The end.** This side's stream is finished (FIN) once both sides ended, and
 *   let go once the host has every byte and its FIN arrived.
 *
 * Frames are sealed in call order (the nonces are taken then) and sent in that order
 * by {@link Leg.send}, whoever seals them: the writer, the ack timer, the pump.
 */

import { StreamCode } from "./codes.js";
import type { SessionLimits } from "./control.js";
import { SessionError, type StreamLink, mendable, takeNoiseMessage, toSessionError } from "./link.js";
import { MAX_PLAINTEXT_LEN, NoiseError, type Opened, type Transport } from "./noise.js";
import { AckClock, MAX_REPLAY_WINDOW, ReplayBuffer } from "./resume.js";
import type { PlayerSession, TransportName } from "./session.js";

/** One stream to the host, set up: what a new session or a resume starts from. */
export interface SessionStream {
  readonly link: StreamLink;
  readonly transport: TransportName;
  /** The Noise transport of the handshake that opened (or resumed) the session on this stream. */
  readonly noise: Transport;
  readonly sessionId: bigint;
  readonly limits: SessionLimits;
}

/** How a {@link ResumableSession} behaves, and how it finds a new stream. */
export interface ResumableOptions {
  readonly hostId: Uint8Array;
  /** How long a session that is down looks for a new stream, in ms. */
  readonly windowMs: number;
  /** The most bytes sent and not yet acknowledged. */
  readonly replayWindow: number;
  /** How long to wait after a resume attempt that failed, in ms. */
  readonly retryMs: number;
  /**
   * Opens a new stream whose hello asks to resume `resumeId`, set up by `deadline`;
   * `previous` is why the attempt before failed. Rejects with a {@link SessionError}:
   * `unknown-session` or `not-authorized` end the attempts; anything else is tried
   * again.
   */
  readonly rejoin: (resumeId: Uint8Array, deadline: number, previous?: SessionError) => Promise<SessionStream>;
}

/**
 * What the session reads ahead of the application while it looks for
 * acknowledgements: twice the largest window a host may keep unacknowledged
 * (section 10.8). A host that keeps to the protocol never reaches it.
 */
const READ_AHEAD_LIMIT = 2 * MAX_REPLAY_WINDOW;

/** How long to wait for the host's FIN once everything is done, before letting the stream go. */
const LINGER_MS = 5000;

/** Wakes everyone waiting for the session's state to change. */
class Signal {
  private waiters: (() => void)[] = [];

  wait(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  notify(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }
}

/** The stream the session runs on now, and what it sent on it. */
class Leg {
  /** This side's FIN went out (after both sides' ends). */
  finSent = false;
  /** The host's FIN arrived after its end: nothing more comes on this stream. */
  streamDone = false;
  private tail: Promise<void> = Promise.resolve();

  constructor(
    readonly stream: SessionStream,
    private readonly onError: (err: unknown) => void,
  ) {}

  get link(): StreamLink {
    return this.stream.link;
  }

  get noise(): Transport {
    return this.stream.noise;
  }

  /** Sends a sealed frame after every frame sealed before it, whichever seal finishes first. */
  send(sealed: Promise<Uint8Array>): void {
    this.chain(async () => this.link.sendStream(await sealed));
  }

  /** Finishes this side's direction after what was sent before. */
  finish(): void {
    this.chain(() => this.link.finish());
  }

  /** Resolves once everything sent so far is handed to the link; rejects if a seal failed. */
  flushed(): Promise<void> {
    return this.tail;
  }

  private chain(step: () => void | Promise<void>): void {
    const next = this.tail.then(step);
    next.catch(this.onError);
    this.tail = next;
  }
}

/** A session the host made resumable: plaintext both ways, across as many streams as it takes. */
export class ResumableSession implements PlayerSession {
  readonly readable: ReadableStream<Uint8Array>;
  readonly writable: WritableStream<Uint8Array>;
  readonly resumable = true;
  readonly hostId: Uint8Array;
  private current: SessionStream;
  /** The stream in use; `undefined` while the session is down, and once it is over. */
  private leg: Leg | undefined;
  private resumeId: Uint8Array;
  private readonly replay: ReplayBuffer;
  private readonly acks = new AckClock();
  /** The host's bytes received and not yet read by the application. */
  private inbox: Uint8Array[] = [];
  private inboxBytes = 0;
  /** After a resume, until the host's first frame (its count) arrived. */
  private awaitingCount = false;
  /** The application ended its direction. */
  private ended = false;
  /** The host's end arrived: no more data comes, on any stream. */
  private peerEnded = false;
  private readClosed = false;
  private failure: SessionError | undefined;
  private done = false;
  private resumeCount = 0;
  private readonly changed = new Signal();
  private readController: ReadableStreamDefaultController<Uint8Array> | undefined;
  private ackTimer: ReturnType<typeof setTimeout> | undefined;
  private lingerTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    stream: SessionStream,
    private readonly options: ResumableOptions,
  ) {
    this.hostId = options.hostId;
    this.current = stream;
    this.resumeId = stream.noise.resumeId;
    this.replay = new ReplayBuffer(options.replayWindow);
    this.readable = new ReadableStream<Uint8Array>(
      {
        start: (controller) => {
          this.readController = controller;
        },
        pull: (controller) => this.pull(controller),
      },
      // Bytes count as read when the application takes them: nothing is queued ahead of it.
      { highWaterMark: 0 },
    );
    this.writable = new WritableStream<Uint8Array>({
      write: (chunk) => this.write(chunk),
      close: () => this.close(),
      abort: () => this.abort(),
    });
    const leg = new Leg(stream, (err) => this.legFailed(leg, err));
    this.leg = leg;
    void this.pump(leg);
  }

  get transport(): TransportName {
    return this.current.transport;
  }

  get sessionId(): bigint {
    return this.current.sessionId;
  }

  get limits(): SessionLimits {
    return this.current.limits;
  }

  get resumes(): number {
    return this.resumeCount;
  }

  /**
   * Ends the session at once: the stream is abandoned with `CLOSED` both ways, so
   * the host ends its side instead of waiting to resume it.
   */
  abort(): void {
    if (this.failure !== undefined || this.done) return;
    const leg = this.leg;
    leg?.link.abandon(StreamCode.CLOSED);
    this.fail(new SessionError("connection", "the session is closed"));
  }

  // -------------------------------------------------------------------------
  // The application's side
  // -------------------------------------------------------------------------

  private async pull(controller: ReadableStreamDefaultController<Uint8Array>): Promise<void> {
    for (;;) {
      const chunk = this.inbox.shift();
      if (chunk !== undefined) {
        this.inboxBytes -= chunk.length;
        controller.enqueue(chunk);
        this.acks.deliver(chunk.length, Date.now());
        this.ackIfDue();
        // The pump may be waiting for room to read ahead.
        this.changed.notify();
        return;
      }
      if (this.peerEnded) {
        this.readClosed = true;
        controller.close();
        return;
      }
      if (this.failure !== undefined) throw this.failure;
      await this.changed.wait();
    }
  }

  private async write(chunk: Uint8Array): Promise<void> {
    for (let at = 0; at < chunk.length; ) {
      const leg = await this.until(() => this.leg !== undefined && !this.awaitingCount && this.replay.room > 0);
      const n = Math.min(chunk.length - at, MAX_PLAINTEXT_LEN, this.replay.room);
      const piece = chunk.subarray(at, at + n);
      // Kept before it is sent: if the stream fails now, it goes out after the resume.
      this.replay.push(piece);
      at += n;
      leg.send(leg.noise.seal(piece));
      await this.flushed(leg);
    }
  }

  /**
   * Ends this side's data. Like TCP's, it does not wait for the host to read: the
   * end is sealed now, or after the resume if the session is down.
   */
  private async close(): Promise<void> {
    if (this.failure !== undefined) throw this.failure;
    this.ended = true;
    const leg = this.leg;
    if (leg === undefined || this.awaitingCount) return;
    this.sealEnd(leg);
    this.settle();
    await this.flushed(leg);
  }

  /** Waits until `ready()` holds with a stream to use; throws once the session failed. */
  private async until(ready: () => boolean): Promise<Leg> {
    for (;;) {
      if (this.failure !== undefined) throw this.failure;
      if (this.done) throw new SessionError("connection", "the session is over");
      const leg = this.leg;
      if (leg !== undefined && ready()) return leg;
      await this.changed.wait();
    }
  }

  /** Waits until what was sent on `leg` is out, and for room in the link; a failure takes the session down, not the write. */
  private async flushed(leg: Leg): Promise<void> {
    try {
      await leg.flushed();
      await leg.link.drained();
    } catch (err) {
      this.legFailed(leg, err);
    }
    if (this.failure !== undefined) throw this.failure;
  }

  // -------------------------------------------------------------------------
  // The stream's side
  // -------------------------------------------------------------------------

  /** Reads and opens the host's frames on `leg` for as long as it is the session's stream. */
  private async pump(leg: Leg): Promise<void> {
    for (;;) {
      while (this.inboxBytes >= READ_AHEAD_LIMIT && this.leg === leg) await this.changed.wait();
      if (this.leg !== leg) return;
      let opened: Opened;
      try {
        const message = await leg.link.read(takeNoiseMessage, Infinity);
        if (this.leg !== leg) return;
        opened = await leg.noise.open(message);
      } catch (err) {
        if (this.leg !== leg) return;
        if (leg.link.finReceived() && leg.noise.hasReceivedEnd) {
          // The host finished its stream after its end: both sides are done with it.
          leg.streamDone = true;
          this.settle();
          return;
        }
        this.legFailed(leg, err);
        return;
      }
      if (this.leg !== leg) return;
      try {
        this.take(leg, opened);
      } catch (err) {
        this.legFailed(leg, err);
        return;
      }
    }
  }

  /** What one opened frame does. */
  private take(leg: Leg, opened: Opened): void {
    if (this.awaitingCount) {
      if (opened.type !== "ack") throw new NoiseError("out-of-order", "a resumed session's first frame must be the host's count");
      this.takeCount(leg, opened.count);
      return;
    }
    switch (opened.type) {
      case "data":
        this.inbox.push(opened.data);
        this.inboxBytes += opened.data.length;
        break;
      case "ack":
        this.replay.acknowledge(opened.count);
        this.settle();
        break;
      case "end": {
        this.peerEnded = true;
        // Nothing more comes: acknowledge all of it now, read or not, so that the
        // host's end completes whatever this side's application does next.
        const received = this.acks.delivered + this.inboxBytes;
        if (received > this.acks.acknowledgedCount) {
          leg.send(leg.noise.sealAck(received));
          this.acks.acknowledged(received);
          this.scheduleAck();
        }
        this.settle();
        break;
      }
      case "rekeyed":
        return;
    }
    this.changed.notify();
  }

  /** The host's count after a resume: forget what it has, send the rest again, then this side's end if it had ended. */
  private takeCount(leg: Leg, count: bigint): void {
    this.replay.acknowledge(count);
    this.awaitingCount = false;
    for (const piece of this.replay.unacknowledged(MAX_PLAINTEXT_LEN)) leg.send(leg.noise.seal(piece));
    if (this.ended) this.sealEnd(leg);
    this.ackIfDue();
    this.settle();
    this.changed.notify();
  }

  private sealEnd(leg: Leg): void {
    if (!leg.noise.hasSentEnd) leg.send(leg.noise.sealEnd());
  }

  /** Seals an acknowledgement if one is due, and keeps a timer for the next. */
  private ackIfDue(): void {
    const leg = this.leg;
    // While down or awaiting the count, the count that opens the next stream says it all.
    if (leg === undefined || this.awaitingCount || this.failure !== undefined) return;
    const count = this.acks.due(Date.now());
    if (count !== undefined) {
      leg.send(leg.noise.sealAck(count));
      this.acks.acknowledged(count);
    }
    this.scheduleAck();
  }

  private scheduleAck(): void {
    const at = this.acks.deadline;
    if (at === undefined) {
      clearTimeout(this.ackTimer);
      this.ackTimer = undefined;
    } else if (this.ackTimer === undefined) {
      this.ackTimer = setTimeout(
        () => {
          this.ackTimer = undefined;
          this.ackIfDue();
        },
        Math.max(0, at - Date.now()),
      );
    }
  }

  /**
   * Finishes the stream once both sides ended (acknowledgements flow until then),
   * and lets it go once the host has every byte and has finished its own.
   */
  private settle(): void {
    const leg = this.leg;
    if (leg === undefined || this.failure !== undefined) return;
    if (this.ended && this.peerEnded && leg.noise.hasSentEnd && !leg.finSent) {
      leg.finSent = true;
      leg.finish();
    }
    if (!leg.finSent || this.replay.held > 0) return;
    if (leg.streamDone) {
      this.complete(leg);
    } else if (this.lingerTimer === undefined) {
      this.lingerTimer = setTimeout(() => {
        if (this.leg === leg && this.replay.held === 0) this.complete(leg);
      }, LINGER_MS);
      (this.lingerTimer as { unref?: () => void }).unref?.();
    }
  }

  /** Both sides ended and have every byte: the session is over. */
  private complete(leg: Leg): void {
    this.done = true;
    this.leg = undefined;
    this.clearTimers();
    void leg.flushed().finally(() => leg.link.shutdown());
    this.changed.notify();
  }

  // -------------------------------------------------------------------------
  // Failures and resumes
  // -------------------------------------------------------------------------

  /** `leg` failed with `err`: go down to be resumed if a new stream can mend it, else fail. */
  private legFailed(leg: Leg, err: unknown): void {
    if (this.leg !== leg || this.failure !== undefined) return;
    const error = toSessionError(err);
    if (!mendable(error)) {
      // Section 10.4: a broken session is abandoned with PROTOCOL_VIOLATION, not a FIN.
      if (error.kind === "protocol") leg.link.abandon(StreamCode.PROTOCOL_VIOLATION);
      this.fail(error);
      return;
    }
    try {
      // A code that said why (a limit, CLOSED) may have reached only the other half.
      leg.link.throwIfStopped();
    } catch (said) {
      const stopped = toSessionError(said);
      if (!mendable(stopped)) {
        this.fail(stopped);
        return;
      }
    }
    if (this.ended && this.peerEnded && this.replay.held === 0) {
      // Both sides have everything: nothing is left to resume.
      this.complete(leg);
      return;
    }
    this.leg = undefined;
    leg.link.shutdown();
    this.clearTimers();
    this.changed.notify();
    void this.rejoin(error);
  }

  /** Dials the relay again with the resume id until a stream comes back, the host says no, or the window ends. */
  private async rejoin(cause: SessionError): Promise<void> {
    const { windowMs, retryMs } = this.options;
    const deadline = Date.now() + windowMs;
    let previous: SessionError | undefined;
    while (this.failure === undefined) {
      try {
        const stream = await this.options.rejoin(this.resumeId, deadline, previous);
        if (this.failure !== undefined) {
          // The application dropped the session meanwhile.
          stream.link.abandon(StreamCode.CLOSED);
          stream.link.shutdown();
          return;
        }
        this.adopt(stream);
        return;
      } catch (err) {
        const error = toSessionError(err);
        if (error.kind === "unknown-session" || error.kind === "not-authorized") {
          const why = error.kind === "unknown-session" ? "the host no longer holds it" : "the host no longer serves this player";
          this.fail(new SessionError("session-lost", `session lost: ${why} (the stream had failed: ${cause.message})`));
          return;
        }
        previous = error;
      }
      const left = deadline - Date.now();
      if (left <= 0) break;
      await new Promise((resolve) => setTimeout(resolve, Math.min(retryMs, left)));
    }
    this.fail(
      new SessionError(
        "session-lost",
        `session lost: the relay and the host could not be reached again within ${windowMs / 1000}s (the stream had failed: ${cause.message})`,
      ),
    );
  }

  /** Takes `stream` as the session's stream: this side's count goes out first, then it waits for the host's. */
  private adopt(stream: SessionStream): void {
    const leg = new Leg(stream, (err) => this.legFailed(leg, err));
    this.leg = leg;
    this.current = stream;
    this.resumeId = stream.noise.resumeId;
    this.resumeCount++;
    const received = this.acks.delivered + this.inboxBytes;
    leg.send(leg.noise.sealAck(received));
    this.acks.acknowledged(received);
    this.awaitingCount = true;
    this.changed.notify();
    void this.pump(leg);
  }

  /** The session is over with `error`: the application sees it (what the host sent in full stays readable). */
  private fail(error: SessionError): void {
    if (this.failure !== undefined) return;
    this.failure = error;
    this.clearTimers();
    const leg = this.leg;
    this.leg = undefined;
    leg?.link.fail(error);
    leg?.link.shutdown();
    // After the host's end every byte it sent is here: the application may read it all.
    if (!this.readClosed && !this.peerEnded) this.readController?.error(error);
    this.changed.notify();
  }

  private clearTimers(): void {
    clearTimeout(this.ackTimer);
    clearTimeout(this.lingerTimer);
    this.ackTimer = undefined;
    this.lingerTimer = undefined;
  }
}
