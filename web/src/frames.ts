/**
 * Stream frames (PROTOCOL.md section 17.2): what one QUIC stream carries, over a
 * byte stream such as the binary messages of a WebSocket.
 *
 * ```text
 * type u8, then:
 * 0x00 DATA   length u16 (1 to 16384), that many bytes of the stream
 * 0x01 FIN    (empty)            this direction ends cleanly
 * 0x02 RESET  code u32           this direction ends abruptly
 * 0x03 STOP   code u32           stop sending to me
 * 0x04 CLOSE  code u32, reason length u16 (at most 256), reason (UTF-8)
 * 0x05 PING   8 opaque bytes     answer with PONG
 * 0x06 PONG   the PING's 8 bytes
 * ```
 *
 * Frame boundaries mean nothing to the stream, and message boundaries mean nothing
 * to frames: {@link FrameDecoder} takes bytes in pieces of any size. It refuses an
 * unknown type, a `DATA` length of 0 or over 16384, and a `CLOSE` reason over 256
 * bytes as soon as the first bytes show it, before the rest arrives.
 */

import { ByteQueue, concat, decodeUtf8, readU16, readU32, truncateUtf8, writeU16, writeU32 } from "./bytes.js";

/** Largest payload of one `DATA` frame. */
export const MAX_DATA_LEN = 16384;

/** Longest reason in a `CLOSE` frame, in bytes. */
export const MAX_CLOSE_REASON_LEN = 256;

/** Largest frame of any type: a full `DATA` frame. */
export const MAX_FRAME_LEN = 3 + MAX_DATA_LEN;

/** The type bytes. */
export const FrameKind = { DATA: 0x00, FIN: 0x01, RESET: 0x02, STOP: 0x03, CLOSE: 0x04, PING: 0x05, PONG: 0x06 } as const;

/** One stream frame. */
export type StreamFrame =
  | { readonly type: "data"; readonly data: Uint8Array }
  | { readonly type: "fin" }
  | { readonly type: "reset"; readonly code: number }
  | { readonly type: "stop"; readonly code: number }
  | { readonly type: "close"; readonly code: number; readonly reason: string }
  | { readonly type: "ping"; readonly opaque: Uint8Array }
  | { readonly type: "pong"; readonly opaque: Uint8Array };

/** Why frames were refused; the connection that sent them must end. */
export type FrameErrorKind =
  /** A type byte this protocol does not define. */
  | "unknown-type"
  /** A `DATA` length of 0 or over 16384 (decoding), or a `DATA` frame to encode of that size. */
  | "bad-data-length"
  /** A `CLOSE` reason over 256 bytes. */
  | "reason-too-long"
  /** A `CLOSE` reason that is not UTF-8. */
  | "invalid-utf8"
  /** A `PING` or `PONG` whose opaque bytes are not 8. */
  | "bad-opaque";

/** A frame that breaks section 17.2. */
export class FrameError extends Error {
  override readonly name = "FrameError";

  constructor(
    /** Which rule it broke. */
    readonly kind: FrameErrorKind,
    message: string,
  ) {
    super(message);
  }
}

/** Encodes one frame. A `CLOSE` reason is cut to 256 bytes between characters. */
export function encodeFrame(frame: StreamFrame): Uint8Array {
  switch (frame.type) {
    case "data": {
      const len = frame.data.length;
      if (len === 0 || len > MAX_DATA_LEN) {
        throw new FrameError("bad-data-length", `a DATA frame holds 1 to ${MAX_DATA_LEN} bytes, not ${len}`);
      }
      const out = new Uint8Array(3 + len);
      out[0] = FrameKind.DATA;
      writeU16(out, 1, len);
      out.set(frame.data, 3);
      return out;
    }
    case "fin":
      return Uint8Array.of(FrameKind.FIN);
    case "reset":
    case "stop": {
      const out = new Uint8Array(5);
      out[0] = frame.type === "reset" ? FrameKind.RESET : FrameKind.STOP;
      writeU32(out, 1, frame.code);
      return out;
    }
    case "close": {
      const reason = truncateUtf8(frame.reason, MAX_CLOSE_REASON_LEN);
      const out = new Uint8Array(7 + reason.length);
      out[0] = FrameKind.CLOSE;
      writeU32(out, 1, frame.code);
      writeU16(out, 5, reason.length);
      out.set(reason, 7);
      return out;
    }
    case "ping":
    case "pong": {
      if (frame.opaque.length !== 8) throw new FrameError("bad-opaque", "PING and PONG carry 8 bytes");
      const out = new Uint8Array(9);
      out[0] = frame.type === "ping" ? FrameKind.PING : FrameKind.PONG;
      out.set(frame.opaque, 1);
      return out;
    }
  }
}

/**
 * Splits stream bytes into `DATA` frames of at most 16384 bytes each, encoded and
 * joined, ready to send in one message.
 */
export function encodeData(bytes: Uint8Array): Uint8Array {
  const frames: Uint8Array[] = [];
  for (let at = 0; at < bytes.length; at += MAX_DATA_LEN) {
    frames.push(encodeFrame({ type: "data", data: bytes.subarray(at, at + MAX_DATA_LEN) }));
  }
  return concat(...frames);
}

/**
 * Decodes frames from bytes that arrive in pieces. It holds at most one frame's
 * bytes that have not decoded yet (at most {@link MAX_FRAME_LEN}), plus whatever the
 * last {@link push} brought. After it has refused a frame it refuses everything:
 * the connection is over.
 */
export class FrameDecoder {
  // A queue, not a buffer concatenated at every push: bytes pushed faster than frames
  // are taken would otherwise be copied again at each push (quadratic in the backlog).
  private readonly buf = new ByteQueue();
  private failed: FrameError | undefined;

  /** Adds received bytes. */
  push(bytes: Uint8Array): void {
    this.buf.push(bytes);
  }

  /** The next whole frame, `undefined` until one has arrived; throws {@link FrameError} on an invalid one. */
  next(): StreamFrame | undefined {
    if (this.failed !== undefined) throw this.failed;
    try {
      // Frames own their bytes (decodeFrame copies a DATA body), so the queue's view
      // may change after this.
      const taken = decodeFrame(this.buf.view());
      if (taken === undefined) return undefined;
      this.buf.consume(taken.used);
      return taken.frame;
    } catch (err) {
      if (err instanceof FrameError) this.failed = err;
      throw err;
    }
  }

  /** Bytes received that do not make a whole frame yet. */
  buffered(): number {
    return this.buf.length;
  }
}

/** Decodes one frame from the front of `buf`: the frame and the bytes it used, or `undefined` if incomplete. */
export function decodeFrame(buf: Uint8Array): { frame: StreamFrame; used: number } | undefined {
  if (buf.length === 0) return undefined;
  const type = buf[0];
  switch (type) {
    case FrameKind.DATA: {
      if (buf.length < 3) return undefined;
      const len = readU16(buf, 1);
      if (len === 0 || len > MAX_DATA_LEN) {
        throw new FrameError("bad-data-length", `stream DATA frame of ${len} bytes (must be 1 to ${MAX_DATA_LEN})`);
      }
      if (buf.length < 3 + len) return undefined;
      return { frame: { type: "data", data: buf.slice(3, 3 + len) }, used: 3 + len };
    }
    case FrameKind.FIN:
      return { frame: { type: "fin" }, used: 1 };
    case FrameKind.RESET:
    case FrameKind.STOP: {
      if (buf.length < 5) return undefined;
      const code = readU32(buf, 1);
      return { frame: type === FrameKind.RESET ? { type: "reset", code } : { type: "stop", code }, used: 5 };
    }
    case FrameKind.CLOSE: {
      if (buf.length < 7) return undefined;
      const len = readU16(buf, 5);
      if (len > MAX_CLOSE_REASON_LEN) {
        throw new FrameError("reason-too-long", `close reason of ${len} bytes (max ${MAX_CLOSE_REASON_LEN})`);
      }
      if (buf.length < 7 + len) return undefined;
      const reason = decodeUtf8(buf.subarray(7, 7 + len));
      if (reason === undefined) throw new FrameError("invalid-utf8", "close reason is not UTF-8");
      return { frame: { type: "close", code: readU32(buf, 1), reason }, used: 7 + len };
    }
    case FrameKind.PING:
    case FrameKind.PONG: {
      if (buf.length < 9) return undefined;
      const opaque = buf.slice(1, 9);
      return { frame: type === FrameKind.PING ? { type: "ping", opaque } : { type: "pong", opaque }, used: 9 };
    }
    default:
      throw new FrameError("unknown-type", `unknown stream frame type 0x${(type ?? 0).toString(16).padStart(2, "0")}`);
  }
}
