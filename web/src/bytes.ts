/**
 * Byte helpers shared by the codecs: big-endian integers, concatenation, hex.
 *
 * Everything here works on plain `Uint8Array`s so the same code runs in a page, a
 * worker and node without a Buffer type.
 */

/** Concatenates byte arrays into one new array. */
export function concat(...parts: readonly Uint8Array[]): Uint8Array {
  let len = 0;
  for (const part of parts) len += part.length;
  const out = new Uint8Array(len);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

/** Lower-case hex of `bytes`, as PROTOCOL.md writes it. */
export function toHex(bytes: Uint8Array): string {
  let out = "";
  for (const b of bytes) out += b.toString(16).padStart(2, "0");
  return out;
}

/** Bytes from hex; whitespace is ignored so examples can be pasted as written. */
export function fromHex(hex: string): Uint8Array {
  const clean = hex.replace(/\s+/g, "");
  if (clean.length % 2 !== 0 || /[^0-9a-fA-F]/.test(clean)) {
    throw new RangeError("not an even-length hex string");
  }
  const out = new Uint8Array(clean.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(clean.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Bytes from standard base64 (with padding); a `RangeError` for anything else. */
export function decodeBase64(text: string): Uint8Array<ArrayBuffer> {
  if (!/^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/.test(text)) throw new RangeError("not base64");
  const binary = atob(text);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

/** Whether two arrays hold the same bytes (not constant-time: for public data only). */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Reads fields in order from a byte array; every read checks what is left. */
export class Reader {
  private at = 0;

  constructor(private readonly bytes: Uint8Array) {}

  /** Bytes not read yet. */
  remaining(): number {
    return this.bytes.length - this.at;
  }

  /** Reads `len` bytes, or returns `undefined` when fewer remain. */
  take(len: number): Uint8Array | undefined {
    if (this.remaining() < len) return undefined;
    const out = this.bytes.subarray(this.at, this.at + len);
    this.at += len;
    return out;
  }

  u8(): number | undefined {
    const b = this.take(1);
    return b === undefined ? undefined : b[0];
  }

  u16(): number | undefined {
    const b = this.take(2);
    return b === undefined ? undefined : readU16(b, 0);
  }

  u32(): number | undefined {
    const b = this.take(4);
    return b === undefined ? undefined : readU32(b, 0);
  }

  u64(): bigint | undefined {
    const b = this.take(8);
    return b === undefined ? undefined : readU64(b, 0);
  }
}

export function readU16(bytes: Uint8Array, at: number): number {
  return ((bytes[at] ?? 0) << 8) | (bytes[at + 1] ?? 0);
}

export function readU32(bytes: Uint8Array, at: number): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getUint32(at, false);
}

export function readU64(bytes: Uint8Array, at: number): bigint {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getBigUint64(at, false);
}

export function writeU16(out: Uint8Array, at: number, value: number): void {
  out[at] = (value >>> 8) & 0xff;
  out[at + 1] = value & 0xff;
}

export function writeU32(out: Uint8Array, at: number, value: number): void {
  new DataView(out.buffer, out.byteOffset, out.byteLength).setUint32(at, value >>> 0, false);
}

export function writeU64(out: Uint8Array, at: number, value: bigint): void {
  new DataView(out.buffer, out.byteOffset, out.byteLength).setBigUint64(at, value, false);
}

/** The longest prefix of `text` whose UTF-8 is at most `max` bytes, cut between characters. */
export function truncateUtf8(text: string, max: number): Uint8Array {
  const bytes = new TextEncoder().encode(text);
  if (bytes.length <= max) return bytes;
  let end = max;
  // A continuation byte (10xxxxxx) cannot start a character: back up to one that can.
  while (end > 0 && ((bytes[end] ?? 0) & 0xc0) === 0x80) end--;
  return bytes.slice(0, end);
}

/** Strict UTF-8 decoding: invalid bytes are an error, never replacement characters. */
export function decodeUtf8(bytes: Uint8Array): string | undefined {
  try {
    return new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    return undefined;
  }
}

/**
 * Bytes received and not yet read, in order: appended at the back, consumed from the
 * front, read as one contiguous view. Appending copies each byte a bounded number of
 * times however large the backlog grows (the store doubles, and is compacted only
 * when that frees at least half of it), so a reader that falls behind a fast sender
 * costs time in proportion to the bytes, not to their square.
 */
export class ByteQueue {
  private store: Uint8Array = new Uint8Array(0);
  private start = 0;
  private end = 0;

  /** Bytes held. */
  get length(): number {
    return this.end - this.start;
  }

  /**
   * The bytes held, front first. The view is valid until the next `push` or `clear`:
   * keep a copy (`slice`) of anything needed after that.
   */
  view(): Uint8Array {
    return this.store.subarray(this.start, this.end);
  }

  /** Appends a copy of `bytes`. */
  push(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    const held = this.length;
    const need = held + bytes.length;
    if (this.end + bytes.length > this.store.length) {
      if (need <= this.store.length / 2) {
        // At least half the store is free: moving the held bytes to the front pays
        // for itself with the appends that space takes.
        this.store.copyWithin(0, this.start, this.end);
      } else {
        const grown = new Uint8Array(Math.max(need, 2 * this.store.length, 4096));
        grown.set(this.view());
        this.store = grown;
      }
      this.start = 0;
      this.end = held;
    }
    this.store.set(bytes, this.end);
    this.end += bytes.length;
  }

  /** Drops `n` bytes from the front. */
  consume(n: number): void {
    if (n < 0 || n > this.length) throw new RangeError(`cannot consume ${n} of ${this.length} bytes`);
    this.start += n;
    if (this.start === this.end) {
      this.start = 0;
      this.end = 0;
      // A burst left a large store behind: give it back once it is empty.
      if (this.store.length > RETAINED_STORE) this.store = new Uint8Array(0);
    }
  }

  /** Drops everything. */
  clear(): void {
    this.start = 0;
    this.end = 0;
    this.store = new Uint8Array(0);
  }
}

/** The largest store a {@link ByteQueue} keeps while empty: two Noise messages and change. */
const RETAINED_STORE = 256 * 1024;
