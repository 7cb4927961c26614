/**
 * A `WebSocket` for the host's pages that reaches the host's own origin through
 * the tunnel: a service worker never sees a page's WebSockets, and the relay has
 * nothing behind `wss://<host's origin>/socket`, so a media server's web app
 * (Jellyfin's `/socket`, Plex's notifications) would get no connection at all.
 *
 * For a URL of the page's own origin (relative, or `ws:`/`wss:`/`http:`/`https:` to
 * the same host and port), the socket opens its own end-to-end session to the host,
 * as the page's other requests do, writes the HTTP/1.1 Upgrade request into it
 * (with the tunnel's `Cookie` header for the path), checks the `101` and its
 * `Sec-WebSocket-Accept`, then speaks RFC 6455's client framing over the session
 * (src/rfc6455.ts). The relay forwards only ciphertext; the host hands the bytes to
 * its server. Anything else (another origin, the relay's own paths) gets the
 * browser's `WebSocket`, untouched.
 *
 * It behaves as the browser's for the app: `readyState`, `onopen`/`onmessage`/
 * `onclose`/`onerror` and `addEventListener`, `binaryType` (`blob` or
 * `arraybuffer`), `send` of a string, `ArrayBuffer`, view or `Blob` in order,
 * `bufferedAmount`, `close(code, reason)` with the browser's checks, `protocol`.
 * What differs: a message over 16 MiB is refused (the server gets close 1009, the
 * page an error and 1006), and the session's set-up comes before the handshake.
 */

import type { PlayerSession } from "./session.js";
import {
  ClientConnection,
  CloseStatus,
  MAX_CLOSE_REASON_BYTES,
  MAX_MESSAGE_BYTES,
  type UpgradeResponse,
  WsProtocolError,
  type WsClosed,
  checkUpgradeResponse,
  encodeUpgradeRequest,
  readUpgradeResponse,
} from "./rfc6455.js";

/** What a tunnelled socket needs from the page. */
export interface HostSocketEnvironment {
  /** The page's location: its origin and the base its relative URLs resolve against. */
  readonly origin: string;
  readonly baseUrl: () => string;
  /** Opens an end-to-end session to the host. */
  readonly open: () => Promise<PlayerSession>;
  /** The tunnel's `Cookie` header for a request to `url` (an `https:` URL), if its jar has one. */
  readonly cookie: (url: URL) => Promise<string | undefined>;
  readonly userAgent?: string;
  /** How long the server has to answer the handshake, and to answer a close, in ms. */
  readonly handshakeTimeoutMs?: number;
  readonly closeTimeoutMs?: number;
  readonly maxMessageBytes?: number;
}

/** The browser's `WebSocket` constructor, as the page had it before this module replaced it. */
export type WebSocketConstructor = new (url: string | URL, protocols?: string | string[]) => WebSocket;

const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;

const HANDSHAKE_TIMEOUT_MS = 30_000;
const CLOSE_TIMEOUT_MS = 10_000;

/** Paths the relay answers itself: its WebSocket, and the player's files. */
function relayPath(pathname: string): boolean {
  return pathname === "/blindrelay/1" || pathname === "/.blindrelay" || pathname.startsWith("/.blindrelay/");
}

/**
 * A `WebSocket` constructor for the page: same-origin URLs go through the tunnel,
 * anything else to `Native`. `instanceof` holds for sockets of either kind.
 */
export function tunnelledWebSocket(Native: WebSocketConstructor, env: HostSocketEnvironment): WebSocketConstructor {
  const page = new URL(env.origin);
  class HostWebSocket extends EventTarget {
    static readonly CONNECTING = CONNECTING;
    static readonly OPEN = OPEN;
    static readonly CLOSING = CLOSING;
    static readonly CLOSED = CLOSED;

    readonly url!: string;
    readonly extensions = "";
    #protocol = "";
    #readyState = CONNECTING;
    #binaryType: BinaryType = "blob";
    #buffered = 0;
    #session: PlayerSession | undefined;
    #writer: WritableStreamDefaultWriter<Uint8Array> | undefined;
    #connection: ClientConnection | undefined;
    /** Writes, one after another in the order the page made them (a `Blob` is read first). */
    #writing: Promise<void> = Promise.resolve();
    #closeTimer: ReturnType<typeof setTimeout> | undefined;
    #handlers = new Map<string, ((this: WebSocket, event: Event) => unknown) | null>();

    constructor(url: string | URL, protocols: string | string[] = []) {
      const target = webSocketUrl(url, env.baseUrl());
      const list = typeof protocols === "string" ? [protocols] : [...protocols];
      const sameOrigin = new URL(target.href.replace(/^ws/, "http")).origin === page.origin;
      if (!sameOrigin || relayPath(target.pathname)) {
        // Not the host's: the browser's own socket, as if this module were not there.
        return new Native(target.href, list) as unknown as HostWebSocket;
      }
      super();
      for (const p of list) {
        if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(p)) throw new DOMException(`"${p}" is not a valid subprotocol`, "SyntaxError");
      }
      if (new Set(list).size !== list.length) throw new DOMException("a subprotocol is named twice", "SyntaxError");
      this.url = target.href;
      for (const type of ["open", "message", "error", "close"]) {
        this.addEventListener(type, (event) => this.#handlers.get(type)?.call(this as unknown as WebSocket, event));
      }
      void this.#run(target, list);
    }

    static override [Symbol.hasInstance](value: unknown): boolean {
      return Function.prototype[Symbol.hasInstance].call(HostWebSocket, value) || value instanceof Native;
    }

    get readyState(): number {
      return this.#readyState;
    }
    get protocol(): string {
      return this.#protocol;
    }
    get bufferedAmount(): number {
      return this.#buffered;
    }
    get binaryType(): BinaryType {
      return this.#binaryType;
    }
    set binaryType(value: BinaryType) {
      // The browser ignores a value it does not know.
      if (value === "blob" || value === "arraybuffer") this.#binaryType = value;
    }
    get onopen() {
      return this.#handlers.get("open") ?? null;
    }
    set onopen(f) {
      this.#handlers.set("open", typeof f === "function" ? f : null);
    }
    get onmessage() {
      return this.#handlers.get("message") ?? null;
    }
    set onmessage(f) {
      this.#handlers.set("message", typeof f === "function" ? f : null);
    }
    get onerror() {
      return this.#handlers.get("error") ?? null;
    }
    set onerror(f) {
      this.#handlers.set("error", typeof f === "function" ? f : null);
    }
    get onclose() {
      return this.#handlers.get("close") ?? null;
    }
    set onclose(f) {
      this.#handlers.set("close", typeof f === "function" ? f : null);
    }

    send(data: string | ArrayBufferLike | Blob | ArrayBufferView): void {
      if (this.#readyState === CONNECTING) throw new DOMException("the WebSocket is still connecting", "InvalidStateError");
      let size: number;
      let bytes: () => Promise<string | Uint8Array>;
      if (typeof data === "string") {
        const text = new TextEncoder().encode(data);
        size = text.length;
        bytes = async () => data;
      } else if (data instanceof Blob) {
        size = data.size;
        bytes = async () => new Uint8Array(await data.arrayBuffer());
      } else if (ArrayBuffer.isView(data)) {
        const copy = new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
        size = copy.length;
        bytes = async () => copy;
      } else if (data instanceof ArrayBuffer || (typeof SharedArrayBuffer !== "undefined" && data instanceof SharedArrayBuffer)) {
        const copy = new Uint8Array(data).slice();
        size = copy.length;
        bytes = async () => copy;
      } else {
        // Anything else is sent as its string, as the browser's WebSocket does.
        const text = String(data);
        size = new TextEncoder().encode(text).length;
        bytes = async () => text;
      }
      // After a close, the browser counts what is sent and drops it.
      this.#buffered += size;
      if (this.#readyState !== OPEN) return;
      this.#write(async () => {
        const frame = this.#connection?.message(await bytes());
        return frame;
      }, size);
    }

    close(code?: number, reason?: string): void {
      if (code !== undefined && code !== 1000 && (code < 3000 || code > 4999)) {
        throw new DOMException(`close code ${code} is neither 1000 nor in 3000-4999`, "InvalidAccessError");
      }
      if (reason !== undefined && new TextEncoder().encode(reason).length > MAX_CLOSE_REASON_BYTES) {
        throw new DOMException(`a close reason is at most ${MAX_CLOSE_REASON_BYTES} bytes`, "SyntaxError");
      }
      if (this.#readyState === CLOSING || this.#readyState === CLOSED) return;
      if (this.#readyState === CONNECTING) {
        // As a browser: closing before the handshake ends fails the connection.
        this.#readyState = CLOSING;
        this.#finish({ code: CloseStatus.abnormal, reason: "", wasClean: false, failure: "closed before the connection was established" });
        return;
      }
      this.#readyState = CLOSING;
      const frame = this.#connection?.close(code, reason ?? "");
      if (frame !== undefined) this.#write(async () => frame, 0);
      this.#closeTimer = setTimeout(
        () => this.#finish(this.#connection?.lost("the server did not answer the close") ?? lostConnection()),
        env.closeTimeoutMs ?? CLOSE_TIMEOUT_MS,
      );
    }

    /** Opens the session, runs the handshake, then reads the server's frames until the end. */
    async #run(target: URL, protocols: string[]): Promise<void> {
      let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
      try {
        const session = await env.open();
        this.#session = session;
        if (this.#readyState !== CONNECTING) {
          session.abort();
          return;
        }
        this.#writer = session.writable.getWriter();
        reader = session.readable.getReader();
        const keyBytes = crypto.getRandomValues(new Uint8Array(16));
        const key = btoa(String.fromCharCode(...keyBytes));
        const http = new URL(target.href.replace(/^ws/, "http"));
        const cookie = await env.cookie(http).catch(() => undefined);
        await this.#writer.write(
          encodeUpgradeRequest({
            target: target.pathname + target.search,
            host: target.host,
            origin: env.origin,
            key,
            protocols,
            ...(cookie !== undefined ? { cookie } : {}),
            ...(env.userAgent !== undefined ? { userAgent: env.userAgent } : {}),
          }),
        );
        // The answer's head, bounded in size and time; what follows it is the first frames.
        let held = new Uint8Array(0);
        let head: UpgradeResponse | undefined;
        const deadline = Date.now() + (env.handshakeTimeoutMs ?? HANDSHAKE_TIMEOUT_MS);
        while (head === undefined) {
          const { value, done } = await readBefore(reader, deadline);
          if (done) throw new WsProtocolError(0, "the session ended before the server's answer");
          const joined = new Uint8Array(held.length + value.length);
          joined.set(held);
          joined.set(value, held.length);
          held = joined;
          head = readUpgradeResponse(held);
        }
        this.#protocol = await checkUpgradeResponse(head, key, protocols);
        if (this.#readyState !== CONNECTING) return;
        this.#connection = new ClientConnection({ maxMessageBytes: env.maxMessageBytes ?? MAX_MESSAGE_BYTES });
        this.#readyState = OPEN;
        this.dispatchEvent(new Event("open"));
        let chunk: Uint8Array | undefined = held.subarray(head.length);
        for (;;) {
          if (chunk.length > 0 && this.#receive(chunk)) return await this.#drain(reader);
          const { value, done } = await reader.read();
          if (done) break;
          chunk = value;
        }
        // The session ended with no close frame: the connection dropped.
        this.#finish(this.#connection.lost());
      } catch (err) {
        const why = err instanceof Error ? err.message : String(err);
        this.#finish(this.#connection?.lost(why) ?? lostConnection(why));
      } finally {
        reader?.releaseLock();
      }
    }

    /** The server's bytes; true once the connection is over. */
    #receive(bytes: Uint8Array): boolean {
      const connection = this.#connection;
      if (connection === undefined) return true;
      const received = connection.receive(bytes);
      for (const frame of received.write) this.#write(async () => frame, 0);
      for (const message of received.messages) {
        // Once the page asked to close, what still arrives is not delivered (the connection drops it too).
        if (this.#readyState !== OPEN) break;
        const data = typeof message === "string" ? message : this.#binaryType === "arraybuffer" ? toArrayBuffer(message) : new Blob([toArrayBuffer(message)]);
        this.dispatchEvent(new MessageEvent("message", { data, origin: new URL(this.url).origin }));
      }
      if (received.closed === undefined) return false;
      // The close frame (the echo, or one naming why the connection failed) is queued: end after it.
      this.#finish(received.closed, true);
      return true;
    }

    /**
     * After the close frames: what still comes is read and dropped until the host's
     * end, so that the session ends cleanly behind the close; one that does not end
     * in time is dropped.
     */
    async #drain(reader: ReadableStreamDefaultReader<Uint8Array>): Promise<void> {
      const deadline = Date.now() + (env.closeTimeoutMs ?? CLOSE_TIMEOUT_MS);
      try {
        for (;;) if ((await readBefore(reader, deadline)).done) return;
      } catch {
        this.#session?.abort();
      }
    }

    #write(frame: () => Promise<Uint8Array | undefined>, counted: number): void {
      this.#writing = this.#writing
        .then(async () => {
          const bytes = await frame();
          if (bytes !== undefined) await this.#writer?.write(bytes);
        })
        .catch(() => {
          // A failed write shows as the session's failure on the read side.
        })
        .finally(() => {
          this.#buffered -= counted;
        });
    }

    /** Tells the page the socket closed; `graceful`: a close frame went out, and the session ends after it. */
    #finish(closed: WsClosed, graceful = false): void {
      if (this.#readyState === CLOSED) return;
      this.#readyState = CLOSED;
      clearTimeout(this.#closeTimer);
      const session = this.#session;
      if (graceful) {
        // The session's authenticated end once the close frame is written; the server reads it before the end.
        void this.#writing.then(() => this.#writer?.close()).catch(() => session?.abort());
      } else {
        // The session failed, or the server did not answer in time: nothing more to say to it.
        session?.abort();
      }
      if (closed.failure !== undefined) this.dispatchEvent(new Event("error"));
      this.dispatchEvent(new CloseEvent("close", { code: closed.code, reason: closed.reason, wasClean: closed.wasClean }));
    }
  }
  // The constants on each socket too, as `ws.OPEN`.
  for (const [name, value] of Object.entries({ CONNECTING, OPEN, CLOSING, CLOSED })) {
    Object.defineProperty(HostWebSocket.prototype, name, { value, enumerable: true });
  }
  return HostWebSocket as unknown as WebSocketConstructor;
}

/** The URL a `WebSocket` constructor takes, as the browser reads it: `http(s)` becomes `ws(s)`, a fragment is refused. */
export function webSocketUrl(url: string | URL, base: string): URL {
  let parsed: URL;
  try {
    parsed = new URL(String(url), base);
  } catch {
    throw new DOMException(`"${String(url)}" is not a valid URL`, "SyntaxError");
  }
  if (parsed.protocol === "http:") parsed.protocol = "ws:";
  else if (parsed.protocol === "https:") parsed.protocol = "wss:";
  if (parsed.protocol !== "ws:" && parsed.protocol !== "wss:") {
    throw new DOMException(`a WebSocket URL's scheme is ws or wss, not ${parsed.protocol}`, "SyntaxError");
  }
  if (parsed.hash !== "") throw new DOMException("a WebSocket URL has no fragment", "SyntaxError");
  return parsed;
}

function lostConnection(why?: string): WsClosed {
  return { code: CloseStatus.abnormal, reason: "", wasClean: false, ...(why !== undefined ? { failure: why } : {}) };
}

function toArrayBuffer(bytes: Uint8Array): ArrayBuffer {
  return bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength && bytes.buffer instanceof ArrayBuffer
    ? bytes.buffer
    : (bytes.slice().buffer as ArrayBuffer);
}

async function readBefore(reader: ReadableStreamDefaultReader<Uint8Array>, deadline: number): Promise<ReadableStreamReadResult<Uint8Array>> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new WsProtocolError(0, "the server did not answer the handshake in time")), Math.max(0, deadline - Date.now()));
  });
  try {
    return await Promise.race([reader.read(), late]);
  } finally {
    clearTimeout(timer);
  }
}
