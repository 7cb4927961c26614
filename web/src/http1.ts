/**
 * HTTP/1.1 inside a session: the request a tunnelled `fetch` becomes, and the
 * host's response read back with `http-parser-js` (a well-kept parser, the same
 * state machine node used for years) rather than a parser of our own.
 *
 * The parser expects node's `Buffer`; it only calls `toString(encoding, start,
 * end)` and `slice(start, end)` on what it is given, so {@link ParserChunk} gives a
 * `Uint8Array` those two methods (and `slice` returns a view, as `Buffer`'s does,
 * so that a body is not copied on its way through).
 */

import { HTTPParser as ParserModule } from "http-parser-js";

/** The part of the parser used here, typed without node's `Buffer`. */
interface Parser {
  execute(chunk: Uint8Array): number | Error;
  finish(): void | Error;
  /** The partial line it holds: not empty when bytes followed a complete response. */
  readonly line: string;
  [callback: number]: unknown;
}
interface HeaderInfo {
  readonly statusCode: number;
  readonly statusMessage: string;
  readonly headers: string[];
  readonly upgrade: boolean;
  readonly shouldKeepAlive: boolean;
}
const HTTPParser = ParserModule as unknown as {
  new (type: string): Parser;
  readonly RESPONSE: string;
  readonly kOnHeadersComplete: number;
  readonly kOnBody: number;
  readonly kOnMessageComplete: number;
};

/** A request to write into a session. */
export interface HttpRequest {
  /** The method, as the page gave it. */
  readonly method: string;
  /** The request target: path and query (`/films/a.mp4?x=1`). */
  readonly target: string;
  /** The `Host` header: the origin's host and port, as the page sees it. */
  readonly host: string;
  /** Header pairs from the page; hop-by-hop ones are dropped and framing ones set here. */
  readonly headers: Iterable<readonly [string, string]>;
  /** The whole body, where the method has one. */
  readonly body?: Uint8Array;
  /** The `Cookie` header from the tunnel's jar; one the page gave is never sent. */
  readonly cookie?: string;
}

/** What the host's HTTP server answered, before its body. */
export interface HttpResponseHead {
  readonly status: number;
  readonly statusText: string;
  /** Header pairs in the order received (a name may repeat). */
  readonly headers: [string, string][];
  /** Whether the connection (and so the session) may carry another request afterwards. */
  readonly keepAlive: boolean;
}

/** A request that cannot be written, or a response that cannot be read. */
export class HttpError extends Error {
  override readonly name = "HttpError";
}

/**
 * Headers the tunnel writes itself or never forwards: connection-level ones (they
 * describe the page's connection to the service worker, not the session), and the
 * framing, which must match the bytes actually written; and `Cookie`, which
 * comes from the tunnel's jar alone.
 */
const DROPPED = new Set([
  "host",
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
  "content-length",
  "accept-encoding",
  "cookie",
]);

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** The bytes of `request` as HTTP/1.1, with `Content-Length` when it has a body. */
export function encodeRequest(request: HttpRequest): Uint8Array {
  if (!TOKEN.test(request.method)) throw new HttpError(`not an HTTP method: ${JSON.stringify(request.method)}`);
  if (!request.target.startsWith("/") || /[\s\x00-\x1f\x7f]/.test(request.target)) {
    throw new HttpError("the request target must be a path without spaces or control characters");
  }
  checkValue("Host", request.host);
  const lines = [`${request.method} ${request.target} HTTP/1.1`, `Host: ${request.host}`];
  for (const [name, value] of request.headers) {
    if (!TOKEN.test(name)) throw new HttpError(`not a header name: ${JSON.stringify(name)}`);
    if (DROPPED.has(name.toLowerCase())) continue;
    checkValue(name, value);
    lines.push(`${name}: ${value}`);
  }
  // A response the service worker builds is handed to the page as it is: the
  // browser does not undo a content coding for it, so ask for none.
  lines.push("Accept-Encoding: identity");
  if (request.cookie !== undefined) {
    checkValue("Cookie", request.cookie);
    lines.push(`Cookie: ${request.cookie}`);
  }
  if (request.body !== undefined) lines.push(`Content-Length: ${request.body.length}`);
  const head = new TextEncoder().encode(`${lines.join("\r\n")}\r\n\r\n`);
  if (request.body === undefined || request.body.length === 0) return head;
  const out = new Uint8Array(head.length + request.body.length);
  out.set(head);
  out.set(request.body, head.length);
  return out;
}

function checkValue(name: string, value: string): void {
  // CR, LF or NUL in a value would let a page write a second request into the session.
  if (/[\r\n\0]/.test(value)) throw new HttpError(`the value of ${name} holds a line break or NUL`);
}

/** What {@link ResponseReader.push} found. */
export type ResponseEvent =
  | { readonly type: "head"; readonly head: HttpResponseHead }
  | { readonly type: "body"; readonly data: Uint8Array }
  | { readonly type: "end" };

/**
 * Reads one response from the bytes of a session, as they arrive. A `HEAD`
 * request's response and the statuses that never have a body (1xx, 204, 304) end
 * at their headers; a body without `Content-Length` or chunking ends when the
 * session does ({@link finish}).
 */
export class ResponseReader {
  private readonly parser: Parser;
  private events: ResponseEvent[] = [];
  private head: HttpResponseHead | undefined;
  private complete = false;
  private leftover = false;

  constructor(method: string) {
    const noBody = method.toUpperCase() === "HEAD";
    this.parser = new HTTPParser(HTTPParser.RESPONSE);
    this.parser[HTTPParser.kOnHeadersComplete] = (info: HeaderInfo) => {
      if (this.complete) {
        this.leftover = true;
        return 1;
      }
      const raw = info.headers;
      const headers: [string, string][] = [];
      for (let i = 0; i + 1 < raw.length; i += 2) headers.push([raw[i] as string, raw[i + 1] as string]);
      this.head = {
        status: info.statusCode,
        statusText: info.statusMessage,
        headers,
        keepAlive: info.shouldKeepAlive && !info.upgrade,
      };
      this.events.push({ type: "head", head: this.head });
      const bodiless = noBody || info.statusCode < 200 || info.statusCode === 204 || info.statusCode === 304;
      // A true return tells the parser that no body follows.
      return bodiless ? 1 : 0;
    };
    this.parser[HTTPParser.kOnBody] = (chunk: Uint8Array, offset: number, length: number) => {
      if (this.complete) {
        this.leftover = true;
        return;
      }
      if (length > 0) {
        this.events.push({ type: "body", data: new Uint8Array(chunk.buffer, chunk.byteOffset + offset, length) });
      }
    };
    this.parser[HTTPParser.kOnMessageComplete] = () => {
      if (this.complete) {
        this.leftover = true;
        return;
      }
      this.complete = true;
      this.events.push({ type: "end" });
    };
  }

  /** Feeds bytes from the session; returns what they completed. Throws {@link HttpError} on a malformed response. */
  push(bytes: Uint8Array): ResponseEvent[] {
    if (this.complete && bytes.length > 0) {
      // Nothing was asked for after this response: the session is out of step.
      this.leftover = true;
      return [];
    }
    const chunk = new ParserChunk(bytes.buffer as ArrayBuffer, bytes.byteOffset, bytes.length);
    const result = this.parser.execute(chunk);
    if (result instanceof Error) throw new HttpError(`the host's HTTP response is malformed: ${result.message}`);
    // A response that ends inside this chunk, with bytes after it.
    if (this.complete && this.parser.line !== "") this.leftover = true;
    return this.take();
  }

  /** The session ended: ends a body that runs to the end of the connection, or throws if the response was cut short. */
  finish(): ResponseEvent[] {
    if (!this.complete) {
      const result = this.parser.finish();
      if (result instanceof Error || !this.complete) {
        throw new HttpError(
          this.head === undefined ? "the session ended before the host's HTTP response" : "the session ended inside the host's HTTP response",
        );
      }
    }
    return this.take();
  }

  /** Whether the whole response has been read. */
  get done(): boolean {
    return this.complete;
  }

  /** Whether the session may carry another request: the response said so, and nothing came after it. */
  get reusable(): boolean {
    return this.complete && !this.leftover && (this.head?.keepAlive ?? false) && this.head?.status !== 101;
  }

  private take(): ResponseEvent[] {
    const out = this.events;
    this.events = [];
    return out;
  }
}

/** A `Uint8Array` with the two `Buffer` methods the parser calls. */
class ParserChunk extends Uint8Array {
  override toString(_encoding?: string, start = 0, end = this.length): string {
    // Latin-1, byte for byte: header text is ASCII, and this keeps any other byte
    // as one character instead of failing on it.
    let out = "";
    for (let at = start; at < end; at += 8192) {
      out += String.fromCharCode(...this.subarray(at, Math.min(end, at + 8192)));
    }
    return out;
  }

  override slice(start?: number, end?: number): ParserChunk {
    return this.subarray(start, end) as ParserChunk;
  }
}
