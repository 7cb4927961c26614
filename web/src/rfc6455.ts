/**
 * The client's side of a WebSocket (RFC 6455) after its opening handshake, with no
 * I/O: what the server's bytes mean, and the bytes to answer with. The opening
 * handshake is here too, as the request to write and the checks of the answer.
 *
 * ```text
 * client (the page, through the tunnel)              server (behind the host)
 *   GET /socket HTTP/1.1, Upgrade: websocket     ==>
 *                                                <==  HTTP/1.1 101, Sec-WebSocket-Accept
 *   frames, masked                               <=>  frames, unmasked
 *   close(code, reason)                          <=>  close(code, reason), then FIN
 * ```
 *
 * {@link ClientConnection} takes the server's bytes and returns the messages they
 * complete and the frames to write back (a pong for each ping, the close echoed);
 * a server that breaks the protocol (a masked frame, a reserved bit, a bad opcode,
 * a control frame fragmented or over 125 bytes, text that is not UTF-8) is answered
 * with a close frame naming why (1002, 1007) and the connection fails. A message
 * over {@link MAX_MESSAGE_BYTES} is refused from its first frame's header, before
 * its payload is held (1009), so a server cannot make the page buffer more than
 * that.
 */

import { ByteQueue, concat, decodeUtf8 } from "./bytes.js";

/** The largest message the page takes (a browser's own WebSocket has no fixed bound; a tunnelled one has this one). */
export const MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
/** The most bytes of the server's handshake answer (status line and headers). */
export const MAX_HANDSHAKE_BYTES = 16 * 1024;
/** A control frame's payload is at most this long (RFC 6455 section 5.5). */
const MAX_CONTROL_PAYLOAD = 125;
/** A close reason is at most this many UTF-8 bytes: 125 less the 2-byte code. */
export const MAX_CLOSE_REASON_BYTES = 123;

/** The opcodes of section 5.2. */
export const Opcode = { continuation: 0x0, text: 0x1, binary: 0x2, close: 0x8, ping: 0x9, pong: 0xa } as const;

/** The close codes this module sends or reports (section 7.4.1). */
export const CloseStatus = {
  normal: 1000,
  protocolError: 1002,
  noStatus: 1005,
  abnormal: 1006,
  invalidData: 1007,
  tooBig: 1009,
} as const;

/** The fixed GUID of section 1.3, for `Sec-WebSocket-Accept`. */
const ACCEPT_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/** A server that broke the protocol: the close code to tell it, and why in words. */
export class WsProtocolError extends Error {
  override readonly name = "WsProtocolError";
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

/** One frame from the client: its header with the mask, and the payload masked. */
export function encodeClientFrame(opcode: number, payload: Uint8Array, mask: Uint8Array, fin = true): Uint8Array {
  if (mask.length !== 4) throw new RangeError("a frame's mask is 4 bytes");
  const len = payload.length;
  const extra = len < 126 ? 0 : len < 0x10000 ? 2 : 8;
  const out = new Uint8Array(2 + extra + 4 + len);
  out[0] = (fin ? 0x80 : 0) | opcode;
  out[1] = 0x80 | (extra === 0 ? len : extra === 2 ? 126 : 127);
  const view = new DataView(out.buffer);
  if (extra === 2) view.setUint16(2, len);
  else if (extra === 8) view.setBigUint64(2, BigInt(len));
  const at = 2 + extra;
  out.set(mask, at);
  for (let i = 0; i < len; i++) out[at + 4 + i] = (payload[i] as number) ^ (mask[i & 3] as number);
  return out;
}

/** A close frame's payload: the code and the reason, or nothing for no code. */
export function encodeClosePayload(code?: number, reason = ""): Uint8Array {
  if (code === undefined) return new Uint8Array(0);
  const text = new TextEncoder().encode(reason);
  if (text.length > MAX_CLOSE_REASON_BYTES) throw new RangeError(`a close reason is at most ${MAX_CLOSE_REASON_BYTES} bytes`);
  const out = new Uint8Array(2 + text.length);
  new DataView(out.buffer).setUint16(0, code);
  out.set(text, 2);
  return out;
}

/** A close code a peer may send in a close frame (section 7.4; 1005, 1006 and 1015 never go on the wire). */
export function isSendableCloseCode(code: number): boolean {
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
}

/** What the server's bytes completed. */
export type WsEvent =
  | { readonly type: "text"; readonly data: string }
  | { readonly type: "binary"; readonly data: Uint8Array }
  | { readonly type: "ping"; readonly data: Uint8Array }
  | { readonly type: "pong"; readonly data: Uint8Array }
  | { readonly type: "close"; readonly code: number | undefined; readonly reason: string };

/**
 * The server's frames, decoded as they arrive: fragments joined into messages,
 * control frames between them delivered at once. Throws {@link WsProtocolError}
 * for anything section 5 forbids, and for a message over its bound (1009) as soon
 * as a frame's header says so.
 */
export class FrameReader {
  private readonly queue = new ByteQueue();
  /** The opcode and parts of a fragmented message under way. */
  private partial: { opcode: number; parts: Uint8Array[]; length: number } | undefined;

  constructor(private readonly maxMessageBytes = MAX_MESSAGE_BYTES) {}

  /** Bytes from the server; returns the events they complete, in order. */
  push(bytes: Uint8Array): WsEvent[] {
    this.queue.push(bytes);
    const events: WsEvent[] = [];
    for (;;) {
      const event = this.next();
      if (event === undefined) return events;
      if (event !== null) events.push(event);
    }
  }

  /** The next frame's event; `null` for a fragment that completes nothing; `undefined` when more bytes are needed. */
  private next(): WsEvent | null | undefined {
    const buf = this.queue.view();
    if (buf.length < 2) return undefined;
    const b0 = buf[0] as number;
    const b1 = buf[1] as number;
    const fin = (b0 & 0x80) !== 0;
    const opcode = b0 & 0x0f;
    if ((b0 & 0x70) !== 0) throw new WsProtocolError(CloseStatus.protocolError, "a reserved bit is set (no extension was agreed)");
    if ((b1 & 0x80) !== 0) throw new WsProtocolError(CloseStatus.protocolError, "a frame from the server is masked");
    const control = opcode >= 0x8;
    if (![0x0, 0x1, 0x2, 0x8, 0x9, 0xa].includes(opcode)) throw new WsProtocolError(CloseStatus.protocolError, `opcode ${opcode} is reserved`);
    let len = b1 & 0x7f;
    let at = 2;
    if (len === 126) {
      if (buf.length < 4) return undefined;
      len = ((buf[2] as number) << 8) | (buf[3] as number);
      at = 4;
    } else if (len === 127) {
      if (buf.length < 10) return undefined;
      const long = new DataView(buf.buffer, buf.byteOffset + 2, 8).getBigUint64(0);
      if (long >> 63n !== 0n) throw new WsProtocolError(CloseStatus.protocolError, "a frame's length has its top bit set");
      // Anything past the bound is refused below; keep the number small enough to compare.
      len = long > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(long);
      at = 10;
    }
    if (control) {
      if (!fin) throw new WsProtocolError(CloseStatus.protocolError, "a control frame is fragmented");
      if (len > MAX_CONTROL_PAYLOAD) throw new WsProtocolError(CloseStatus.protocolError, "a control frame's payload is over 125 bytes");
    } else {
      if (opcode === Opcode.continuation && this.partial === undefined) {
        throw new WsProtocolError(CloseStatus.protocolError, "a continuation frame with no message under way");
      }
      if (opcode !== Opcode.continuation && this.partial !== undefined) {
        throw new WsProtocolError(CloseStatus.protocolError, "a new message inside a fragmented one");
      }
      // Refused from the header: the payload is never held.
      const total = (this.partial?.length ?? 0) + len;
      if (total > this.maxMessageBytes) {
        throw new WsProtocolError(CloseStatus.tooBig, `a message over ${this.maxMessageBytes} bytes`);
      }
    }
    if (buf.length < at + len) return undefined;
    const payload = buf.slice(at, at + len);
    this.queue.consume(at + len);
    if (control) return controlEvent(opcode, payload);
    const partial = this.partial ?? { opcode, parts: [], length: 0 };
    partial.parts.push(payload);
    partial.length += len;
    if (!fin) {
      this.partial = partial;
      return null;
    }
    this.partial = undefined;
    const data = partial.parts.length === 1 ? (partial.parts[0] as Uint8Array) : concat(...partial.parts);
    if (partial.opcode === Opcode.binary) return { type: "binary", data };
    const text = decodeUtf8(data);
    if (text === undefined) throw new WsProtocolError(CloseStatus.invalidData, "a text message is not UTF-8");
    return { type: "text", data: text };
  }
}

function controlEvent(opcode: number, payload: Uint8Array): WsEvent {
  if (opcode === Opcode.ping) return { type: "ping", data: payload };
  if (opcode === Opcode.pong) return { type: "pong", data: payload };
  if (payload.length === 0) return { type: "close", code: undefined, reason: "" };
  if (payload.length === 1) throw new WsProtocolError(CloseStatus.protocolError, "a close frame of one byte");
  const code = ((payload[0] as number) << 8) | (payload[1] as number);
  if (!isSendableCloseCode(code)) throw new WsProtocolError(CloseStatus.protocolError, `close code ${code} may not be sent`);
  const reason = decodeUtf8(payload.subarray(2));
  if (reason === undefined) throw new WsProtocolError(CloseStatus.invalidData, "a close reason is not UTF-8");
  return { type: "close", code, reason };
}

/** How a connection ended, as a page's `CloseEvent` says it. */
export interface WsClosed {
  readonly code: number;
  readonly reason: string;
  /** Both close frames crossed. */
  readonly wasClean: boolean;
  /** Why the connection failed, where it did (the page gets an `error` event first). */
  readonly failure?: string;
}

/** What {@link ClientConnection.receive} found. */
export interface WsReceived {
  /** Messages for the page, in order. */
  readonly messages: (string | Uint8Array)[];
  /** Frames to write to the server, in order. */
  readonly write: Uint8Array[];
  /** Set once the connection is over: nothing more is read or written. */
  readonly closed?: WsClosed;
}

/** Options of a {@link ClientConnection}. */
export interface ClientConnectionOptions {
  /** Four fresh random bytes for each frame's mask (section 5.3); `crypto.getRandomValues` by default. */
  readonly mask?: () => Uint8Array;
  readonly maxMessageBytes?: number;
}

/**
 * An open WebSocket's state, client side, after the handshake: `open`, then
 * `closing` once either side sent a close frame, then `closed` once both did (or
 * it failed). The page's `send` and `close` and the server's bytes go in; frames to
 * write and what to tell the page come out.
 */
export class ClientConnection {
  state: "open" | "closing" | "closed" = "open";
  private readonly reader: FrameReader;
  private readonly mask: () => Uint8Array;
  private sentClose = false;

  constructor(options: ClientConnectionOptions = {}) {
    this.reader = new FrameReader(options.maxMessageBytes ?? MAX_MESSAGE_BYTES);
    this.mask = options.mask ?? randomMask;
  }

  /** The frame carrying one message of the page's; `undefined` once a close was sent (the message is dropped, as a browser drops it). */
  message(data: string | Uint8Array): Uint8Array | undefined {
    if (this.state !== "open") return undefined;
    const text = typeof data === "string";
    return encodeClientFrame(text ? Opcode.text : Opcode.binary, text ? new TextEncoder().encode(data) : data, this.mask());
  }

  /** The close frame the page's `close(code, reason)` sends; `undefined` if one was sent already. */
  close(code?: number, reason = ""): Uint8Array | undefined {
    if (this.sentClose || this.state === "closed") return undefined;
    this.sentClose = true;
    this.state = "closing";
    return encodeClientFrame(Opcode.close, encodeClosePayload(code, reason), this.mask());
  }

  /** The server's bytes. */
  receive(bytes: Uint8Array): WsReceived {
    const messages: (string | Uint8Array)[] = [];
    const write: Uint8Array[] = [];
    if (this.state === "closed") return { messages, write };
    let events: WsEvent[];
    try {
      events = this.reader.push(bytes);
    } catch (err) {
      if (!(err instanceof WsProtocolError)) throw err;
      return { messages, write, closed: this.fail(err, write) };
    }
    for (const event of events) {
      switch (event.type) {
        case "text":
        case "binary":
          // After the page asked to close, what still arrives is read and dropped (section 1.4).
          if (!this.sentClose) messages.push(event.data);
          break;
        case "ping":
          if (!this.sentClose) write.push(encodeClientFrame(Opcode.pong, event.data, this.mask()));
          break;
        case "pong":
          break;
        case "close": {
          // Echo the server's code, as section 5.5.1 asks, unless the page's close went first.
          if (!this.sentClose) {
            this.sentClose = true;
            write.push(encodeClientFrame(Opcode.close, encodeClosePayload(event.code), this.mask()));
          }
          this.state = "closed";
          return { messages, write, closed: { code: event.code ?? CloseStatus.noStatus, reason: event.reason, wasClean: true } };
        }
      }
    }
    return { messages, write };
  }

  /** The session under the connection ended or failed before the close handshake. */
  lost(why?: string): WsClosed {
    this.state = "closed";
    return { code: CloseStatus.abnormal, reason: "", wasClean: false, ...(why !== undefined ? { failure: why } : {}) };
  }

  private fail(err: WsProtocolError, write: Uint8Array[]): WsClosed {
    // Section 7.1.7: tell the server why (when no close went out yet), then drop the connection.
    if (!this.sentClose) {
      this.sentClose = true;
      write.push(encodeClientFrame(Opcode.close, encodeClosePayload(err.code), this.mask()));
    }
    this.state = "closed";
    return { code: CloseStatus.abnormal, reason: "", wasClean: false, failure: err.message };
  }
}

function randomMask(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(4));
}

/** The opening handshake's request: a GET with the Upgrade headers (section 4.1). */
export interface UpgradeRequest {
  /** Path and query. */
  readonly target: string;
  /** The `Host` header. */
  readonly host: string;
  /** The page's origin, for `Origin`. */
  readonly origin: string;
  /** `Sec-WebSocket-Key`: 16 random bytes in base64. */
  readonly key: string;
  readonly protocols: readonly string[];
  /** The tunnel's `Cookie` header, where its jar has cookies for the path. */
  readonly cookie?: string;
  readonly userAgent?: string;
}

/** The request's bytes. Values with a line break or NUL are refused, so nothing can be written after it. */
export function encodeUpgradeRequest(request: UpgradeRequest): Uint8Array {
  if (!request.target.startsWith("/") || /[\s\x00-\x1f\x7f]/.test(request.target)) throw new WsProtocolError(0, "the target must be a path");
  const lines = [
    `GET ${request.target} HTTP/1.1`,
    `Host: ${request.host}`,
    "Upgrade: websocket",
    "Connection: Upgrade",
    `Sec-WebSocket-Key: ${request.key}`,
    "Sec-WebSocket-Version: 13",
    `Origin: ${request.origin}`,
  ];
  if (request.protocols.length > 0) lines.push(`Sec-WebSocket-Protocol: ${request.protocols.join(", ")}`);
  if (request.userAgent !== undefined) lines.push(`User-Agent: ${request.userAgent}`);
  if (request.cookie !== undefined) lines.push(`Cookie: ${request.cookie}`);
  for (const line of lines) if (/[\r\n\0]/.test(line)) throw new WsProtocolError(0, "a header holds a line break or NUL");
  return new TextEncoder().encode(`${lines.join("\r\n")}\r\n\r\n`);
}

/** The server's answer, read up to its blank line. */
export interface UpgradeResponse {
  readonly status: number;
  /** Header names in lower case; repeated ones joined with `, `. */
  readonly headers: ReadonlyMap<string, string>;
  /** How many bytes the status line and headers took: what follows is the first frames. */
  readonly length: number;
}

/**
 * The handshake answer at the front of `bytes`, or `undefined` while its blank line
 * has not arrived; refused past {@link MAX_HANDSHAKE_BYTES} or when malformed.
 */
export function readUpgradeResponse(bytes: Uint8Array): UpgradeResponse | undefined {
  let end = -1;
  for (let i = 3; i < Math.min(bytes.length, MAX_HANDSHAKE_BYTES); i++) {
    if (bytes[i] === 0x0a && bytes[i - 1] === 0x0d && bytes[i - 2] === 0x0a && bytes[i - 3] === 0x0d) {
      end = i + 1;
      break;
    }
  }
  if (end < 0) {
    if (bytes.length >= MAX_HANDSHAKE_BYTES) throw new WsProtocolError(0, `the server's answer has over ${MAX_HANDSHAKE_BYTES} bytes of headers`);
    return undefined;
  }
  let text = "";
  for (let i = 0; i < end - 4; i++) text += String.fromCharCode(bytes[i] as number);
  const [statusLine = "", ...fields] = text.split("\r\n");
  const status = /^HTTP\/1\.[01] (\d{3})(?: .*)?$/.exec(statusLine);
  if (status === null) throw new WsProtocolError(0, "the server's answer is not HTTP/1.1");
  const headers = new Map<string, string>();
  for (const field of fields) {
    const colon = field.indexOf(":");
    if (colon <= 0) throw new WsProtocolError(0, "the server's answer has a malformed header");
    const name = field.slice(0, colon).trim().toLowerCase();
    const value = field.slice(colon + 1).trim();
    const before = headers.get(name);
    headers.set(name, before === undefined ? value : `${before}, ${value}`);
  }
  return { status: Number(status[1]), headers, length: end };
}

/** `Sec-WebSocket-Accept` for `key`: base64 of SHA-1 of the key and the GUID. */
export async function acceptFor(key: string): Promise<string> {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-1", new TextEncoder().encode(key + ACCEPT_GUID)));
  return btoa(String.fromCharCode(...digest));
}

/**
 * Checks the answer as section 4.1 asks of a client: `101`, `Upgrade: websocket`,
 * `Connection: Upgrade`, the accept value of our key, no extension (none was
 * offered), and a subprotocol only from those offered (one where any was, as
 * browsers ask). Returns the subprotocol (`""` for none); throws {@link WsProtocolError}.
 */
export async function checkUpgradeResponse(response: UpgradeResponse, key: string, protocols: readonly string[]): Promise<string> {
  const fail = (why: string) => new WsProtocolError(0, why);
  if (response.status !== 101) throw fail(`the server answered ${response.status}, not 101`);
  const tokens = (name: string) => (response.headers.get(name) ?? "").split(",").map((t) => t.trim().toLowerCase());
  if (!tokens("upgrade").includes("websocket")) throw fail("the answer has no Upgrade: websocket");
  if (!tokens("connection").includes("upgrade")) throw fail("the answer has no Connection: Upgrade");
  if (response.headers.get("sec-websocket-accept") !== (await acceptFor(key))) throw fail("Sec-WebSocket-Accept does not match the key");
  if ((response.headers.get("sec-websocket-extensions") ?? "") !== "") throw fail("the server chose an extension, and none was offered");
  const protocol = response.headers.get("sec-websocket-protocol") ?? "";
  if (protocol === "" && protocols.length > 0) throw fail("the server chose none of the subprotocols offered");
  if (protocol !== "" && !protocols.includes(protocol)) throw fail("the server chose a subprotocol that was not offered");
  return protocol;
}
