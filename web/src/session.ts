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
import { concat } from "./bytes.js";
import { StreamCode } from "./codes.js";
import { type SessionLimits, describeErrorCode, encodeConnect, takePlayerControl } from "./control.js";
import { SessionError, type StreamLink, toSessionError } from "./link.js";
import { MAX_PLAINTEXT_LEN, NoiseError, PlayerHandshake, type Transport } from "./noise.js";
import type { StaticKey } from "./statickey.js";
import { type WebSocketLike, WebSocketLink, defaultWebSocket } from "./websocket.js";
import { type WebTransportLike, WebTransportLink } from "./webtransport.js";

export { SessionError, type SessionErrorKind, type StreamLink, streamCodeError, toSessionError } from "./link.js";
export type { WebSocketLike } from "./websocket.js";

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

/** `wss://HOST:PORT/blindrelay/1`, with an IPv6 address in brackets. */
export function relayWebSocketUrl(host: string, port: number): string {
  const name = host.includes(":") && !host.startsWith("[") ? `[${host}]` : host;
  return `wss://${name}:${port}/blindrelay/1`;
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
