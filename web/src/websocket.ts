/**
 * A player session's stream on a WebSocket (PROTOCOL.md section 17.6): binary
 * messages carry stream frames (section 17.2) whose DATA carries the control
 * messages and the Noise session; `PING` is answered with `PONG`; `STOP`, `RESET`
 * and `CLOSE` stand for QUIC's frames.
 *
 * A browser's `WebSocket` has no way to stop reading: what arrives is queued
 * whether the page reads or not (see src/session.ts).
 */

import { concat } from "./bytes.js";
import { CLOSE_CODES, describeCode } from "./codes.js";
import { FrameDecoder, encodeData, encodeFrame, type StreamFrame } from "./frames.js";
import { ReceivingLink, SessionError, type StreamLink, streamCodeError, toSessionError } from "./link.js";

/** The part of a WebSocket this module uses: the browser's, or a test's stand-in. */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  readonly bufferedAmount: number;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  addEventListener(type: "open" | "message" | "close" | "error", listener: (event: { data?: unknown }) => void): void;
}

/** Above this many bytes queued in the WebSocket, writes wait. */
const SEND_HIGH_WATER = 1 << 20;
/** How often a waiting write looks at the WebSocket's queue again; the browser gives no event for it. */
const DRAIN_POLL_MS = 5;

/** The browser's `WebSocket`, where there is one. */
export function defaultWebSocket(url: string): WebSocketLike {
  const Ctor = (globalThis as { WebSocket?: new (url: string) => WebSocketLike }).WebSocket;
  if (Ctor === undefined) throw new SessionError("connection", "this environment has no WebSocket");
  return new Ctor(url);
}

/** One WebSocket carrying one stream: frames in and out, DATA bytes buffered for readers. */
export class WebSocketLink extends ReceivingLink implements StreamLink {
  private readonly decoder = new FrameDecoder();
  private waiters: (() => void)[] = [];
  private lastSend = Date.now();
  private readonly keepAlive: ReturnType<typeof setInterval> | undefined;
  private isOpen = false;

  constructor(
    private readonly ws: WebSocketLike,
    keepAliveMs: number,
  ) {
    super();
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
      await this.pull(deadline);
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






  /** Waits while the WebSocket holds more than {@link SEND_HIGH_WATER} bytes not yet sent. */
  async drained(): Promise<void> {
    while (this.isOpen && this.ws.bufferedAmount > SEND_HIGH_WATER) {
      await new Promise((resolve) => setTimeout(resolve, DRAIN_POLL_MS));
    }
    this.throwIfStopped();
  }

  /** Records why the link ended, if nothing did before, and wakes every waiter. */
  override fail(error: SessionError): void {
    super.fail(error);
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
        this.receive(frame.data);
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
  protected pull(deadline: number): Promise<void> {
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
