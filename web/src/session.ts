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
 * The player offers every session as resumable (section 10.8): its hello carries
 * 32 zero bytes. A host that agrees answers "welcome, resumable", and the session
 * is a `ResumableSession` (src/resumable.ts), which outlives the stream under it
 * and whose replay window holds the host back; an older host answers "welcome",
 * and the session is as described here.
 *
 * A browser's `WebSocket` has no way to stop reading: what arrives is decrypted and
 * queued for the application whether it reads or not, so a page that never reads
 * holds what the host sends. The relay's stall timeout therefore never fires for a
 * browser player on WebSocket; its byte and rate limits do. A WebTransport stream
 * is read only as the application reads, so QUIC's flow control holds the host back
 * there, as for a native player. (In a resumable session the host's replay window
 * holds it back on either: it sends at most that far past what the page has read.)
 */

import { type Aead, defaultAead } from "./aead.js";
import { concat } from "./bytes.js";
import { StreamCode } from "./codes.js";
import { type SessionLimits, describeErrorCode, encodeConnect, takePlayerControl } from "./control.js";
import { SessionError, type StreamLink, takeNoiseMessage, toSessionError, withDeadline } from "./link.js";
import { type Hello, MAX_PLAINTEXT_LEN, NoiseError, PlayerHandshake, type Transport } from "./noise.js";
import { ResumableSession, type SessionStream } from "./resumable.js";
import { DEFAULT_REPLAY_WINDOW, DEFAULT_RESUME_WINDOW_MS } from "./resume.js";
import type { StaticKey } from "./statickey.js";
import { type WebSocketLike, WebSocketLink, defaultWebSocket } from "./websocket.js";
import { type WebTransportLike, WebTransportLink } from "./webtransport.js";

export {
  SessionError,
  type SessionErrorKind,
  type StreamLink,
  mendable,
  streamCodeError,
  takeNoiseMessage,
  toSessionError,
} from "./link.js";
export type { WebSocketLike } from "./websocket.js";

/** The way a session reaches the relay. */
export type TransportName = "webtransport" | "websocket";

/**
 * How far a stream's set-up has come: `relay` while the stream to the relay opens,
 * `host` once Connect is sent (the relay looks the host up and opens a stream to
 * it), `verdict` once the relay answered Connected (the host reads the hello and
 * decides whether it serves this player).
 */
export interface SetupStep {
  readonly step: "relay" | "host" | "verdict";
  readonly transport: TransportName;
}

/**
 * Where one stream to the relay goes: a stream of a WebTransport session, or a
 * WebSocket to a URL; and how many pool redirects were followed to get there
 * (PROTOCOL.md section 18.4; 0 when absent), which `Connect` carries.
 */
export type Route = ({ readonly webTransport: WebTransportLike } | { readonly url: string }) & { readonly redirects?: number };

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
  /** How many pool redirects were followed to reach this relay (0 by default): `Connect` carries it. */
  readonly redirects?: number;
  /** This player's static key: 32 secret bytes, or a {@link StaticKey} (a WebCrypto key the page cannot read out). */
  readonly playerSecret: Uint8Array | StaticKey;
  /** Opens the WebSocket (at once, or once a promise resolves); the global `WebSocket` by default. */
  readonly openWebSocket?: (url: string) => WebSocketLike | Promise<WebSocketLike>;
  /** Time for everything up to the verdict, in ms (the reference player allows 15 s). */
  readonly timeoutMs?: number;
  /**
   * Over WebSocket: send a `PING` after this long without sending anything, in ms
   * (2 s, as the reference player: a relay that restarted is noticed at the next
   * packet, well inside the host's resume window); 0 turns it off. Over
   * WebTransport, `RelayTransports` sends a keep-alive datagram instead.
   */
  readonly keepAliveMs?: number;
  /**
   * How long a resumable session whose stream failed looks for a new one, in ms
   * (30 s); 0 offers sessions that cannot be resumed (an empty hello payload).
   */
  readonly resumeWindowMs?: number;
  /** The most a resumable session sends before the host acknowledges it, in bytes (4 MiB; at most 16 MiB). */
  readonly replayWindow?: number;
  /** Where each resume attempt goes (WebTransport or WebSocket, as the page can); by default where the session first went. */
  readonly reroute?: (previous?: SessionError) => Route | Promise<Route>;
  /** How long to wait between two resume attempts that failed, in ms (500). */
  readonly resumeRetryMs?: number;
  /**
   * Told how far each stream's set-up has come: reaching the relay (and how), the
   * relay finding the host, the host deciding. For a page to say so in words; it
   * changes nothing.
   */
  readonly onStep?: (step: SetupStep) => void;
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
  /** How it reaches the relay (now: a resumed session may have moved). */
  readonly transport: TransportName;
  /** The relay's session id (for logs; it carries no authority; each resume has its own). */
  readonly sessionId: bigint;
  /** What the relay allows this session. */
  readonly limits: SessionLimits;
  /** The host id the session is encrypted to. */
  readonly hostId: Uint8Array;
  /** Whether the session survives the loss of its stream (the host agreed, section 10.8). */
  readonly resumable: boolean;
  /** How many times the session moved to a new stream. */
  readonly resumes: number;
  /** The host's bytes, in order; it closes at the host's authenticated end, and errors with a {@link SessionError}. */
  readonly readable: ReadableStream<Uint8Array>;
  /** Bytes for the host; `close()` sends the authenticated end. */
  readonly writable: WritableStream<Uint8Array>;
  /**
   * Ends the session at once without an end frame and closes its stream or
   * WebSocket: a plain session finishes its stream (the host sees a truncation), a
   * resumable one abandons it with `CLOSED`, so that the host ends it rather than
   * wait to resume it.
   */
  abort(): void;
}

/** How long to wait for the host's FIN after both ends are done, before closing the WebSocket anyway. */
export const LINGER_MS = 5000;

/** The reference player's time for a session's set-up, in ms. */
const SETUP_TIMEOUT_MS = 15_000;

/** How long a player waits between two resume attempts that failed, in ms, as the reference player. */
const RESUME_RETRY_MS = 500;

/**
 * Connects to a host through the relay: Connect and hello, then Connected or Error,
 * then the host's reply and verdict. Resolves once the host has welcomed this
 * player; rejects with a {@link SessionError} otherwise.
 */
export async function connectPlayer(options: ConnectOptions): Promise<PlayerSession> {
  const timeoutMs = options.timeoutMs ?? SETUP_TIMEOUT_MS;
  const deadline = Date.now() + timeoutMs;
  let first: Route;
  const redirects = options.redirects ?? 0;
  if (options.webTransport !== undefined) first = { webTransport: options.webTransport, redirects };
  else if (options.url !== undefined) first = { url: options.url, redirects };
  else throw new SessionError("connection", "no way to the relay: neither a WebTransport session nor a WebSocket URL");
  const windowMs = options.resumeWindowMs ?? DEFAULT_RESUME_WINDOW_MS;
  const stream = await openStream(options, first, windowMs > 0 ? "resumable" : "plain", deadline);
  if (!stream.noise.resumable) return new Session(stream, options.hostId.slice());
  const reroute = options.reroute ?? (() => first);
  return new ResumableSession(stream, {
    hostId: options.hostId.slice(),
    windowMs,
    replayWindow: options.replayWindow ?? DEFAULT_REPLAY_WINDOW,
    retryMs: options.resumeRetryMs ?? RESUME_RETRY_MS,
    rejoin: async (resumeId, until, previous) =>
      openStream(options, await reroute(previous), { resume: resumeId }, Math.min(until, Date.now() + timeoutMs)),
  });
}

/**
 * One stream to the host, set up: Connect and a hello asking `hello`, the relay's
 * answer, the host's reply and verdict. Resolves with the stream once the host
 * welcomed the player or resumed its session; rejects with a {@link SessionError}
 * otherwise (`not-authorized`, `unknown-session`, the relay's refusal, …).
 */
export async function openStream(options: ConnectOptions, route: Route, hello: Hello, deadline: number): Promise<SessionStream> {
  const handshake = await PlayerHandshake.start(options.playerSecret, options.hostId, {
    aead: options.aead ?? defaultAead(),
    hello,
    ...(options.ephemeralSecretForTesting ? { ephemeralSecretForTesting: options.ephemeralSecretForTesting } : {}),
  });
  let link: StreamLink;
  const transport: TransportName = "webTransport" in route ? "webtransport" : "websocket";
  const step = (name: SetupStep["step"]) => options.onStep?.({ step: name, transport });
  step("relay");
  if ("webTransport" in route) {
    link = new WebTransportLink(route.webTransport);
  } else {
    const openWebSocket = options.openWebSocket ?? defaultWebSocket;
    const opening = Promise.resolve().then(() => openWebSocket(route.url));
    let ws: WebSocketLike;
    try {
      ws = await withDeadline(opening, deadline);
    } catch (err) {
      // One that opens after the deadline is closed unused.
      void opening.then(
        (late) => late.close(),
        () => {},
      );
      throw toSessionError(err);
    }
    link = new WebSocketLink(ws, options.keepAliveMs ?? 2000);
  }
  try {
    await link.opened(deadline);
    // Connect and hello in one go: the relay reads the hello before it looks the
    // host up, and it saves a round trip (section 9.1).
    link.sendStream(concat(encodeConnect(options.hostId, route.redirects ?? 0), handshake.hello));
    step("host");
    const answer = await link.read((buf) => takePlayerControl(buf), deadline);
    if (answer.kind === "error") {
      throw new SessionError(
        "relay-refused",
        `the relay refused the session: ${describeErrorCode(answer.code)}${answer.reason ? ` (${answer.reason})` : ""}`,
        answer.code,
      );
    }
    if (answer.kind === "redirect") {
      // The members the relay named: `RelayTransports` follows them (src/pool.ts
      // decides where); said plainly where none of them serves the session.
      throw new SessionError(
        "redirected",
        `this relay is part of a pool; the host is at ${answer.members[0] ?? "another member"}`,
        undefined,
        answer.members,
      );
    }
    step("verdict");
    const reply = await link.read(takeNoiseMessage, deadline);
    const expect = await handshake.readReply(reply);
    const verdictFrame = await link.read(takeNoiseMessage, deadline);
    const opened = await expect.openVerdict(verdictFrame);
    if (opened.verdict === "not-authorized" || opened.verdict === "unknown-session") {
      // Leave exactly as a served player that leaves at once (section 9.6): end,
      // FIN, then read to the host's FIN. No reset: a code would tell the relay
      // which players were refused.
      link.sendStream(await opened.refused.sealEnd());
      link.finish();
      await link.drainToEnd(Date.now() + LINGER_MS);
      link.shutdown();
      throw opened.verdict === "not-authorized"
        ? new SessionError("not-authorized", "the host does not serve this player's key")
        : new SessionError("unknown-session", "the host holds no such session to resume");
    }
    return { link, transport, noise: opened.transport, sessionId: answer.sessionId, limits: answer.limits };
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

/** A session the host did not make resumable: pumps the host's frames into `readable`, seals `writable`'s. */
class Session implements PlayerSession {
  readonly readable: ReadableStream<Uint8Array>;
  readonly writable: WritableStream<Uint8Array>;
  readonly transport: TransportName;
  readonly sessionId: bigint;
  readonly limits: SessionLimits;
  readonly resumable = false;
  readonly resumes = 0;
  private readonly link: StreamLink;
  private readonly noise: Transport;
  private sentFin = false;
  private receiveDone = false;

  constructor(
    stream: SessionStream,
    readonly hostId: Uint8Array,
  ) {
    this.link = stream.link;
    this.noise = stream.noise;
    this.transport = stream.transport;
    this.sessionId = stream.sessionId;
    this.limits = stream.limits;
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
