/**
 * A player session through the relay (PROTOCOL.md sections 9.1, 17.6 and 19.1), on
 * one of the two ways a browser has in: a bidirectional stream of a WebTransport
 * session, or a WebSocket.
 *
 * ```text
 * player                                  relay                       host
 *   WebTransport stream, or WebSocket wss://relay:port/blindrelay/1 (TLS, ALPN http/1.1)
 *   Connect(36) · hello(98)          ==>
 *                                    <==  Connected(48)   (or Error / Redirect, then FIN)
 *                                    <==  reply(50) · verdict(20)  (from the host)
 *   sealed frames …                  <=>  sealed frames …
 *   end(19) · FIN                    <=>  end(19) · FIN
 * ```
 *
 * A WebTransport stream is a control stream exactly as a native player's QUIC
 * stream: its bytes are the control messages and the Noise session, and resets and
 * stop-sendings carry the protocol's stream codes (src/webtransport.ts). Over a
 * WebSocket, binary messages carry stream frames (section 17.2) whose DATA carries
 * the same bytes; `PING` is answered with `PONG`; `STOP`, `RESET` and `CLOSE` stand
 * for QUIC's frames. Either way the application gets a `ReadableStream` and a
 * `WritableStream` of plaintext, and a session that ends early ends with an error
 * whose kind names the code's meaning (the relay's limits, the host leaving, a
 * refusal).
 *
 * A browser's `WebSocket` has no way to stop reading: what arrives is decrypted and
 * queued for the application whether it reads or not, so a page that never reads
 * holds what the host sends. The relay's stall timeout therefore never fires for a
 * browser player on WebSocket; its byte and rate limits do. A WebTransport stream
 * is read only as the application reads, so QUIC's flow control holds the host back
 * there, as for a native player.
 */

import { type Aead, defaultAead } from "./aead.js";
import { ByteQueue, concat } from "./bytes.js";
import { CLOSE_CODES, STREAM_CODES, StreamCode, describeCode } from "./codes.js";
import { ControlError, type SessionLimits, describeErrorCode, encodeConnect, takePlayerControl } from "./control.js";
import { FrameDecoder, FrameError, encodeData, encodeFrame, type StreamFrame } from "./frames.js";
import { MAX_PLAINTEXT_LEN, NoiseError, PlayerHandshake, type Transport } from "./noise.js";
import type { StaticKey } from "./statickey.js";
import { type WebTransportLike, WebTransportLink } from "./webtransport.js";

/** The part of a WebSocket this module uses: the browser's, or a test's stand-in. */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  readonly bufferedAmount: number;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: "open" | "message" | "close" | "error", listener: (event: { data?: unknown }) => void): void;
}

/** The way a session reaches the relay. */
export type TransportName = "webtransport" | "websocket";

/** Options of {@link connectPlayer}. */
export interface ConnectOptions {
  /**
   * A ready WebTransport session with the relay: the session runs on a new
   * bidirectional stream of it. Without one, the session opens a WebSocket to `url`.
   */
  readonly webTransport?: WebTransportLike;
  /** The relay's WebSocket address, `wss://HOST:PORT/blindrelay/1` ({@link relayWebSocketUrl}); needed without `webTransport`. */
  readonly url?: string;
  /** The host id: the host's 32-byte static public key, from its ticket. */
  readonly hostId: Uint8Array;
  /** This player's static key: 32 secret bytes, or a {@link StaticKey} (a WebCrypto key the page cannot read out). */
  readonly playerSecret: Uint8Array | StaticKey;
  /** Opens the WebSocket; the global `WebSocket` by default. */
  readonly openWebSocket?: (url: string) => WebSocketLike;
  /** Time for everything up to the verdict, in ms (the reference player allows 15 s). */
  readonly timeoutMs?: number;
  /** Over WebSocket: send a `PING` after this long without sending anything, in ms (reference: 10 s); 0 turns it off. QUIC keeps a WebTransport session alive itself. */
  readonly keepAliveMs?: number;
  /** AES-GCM implementation; WebCrypto's where available. */
  readonly aead?: Aead;
  /** For the pinned test vector only: a fixed ephemeral secret. */
  readonly ephemeralSecretForTesting?: Uint8Array;
}

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

/** `wss://HOST:PORT/blindrelay/1`, with an IPv6 address in brackets. */
export function relayWebSocketUrl(host: string, port: number): string {
  const name = host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
  return `wss://${name}:${port}/blindrelay/1`;
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
  };
  const kind = kinds[code] ?? "reset";
  const lead = kind === "host-left" ? "host left" : kind === "reset" ? "session reset" : kind.replace("-", " ");
  return new SessionError(kind, `${lead}: ${words}`, code);
}

/** An established session: plaintext both ways. */
export interface PlayerSession {
  /** How it reaches the relay. */
  readonly transport: TransportName;
  /** The relay's session id (for logs; it carries no authority). */
  readonly sessionId: bigint;
  /** What the relay allows this session. */
  readonly limits: SessionLimits;
  /** The host id the session is encrypted to. */
  readonly hostId: Uint8Array;
  /** The host's bytes, in order; it closes at the host's authenticated end, and errors with a {@link SessionError}. */
  readonly readable: ReadableStream<Uint8Array>;
  /** Bytes for the host; `close()` sends the authenticated end. */
  readonly writable: WritableStream<Uint8Array>;
  /** Ends the session at once without an end frame (the host sees a truncation) and closes its stream or WebSocket. */
  abort(): void;
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

/** Above this many bytes queued in the WebSocket, writes wait. */
const SEND_HIGH_WATER = 1 << 20;
/** How often a waiting write looks at the WebSocket's queue again; the browser gives no event for it. */
const DRAIN_POLL_MS = 5;
/** How long to wait for the host's FIN after both ends are done, before closing the WebSocket anyway. */
const LINGER_MS = 5000;

/**
 * Connects to a host through the relay: Connect and hello, then Connected or Error,
 * then the host's reply and verdict. Resolves once the host has welcomed this
 * player; rejects with a {@link SessionError} otherwise.
 */
export async function connectPlayer(options: ConnectOptions): Promise<PlayerSession> {
  const timeoutMs = options.timeoutMs ?? 15000;
  const handshake = await PlayerHandshake.start(options.playerSecret, options.hostId, {
    aead: options.aead ?? defaultAead(),
    ...(options.ephemeralSecretForTesting ? { ephemeralSecretForTesting: options.ephemeralSecretForTesting } : {}),
  });
  const transport: TransportName = options.webTransport !== undefined ? "webtransport" : "websocket";
  let link: StreamLink;
  if (options.webTransport !== undefined) {
    link = new WebTransportLink(options.webTransport);
  } else {
    if (options.url === undefined) throw new SessionError("connection", "no way to the relay: neither a WebTransport session nor a WebSocket URL");
    const openWebSocket = options.openWebSocket ?? defaultWebSocket;
    link = new WebSocketLink(openWebSocket(options.url), options.keepAliveMs ?? 10000);
  }
  const deadline = Date.now() + timeoutMs;
  try {
    await link.opened(deadline);
    // Connect and hello in one go: the relay reads the hello before it looks the
    // host up, and it saves a round trip (section 9.1).
    link.sendStream(concat(encodeConnect(options.hostId), handshake.hello));
    const answer = await link.read((buf) => takePlayerControl(buf), deadline);
    if (answer.kind === "error") {
      throw new SessionError(
        "relay-refused",
        `the relay refused the session: ${describeErrorCode(answer.code)}${answer.reason ? ` (${answer.reason})` : ""}`,
        answer.code,
      );
    }
    if (answer.kind === "redirect") {
      // Following it would mean opening sessions to another origin, which the
      // page's Content-Security-Policy does not allow (web/README.md says what it
      // would take). Said plainly instead of as a failure with no reason.
      throw new SessionError(
        "redirected",
        `this relay is part of a pool; the host is at ${answer.members[0] ?? "another member"}`,
        undefined,
        answer.members,
      );
    }
    const reply = await link.read(takeNoiseMessage, deadline);
    const expect = await handshake.readReply(reply);
    const verdictFrame = await link.read(takeNoiseMessage, deadline);
    const opened = await expect.openVerdict(verdictFrame);
    if (opened.verdict === "not-authorized") {
      // Leave exactly as a served player that leaves at once (section 9.6): end,
      // FIN, then read to the host's FIN. No reset: a code would tell the relay
      // which players were refused.
      link.sendStream(await opened.refused.sealEnd());
      link.finish();
      await link.drainToEnd(Date.now() + LINGER_MS);
      link.shutdown();
      throw new SessionError("not-authorized", "the host does not serve this player's key");
    }
    return new Session(link, transport, opened.transport, answer.sessionId, answer.limits, options.hostId.slice());
  } catch (err) {
    const error = toSessionError(err);
    if (error.kind === "protocol" || error.kind === "truncated") {
      // Section 10.4: abandon the stream with PROTOCOL_VIOLATION rather than a FIN.
      link.abandon(StreamCode.PROTOCOL_VIOLATION);
    } else if (error.kind === "timeout") {
      link.abandon(StreamCode.CANCELLED);
    }
    link.shutdown();
    throw error;
  }
}

function defaultWebSocket(url: string): WebSocketLike {
  const Ctor = (globalThis as { WebSocket?: new (url: string) => WebSocketLike }).WebSocket;
  if (Ctor === undefined) throw new SessionError("connection", "this environment has no WebSocket");
  return new Ctor(url);
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

/** Takes one Noise message (2-byte length, then the message) off the front of `buf` if it has all arrived. */
export function takeNoiseMessage(buf: Uint8Array): { message: Uint8Array; used: number } | undefined {
  if (buf.length < 2) return undefined;
  const len = ((buf[0] ?? 0) << 8) | (buf[1] ?? 0);
  if (buf.length < 2 + len) return undefined;
  return { message: buf.slice(2, 2 + len), used: 2 + len };
}

/** The session after the verdict: pumps the host's frames into `readable`, seals `writable`'s. */
class Session implements PlayerSession {
  readonly readable: ReadableStream<Uint8Array>;
  readonly writable: WritableStream<Uint8Array>;
  private sentFin = false;
  private receiveDone = false;

  constructor(
    private readonly link: StreamLink,
    readonly transport: TransportName,
    private readonly noise: Transport,
    readonly sessionId: bigint,
    readonly limits: SessionLimits,
    readonly hostId: Uint8Array,
  ) {
    this.readable = new ReadableStream<Uint8Array>({
      start: (controller) => {
        // The pump runs for the life of the session and ends the stream itself.
        void this.pump(controller);
      },
    });
    this.writable = new WritableStream<Uint8Array>({
      write: (chunk) => this.write(chunk),
      close: () => this.finish(),
      abort: () => this.abort(),
    });
  }

  abort(): void {
    // As a dropped reference SecureStream: FIN without end, which the host reads as truncation.
    if (!this.sentFin) {
      this.sentFin = true;
      this.link.finish();
    }
    this.link.shutdown();
  }

  private async write(chunk: Uint8Array): Promise<void> {
    this.link.throwIfStopped();
    for (let at = 0; at < chunk.length; at += MAX_PLAINTEXT_LEN) {
      const sealed = await this.guard(this.noise.seal(chunk.subarray(at, at + MAX_PLAINTEXT_LEN)));
      this.link.throwIfStopped();
      this.link.sendStream(sealed);
      await this.link.drained();
    }
  }

  private async finish(): Promise<void> {
    this.link.throwIfStopped();
    this.link.sendStream(await this.guard(this.noise.sealEnd()));
    this.link.finish();
    this.sentFin = true;
    this.closeWhenDone();
  }

  private async pump(controller: ReadableStreamDefaultController<Uint8Array>): Promise<void> {
    try {
      for (;;) {
        const message = await this.link.read(takeNoiseMessage, Infinity);
        const opened = await this.noise.open(message);
        if (opened.type === "data") controller.enqueue(opened.data);
        if (opened.type === "end") break;
      }
      // After the host's end nothing more is opened; what follows is discarded.
      this.link.discardData();
      controller.close();
    } catch (err) {
      let error = toSessionError(err);
      if (error.kind === "connection" && this.link.finReceived()) {
        // The stream ended cleanly underneath but before the host's end frame.
        error = toSessionError(new NoiseError("truncated", "session truncated: the stream ended without an authenticated end of stream"));
      }
      if (error.kind === "protocol" || error.kind === "truncated") this.link.abandon(StreamCode.PROTOCOL_VIOLATION);
      controller.error(error);
      this.link.fail(error);
    }
    this.receiveDone = true;
    this.closeWhenDone();
  }

  private closeWhenDone(): void {
    if (this.receiveDone && this.sentFin) {
      void this.link.drainToEnd(Date.now() + LINGER_MS).finally(() => this.link.shutdown());
    }
  }

  private async guard<T>(work: Promise<T>): Promise<T> {
    try {
      return await work;
    } catch (err) {
      const error = toSessionError(err);
      this.link.abandon(StreamCode.PROTOCOL_VIOLATION);
      this.link.fail(error);
      throw error;
    }
  }
}

/** One WebSocket carrying one stream: frames in and out, DATA bytes buffered for readers. */
class WebSocketLink implements StreamLink {
  private readonly decoder = new FrameDecoder();
  /** Stream bytes not read yet. A queue, not a concatenation per frame: a page busy
   * decrypting falls behind the socket, and its backlog can reach megabytes. */
  private readonly received = new ByteQueue();
  private fin = false;
  private discarding = false;
  private ended: SessionError | undefined;
  private stopped: SessionError | undefined;
  private waiters: (() => void)[] = [];
  private lastSend = Date.now();
  private readonly keepAlive: ReturnType<typeof setInterval> | undefined;
  private isOpen = false;

  constructor(
    private readonly ws: WebSocketLike,
    keepAliveMs: number,
  ) {
    ws.binaryType = "arraybuffer";
    // WebSocket.OPEN; a socket handed over already open sends no "open" event.
    this.isOpen = ws.readyState === 1;
    ws.addEventListener("open", () => {
      this.isOpen = true;
      this.wake();
    });
    ws.addEventListener("message", (event) => this.onMessage(event.data));
    ws.addEventListener("error", () => this.fail(new SessionError("connection", "the WebSocket to the relay failed")));
    ws.addEventListener("close", () => {
      this.isOpen = false;
      this.fail(new SessionError("connection", "the connection to the relay closed"));
    });
    if (keepAliveMs > 0) {
      this.keepAlive = setInterval(() => {
        if (this.isOpen && Date.now() - this.lastSend >= keepAliveMs) {
          this.sendFrame({ type: "ping", opaque: crypto.getRandomValues(new Uint8Array(8)) });
        }
      }, keepAliveMs);
      // In node, a pending keep-alive must not hold the process open.
      (this.keepAlive as { unref?: () => void }).unref?.();
    }
  }

  /** Waits for the WebSocket to open. */
  async opened(deadline: number): Promise<void> {
    while (!this.isOpen) {
      if (this.ended) throw this.ended;
      await this.wait(deadline);
    }
  }

  /** Sends stream bytes as DATA frames, in one message. */
  sendStream(bytes: Uint8Array): void {
    if (bytes.length > 0) this.send(encodeData(bytes));
  }

  sendFrame(frame: StreamFrame): void {
    this.send(encodeFrame(frame));
  }

  finish(): void {
    this.sendFrame({ type: "fin" });
  }

  /** Resets this side's direction and stops the other's, both with `code`. */
  abandon(code: number): void {
    this.send(concat(encodeFrame({ type: "reset", code }), encodeFrame({ type: "stop", code })));
  }

  /** Takes what `parse` finds in the received bytes, waiting for more as needed. */
  async read<T>(parse: (buf: Uint8Array) => { message: T; used: number } | undefined, deadline: number): Promise<T> {
    for (;;) {
      // `parse` copies what it keeps: the view is reused by the next push.
      const taken = parse(this.received.view());
      if (taken !== undefined) {
        this.received.consume(taken.used);
        return taken.message;
      }
      if (this.fin) {
        throw new NoiseError("truncated", "session truncated: the stream ended without an authenticated end of stream");
      }
      if (this.ended) throw this.ended;
      await this.wait(deadline);
    }
  }

  /** Reads and discards until the other side's direction ends, or `deadline`. */
  async drainToEnd(deadline: number): Promise<void> {
    this.discardData();
    while (!this.fin && this.ended === undefined && Date.now() < deadline) {
      try {
        await this.wait(deadline);
      } catch {
        return;
      }
    }
  }

  /** From now on, DATA that arrives is dropped unread. */
  discardData(): void {
    this.discarding = true;
    this.received.clear();
  }

  finReceived(): boolean {
    return this.fin;
  }

  /** Throws if the other side asked this one to stop sending, or the link is gone. */
  throwIfStopped(): void {
    if (this.stopped) throw this.stopped;
    if (this.ended && !this.fin) throw this.ended;
  }

  /** Waits while the WebSocket holds more than {@link SEND_HIGH_WATER} bytes not yet sent. */
  async drained(): Promise<void> {
    while (this.isOpen && this.ws.bufferedAmount > SEND_HIGH_WATER) {
      await new Promise((resolve) => setTimeout(resolve, DRAIN_POLL_MS));
    }
    this.throwIfStopped();
  }

  /** Records why the link ended, if nothing did before, and wakes every waiter. */
  fail(error: SessionError): void {
    this.ended ??= error;
    this.wake();
  }

  /** Closes the WebSocket and stops the keep-alive. */
  shutdown(): void {
    if (this.keepAlive !== undefined) clearInterval(this.keepAlive);
    this.fail(new SessionError("connection", "the session is closed"));
    try {
      this.ws.close(1000);
    } catch {
      // Already closing: nothing more to do.
    }
  }

  private send(bytes: Uint8Array): void {
    if (!this.isOpen) return;
    this.lastSend = Date.now();
    this.ws.send(bytes);
  }

  private onMessage(data: unknown): void {
    if (!(data instanceof ArrayBuffer)) {
      // Section 17.6: a text message is a protocol error that ends the connection.
      this.protocolFailure(new SessionError("protocol", "the relay sent a text message"));
      return;
    }
    this.decoder.push(new Uint8Array(data));
    try {
      for (let frame = this.decoder.next(); frame !== undefined; frame = this.decoder.next()) {
        this.onFrame(frame);
      }
    } catch (err) {
      this.protocolFailure(toSessionError(err));
      return;
    }
    this.wake();
  }

  private onFrame(frame: StreamFrame): void {
    switch (frame.type) {
      case "data":
        if (!this.fin && !this.discarding) this.received.push(frame.data);
        break;
      case "fin":
        this.fin = true;
        break;
      case "reset":
        this.fail(streamCodeError(frame.code));
        break;
      case "stop":
        this.stopped ??= streamCodeError(frame.code);
        break;
      case "close":
        this.fail(
          new SessionError(
            "closed",
            `the relay closed the connection: ${describeCode(CLOSE_CODES, "close code", frame.code)}${frame.reason ? ` (${frame.reason})` : ""}`,
            frame.code,
          ),
        );
        break;
      case "ping":
        this.sendFrame({ type: "pong", opaque: frame.opaque });
        break;
      case "pong":
        break;
    }
  }

  private protocolFailure(error: SessionError): void {
    this.fail(error);
    try {
      this.ws.close(1002);
    } catch {
      // Already closing.
    }
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }

  /** Resolves at the next event on the link; rejects with a timeout at `deadline`. */
  private wait(deadline: number): Promise<void> {
    return new Promise((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      if (Number.isFinite(deadline)) {
        timer = setTimeout(
          () => reject(new SessionError("timeout", "the session was not set up in time")),
          Math.max(0, deadline - Date.now()),
        );
      }
      this.waiters.push(() => {
        if (timer !== undefined) clearTimeout(timer);
        resolve();
      });
    });
  }
}
