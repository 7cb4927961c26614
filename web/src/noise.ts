/**
 * The player's side of the end-to-end session: Noise IK and its framing, exactly as
 * PROTOCOL.md section 10 says. Pure state over `Uint8Array`s: no sockets, no timers.
 *
 * ```text
 * Noise_IK_25519_AESGCM_BLAKE2s, prologue PROLOGUE, player = initiator
 *   <- s                 (the host id, from the ticket)
 *   -> e, es, s, ss      hello: 96 bytes, framed as 0060 …
 *   <- e, ee, se         reply: 48 bytes (longer if the host adds a payload)
 * ```
 *
 * Then every message is a 2-byte big-endian length and an AEAD ciphertext whose
 * plaintext is a body followed by one type byte: data 0x00, end 0x01, rekey 0x02,
 * verdict 0x03 (the host's first message), ack 0x04 (resumable sessions only,
 * section 10.8).
 *
 * The hello's payload says what the player asks for ({@link Hello}): nothing (a
 * session that cannot be resumed), 32 zero bytes (a resumable one), or the resume id
 * of a session to continue. The verdict must answer it: welcome 0x00, not
 * authorized 0x01, welcome-resumable 0x02, resumed 0x03, unknown session 0x04.
 *
 * The order is kept by states that are used up, as in `protocol/src/noise.rs`:
 *
 * ```text
 * PlayerHandshake --readReply--> ExpectVerdict --openVerdict--> Transport (welcome, welcome-resumable, resumed)
 *                                                           \-> Refused   (not authorized, unknown session)
 * ```
 *
 * A state used twice throws instead of going on from where it stood. Every error
 * ends the session: a {@link Transport} that threw keeps throwing the same error.
 *
 * The low-level pieces ({@link SymmetricState}, {@link CipherState}, {@link dh}) are
 * exported so that tests can build the host's side from the same primitives.
 */

import { x25519 } from "@noble/curves/ed25519.js";
import { blake2s } from "@noble/hashes/blake2.js";
import { hmac } from "@noble/hashes/hmac.js";

import { type Aead, AeadError, type AeadKey, TAG_LEN, defaultAead } from "./aead.js";
import { concat, readU64, writeU16, writeU64 } from "./bytes.js";
import { type StaticKey, rawStaticKey } from "./statickey.js";

/** The Noise protocol name; part of protocol version 1. */
export const NOISE_PARAMS = "Noise_IK_25519_AESGCM_BLAKE2s";

/** The prologue: the protocol version and the Noise name, so that peers disagreeing on either fail the handshake. */
export const PROLOGUE = new TextEncoder().encode("blindrelay/1 session Noise_IK_25519_AESGCM_BLAKE2s");

/** Largest Noise message: the Noise limit, and what a 2-byte length can say. */
export const MAX_MESSAGE_LEN = 65535;

/** Most application bytes in one data frame. */
export const MAX_PLAINTEXT_LEN = MAX_MESSAGE_LEN - TAG_LEN - 1;

/** Messages a side sends under one key before it rekeys (section 10.5). */
export const DEFAULT_REKEY_INTERVAL = 65536;

/** The nonce that is never used for a message; a counter that reaches it ends the session. */
export const MAX_NONCE = (1n << 64n) - 1n;

/** The decrypted type byte at the end of each transport plaintext. */
export const FrameType = { DATA: 0x00, END: 0x01, REKEY: 0x02, VERDICT: 0x03, ACK: 0x04 } as const;

/** The verdict bytes of section 10.3. */
export const VerdictByte = {
  WELCOME: 0x00,
  NOT_AUTHORIZED: 0x01,
  WELCOME_RESUMABLE: 0x02,
  RESUMED: 0x03,
  UNKNOWN_SESSION: 0x04,
} as const;

/** Bytes of a resume id, and of a resumable hello's payload (section 10.8). */
export const RESUME_ID_LEN = 32;

/** The label of the resume id's derivation: its 22 ASCII bytes. */
const RESUME_ID_LABEL = new TextEncoder().encode("blindrelay/1 resume id");

/**
 * What a hello asks for (section 10.8): `"plain"` (an empty payload: a session
 * that cannot be resumed, as players before resumption sent), `"resumable"` (32
 * zero bytes), or `{ resume }` with the 32-byte resume id of the session to continue.
 */
export type Hello = "plain" | "resumable" | { readonly resume: Uint8Array };

/** `BLAKE2s-256("blindrelay/1 resume id" || k1 || k2)` of a handshake's two transport keys. */
export function deriveResumeId(k1: Uint8Array, k2: Uint8Array): Uint8Array {
  return blake2s(concat(RESUME_ID_LABEL, k1, k2));
}

/** What went wrong with a session; every kind ends it. */
export type NoiseErrorKind =
  /** The handshake failed: wrong host key, altered message, unusable key, another protocol version. */
  | "handshake"
  /** A transport message failed authentication: altered, reordered, dropped before it, or forged. */
  | "decrypt"
  /** A decrypted type byte the protocol does not define. */
  | "unknown-frame-type"
  /** A data frame with no body, an end or rekey frame with one, a verdict of the wrong size, or an empty plaintext. */
  | "malformed-frame"
  /** Something was opened after the other side's end. */
  | "data-after-end"
  /** This side tried to seal after its own end. */
  | "write-after-end"
  /** The stream ended before the other side's authenticated end: someone cut it short. */
  | "truncated"
  /** A counter reached 2^64 − 1: the session must end. */
  | "nonce-exhausted"
  /** A frame out of the session's order (the host's first frame must be its verdict, and only then; a verdict that does not answer the hello; an ack in a session that cannot be resumed). */
  | "out-of-order"
  /** An acknowledgement that goes back behind an earlier one, or past what was sent (section 10.8). */
  | "bad-ack"
  /** More bytes than one frame holds, given to {@link Transport.seal}. */
  | "payload-too-large"
  /** A state object used after it moved on, or two opens at once. */
  | "misuse";

/** Why the session failed. */
export class NoiseError extends Error {
  override readonly name = "NoiseError";

  constructor(
    /** What kind of failure, for code that reacts to it. */
    readonly kind: NoiseErrorKind,
    message: string,
  ) {
    super(message);
  }
}

// ---------------------------------------------------------------------------
// Primitives: DH, HASH, HKDF, CipherState, SymmetricState (Noise spec sections 4, 5)
// ---------------------------------------------------------------------------

/** A fresh X25519 secret key from the platform's random number generator. */
export function generateSecretKey(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(32));
}

/** The X25519 public key of a 32-byte secret (RFC 7748 clamps the secret). */
export function publicKey(secret: Uint8Array): Uint8Array {
  return x25519.getPublicKey(secret);
}

/**
 * X25519(secret, public), or `undefined` where the result would be all-zero: a
 * low-order public key, whose shared secret anyone can compute. Every caller
 * refuses that case (PROTOCOL.md section 2).
 */
export function dh(secret: Uint8Array, pub: Uint8Array): Uint8Array | undefined {
  let shared: Uint8Array;
  try {
    // noble refuses low-order points itself, before running the ladder.
    shared = x25519.getSharedSecret(secret, pub);
  } catch {
    return undefined;
  }
  return shared.some((b) => b !== 0) ? shared : undefined;
}

function hash(...parts: Uint8Array[]): Uint8Array {
  return blake2s(concat(...parts));
}

/** Noise's HKDF with HMAC-BLAKE2s: two or three 32-byte outputs. */
export function hkdf(chainingKey: Uint8Array, ikm: Uint8Array, outputs: 2 | 3): Uint8Array[] {
  const temp = hmac(blake2s, chainingKey, ikm);
  const out1 = hmac(blake2s, temp, Uint8Array.of(0x01));
  const out2 = hmac(blake2s, temp, concat(out1, Uint8Array.of(0x02)));
  if (outputs === 2) return [out1, out2];
  return [out1, out2, hmac(blake2s, temp, concat(out2, Uint8Array.of(0x03)))];
}

const EMPTY = new Uint8Array(0);
const ZEROS_32 = new Uint8Array(32);

/**
 * One direction's key and counter (Noise spec section 5.1).
 *
 * The counter advances when a message is sealed or opened, and the key can change
 * by {@link rekey}; both happen synchronously at call time, so a caller that seals
 * several messages without awaiting each gets the nonces in call order. The key is
 * kept as a promise because `REKEY` itself needs an encryption.
 */
export class CipherState {
  private key: Promise<AeadKey>;
  private n = 0n;

  constructor(
    private readonly aead: Aead,
    raw: Uint8Array,
  ) {
    this.key = Promise.resolve(aead.importKey(raw));
  }

  /** The counter of the next message. */
  nonce(): bigint {
    return this.n;
  }

  /** Seals one message under the next nonce. */
  encryptWithAd(ad: Uint8Array, plaintext: Uint8Array): Promise<Uint8Array> {
    const n = this.take();
    const key = this.key;
    return key.then((k) => k.seal(n, ad, plaintext));
  }

  /** Opens one message under the next nonce; rejects with a `decrypt` error if it does not verify. */
  async decryptWithAd(ad: Uint8Array, ciphertext: Uint8Array): Promise<Uint8Array> {
    const n = this.take();
    const key = await this.key;
    try {
      return await key.open(n, ad, ciphertext);
    } catch (err) {
      if (err instanceof AeadError) {
        throw new NoiseError("decrypt", "frame failed authentication (altered, reordered or forged)");
      }
      throw err;
    }
  }

  /** `REKEY(k)`: the first 32 bytes of ENCRYPT(k, 2^64 − 1, empty, 32 zero bytes); the counter is kept. */
  rekey(): void {
    const old = this.key;
    this.key = old.then(async (k) => this.aead.importKey((await k.seal(MAX_NONCE, EMPTY, ZEROS_32)).subarray(0, 32)));
  }

  /** For tests that reach the end of the nonce space without sending 2^64 messages. */
  setNonceForTesting(n: bigint): void {
    this.n = n;
  }

  private take(): bigint {
    if (this.n >= MAX_NONCE) {
      throw new NoiseError("nonce-exhausted", "nonce space exhausted; the session must end");
    }
    return this.n++;
  }
}

/** The handshake's running hash, chaining key and key (Noise spec section 5.2). */
export class SymmetricState {
  /** The handshake hash `h`. */
  h: Uint8Array;
  private ck: Uint8Array;
  private cipher: CipherState | undefined;

  constructor(private readonly aead: Aead) {
    const name = new TextEncoder().encode(NOISE_PARAMS);
    // The name is 29 bytes, under HASHLEN (32): it is padded with zeros, not hashed.
    const h = new Uint8Array(32);
    h.set(name);
    this.h = h;
    this.ck = h.slice();
  }

  mixHash(data: Uint8Array): void {
    this.h = hash(this.h, data);
  }

  mixKey(ikm: Uint8Array): void {
    const [ck, k] = hkdf(this.ck, ikm, 2) as [Uint8Array, Uint8Array];
    this.ck = ck;
    this.cipher = new CipherState(this.aead, k);
  }

  async encryptAndHash(plaintext: Uint8Array): Promise<Uint8Array> {
    const ciphertext = this.cipher === undefined ? plaintext : await this.cipher.encryptWithAd(this.h, plaintext);
    this.mixHash(ciphertext);
    return ciphertext;
  }

  async decryptAndHash(ciphertext: Uint8Array): Promise<Uint8Array> {
    const plaintext = this.cipher === undefined ? ciphertext : await this.cipher.decryptWithAd(this.h, ciphertext);
    this.mixHash(ciphertext);
    return plaintext;
  }

  /** `Split()`: the initiator's sending state first (player → host), then host → player. */
  split(): [CipherState, CipherState] {
    const [k1, k2] = this.splitKeys();
    return [new CipherState(this.aead, k1), new CipherState(this.aead, k2)];
  }

  /** The raw keys `Split()` makes (player → host, host → player): what the resume id is derived from. */
  splitKeys(): [Uint8Array, Uint8Array] {
    return hkdf(this.ck, EMPTY, 2) as [Uint8Array, Uint8Array];
  }
}

/** Prepends the 2-byte big-endian length to one Noise message. */
export function frameMessage(message: Uint8Array): Uint8Array {
  if (message.length > MAX_MESSAGE_LEN) throw new RangeError("a Noise message is at most 65535 bytes");
  const out = new Uint8Array(2 + message.length);
  writeU16(out, 0, message.length);
  out.set(message, 2);
  return out;
}

/**
 * Collects length-prefixed Noise messages from a byte stream that arrives in pieces
 * of any size. It never holds more than one message and the next one's first bytes:
 * the 2-byte prefix cannot announce more than 65535.
 */
export class MessageReader {
  private buf: Uint8Array = new Uint8Array(0);

  /** Adds bytes received from the stream. */
  push(bytes: Uint8Array): void {
    this.buf = this.buf.length === 0 ? bytes.slice() : concat(this.buf, bytes);
  }

  /** The next whole message (without its prefix), or `undefined` until one has arrived. */
  next(): Uint8Array | undefined {
    if (this.buf.length < 2) return undefined;
    const len = ((this.buf[0] ?? 0) << 8) | (this.buf[1] ?? 0);
    if (this.buf.length < 2 + len) return undefined;
    const message = this.buf.slice(2, 2 + len);
    this.buf = this.buf.subarray(2 + len);
    return message;
  }

  /** Bytes received but not yet part of a whole message. */
  buffered(): number {
    return this.buf.length;
  }
}

// ---------------------------------------------------------------------------
// The player's states
// ---------------------------------------------------------------------------

/** Options of {@link PlayerHandshake.start}. */
export interface HandshakeOptions {
  /** AES-GCM implementation; WebCrypto's where available. */
  aead?: Aead;
  /**
   * A fixed ephemeral secret, for the pinned test vector only. Reusing an ephemeral
   * key breaks Noise: nothing but a test may pass this.
   */
  ephemeralSecretForTesting?: Uint8Array;
  /** What the hello asks for; `"plain"` (an empty payload) by default. */
  hello?: Hello;
}

/** The hello's payload for `hello`. */
function helloPayload(hello: Hello): Uint8Array {
  if (hello === "plain") return EMPTY;
  if (hello === "resumable") return new Uint8Array(RESUME_ID_LEN);
  if (hello.resume.length !== RESUME_ID_LEN || hello.resume.every((b) => b === 0)) {
    throw new NoiseError("misuse", "a resume id is 32 bytes, not all zero");
  }
  return hello.resume.slice();
}

/** The player's handshake (Noise initiator), before the host's reply. */
export class PlayerHandshake {
  private used = false;

  private constructor(
    private readonly symmetric: SymmetricState,
    private readonly staticKey: StaticKey,
    private readonly ephemeralSecret: Uint8Array,
    private readonly hostId: Uint8Array,
    /** The hello, framed (`0060` and 96 bytes, or `0080` and 128 with a 32-byte payload): write it right after `Connect`. */
    readonly hello: Uint8Array,
    /** What the hello asked for, which the verdict must answer. */
    readonly asked: Hello,
  ) {}

  /**
   * Builds the hello to the host `hostId` (its 32-byte static public key) as the
   * player with static key `player`: its 32 secret bytes, or a {@link StaticKey}
   * (a WebCrypto key the page cannot read out).
   */
  static async start(
    player: Uint8Array | StaticKey,
    hostId: Uint8Array,
    options: HandshakeOptions = {},
  ): Promise<PlayerHandshake> {
    if ((player instanceof Uint8Array && player.length !== 32) || hostId.length !== 32) {
      throw new NoiseError("handshake", "keys are 32 bytes");
    }
    const staticKey = player instanceof Uint8Array ? rawStaticKey(player) : player;
    // A low-order host key would make `es` and `ss` public, exposing the player's
    // static key to whoever relays the hello. No real host id is low-order.
    const ss = await staticKey.dh(hostId);
    if (ss === undefined) throw new NoiseError("handshake", "host id is not a usable X25519 key");
    const aead = options.aead ?? defaultAead();
    const ephemeralSecret = options.ephemeralSecretForTesting?.slice() ?? generateSecretKey();
    const symmetric = new SymmetricState(aead);
    symmetric.mixHash(PROLOGUE);
    symmetric.mixHash(hostId); // <- s, the pre-message
    const ephemeral = publicKey(ephemeralSecret);
    symmetric.mixHash(ephemeral); // -> e
    const es = dh(ephemeralSecret, hostId);
    if (es === undefined) throw new NoiseError("handshake", "key agreement failed");
    symmetric.mixKey(es); // es
    const encryptedStatic = await symmetric.encryptAndHash(staticKey.publicKey); // s
    symmetric.mixKey(ss); // ss
    // The payload only asks (section 10.2): the hello can be replayed, so nothing acts on it.
    const asked = options.hello ?? "plain";
    const payload = await symmetric.encryptAndHash(helloPayload(asked));
    const hello = frameMessage(concat(ephemeral, encryptedStatic, payload));
    return new PlayerHandshake(symmetric, staticKey, ephemeralSecret, hostId.slice(), hello, asked);
  }

  /**
   * Reads the host's reply (without its length prefix) and finishes the handshake.
   * What comes back can only open the host's verdict.
   */
  async readReply(reply: Uint8Array): Promise<ExpectVerdict> {
    if (this.used) throw new NoiseError("misuse", "the handshake has already read a reply");
    this.used = true;
    if (reply.length < 32 + TAG_LEN) {
      throw new NoiseError("handshake", "message has the wrong length");
    }
    const s = this.symmetric;
    const remoteEphemeral = reply.subarray(0, 32);
    s.mixHash(remoteEphemeral); // <- e
    const ee = dh(this.ephemeralSecret, remoteEphemeral);
    const se = await this.staticKey.dh(remoteEphemeral);
    if (ee === undefined || se === undefined) throw new NoiseError("handshake", "key agreement failed");
    s.mixKey(ee); // ee
    s.mixKey(se); // se
    try {
      // The payload is ignored: a later version may use it for something harmless.
      await s.decryptAndHash(reply.subarray(32));
    } catch (err) {
      if (err instanceof NoiseError && err.kind === "decrypt") {
        throw new NoiseError("handshake", "message failed authentication (wrong host key, or altered)");
      }
      throw err;
    }
    this.ephemeralSecret.fill(0);
    const [send, receive] = s.split();
    const resumeId = deriveResumeId(...s.splitKeys());
    return new ExpectVerdict(new Transport(send, receive, this.hostId, s.h, resumeId), this.asked);
  }
}

/** What the host's verdict allowed. */
export type VerdictOpened =
  /** Served: `transport.resumable` says whether the host agreed to resume (0x02) or not (0x00). */
  | { readonly verdict: "welcome"; readonly transport: Transport }
  /** The host holds the session the hello asked to resume: it goes on here. */
  | { readonly verdict: "resumed"; readonly transport: Transport }
  | { readonly verdict: "not-authorized"; readonly refused: Refused }
  /** The host holds no session by the resume id the hello gave; it ends as "not authorized". */
  | { readonly verdict: "unknown-session"; readonly refused: Refused };

/** The player after the handshake: the keys are known, the host's verdict is not. */
export class ExpectVerdict {
  private used = false;

  /** @internal */
  constructor(
    private readonly transport: Transport,
    private readonly asked: Hello,
  ) {}

  /** The handshake hash at the end of the handshake (the pinned vector checks it). */
  get handshakeHash(): Uint8Array {
    return this.transport.handshakeHash;
  }

  /** Opens the host's first frame (without its length prefix), which must be its verdict. */
  async openVerdict(frame: Uint8Array): Promise<VerdictOpened> {
    if (this.used) throw new NoiseError("misuse", "the verdict has already been opened");
    this.used = true;
    const plaintext = await this.transport.openRaw(frame);
    const kind = plaintext[plaintext.length - 1];
    if (kind !== FrameType.VERDICT) {
      throw this.transport.fail(new NoiseError("out-of-order", "the host's first frame must be its verdict"));
    }
    if (plaintext.length !== 2 || (plaintext[0] ?? 0xff) > VerdictByte.UNKNOWN_SESSION) {
      throw this.transport.fail(new NoiseError("malformed-frame", "malformed verdict frame"));
    }
    const resuming = typeof this.asked === "object";
    switch (plaintext[0]) {
      case VerdictByte.WELCOME:
        if (!resuming) return { verdict: "welcome", transport: this.transport };
        break;
      case VerdictByte.WELCOME_RESUMABLE:
        if (this.asked === "resumable") {
          this.transport.markResumable();
          return { verdict: "welcome", transport: this.transport };
        }
        break;
      case VerdictByte.RESUMED:
        if (resuming) {
          this.transport.markResumable();
          return { verdict: "resumed", transport: this.transport };
        }
        break;
      case VerdictByte.NOT_AUTHORIZED:
        // "Not authorized" ends the host's direction: nothing may be opened after it.
        this.transport.markReceivedEnd();
        return { verdict: "not-authorized", refused: new Refused(this.transport) };
      case VerdictByte.UNKNOWN_SESSION:
        if (resuming) {
          this.transport.markReceivedEnd();
          return { verdict: "unknown-session", refused: new Refused(this.transport) };
        }
        break;
    }
    throw this.transport.fail(new NoiseError("out-of-order", "the verdict does not answer the hello"));
  }
}

/**
 * A session the host refused: all the player may do is seal its one `end` frame, so
 * that it leaves exactly as a served player that leaves at once (section 9.6).
 */
export class Refused {
  private used = false;

  /** @internal */
  constructor(private readonly transport: Transport) {}

  /** Seals this side's end of stream (framed), the last frame it sends. */
  async sealEnd(): Promise<Uint8Array> {
    if (this.used) throw new NoiseError("misuse", "the end has already been sealed");
    this.used = true;
    return this.transport.sealEnd();
  }
}

/** What one received transport frame was. */
export type Opened =
  | { readonly type: "data"; readonly data: Uint8Array }
  | { readonly type: "rekeyed" }
  | { readonly type: "end" }
  /** The host has every byte this side sent up to `count` (resumable sessions only). */
  | { readonly type: "ack"; readonly count: bigint };

/** An established session: seals outgoing frames and opens incoming ones. */
export class Transport {
  private rekeyInterval = DEFAULT_REKEY_INTERVAL;
  private sentUnderKey = 0;
  private sentEnd = false;
  private receivedEnd = false;
  private opening = false;
  private failed: NoiseError | undefined;
  private canResume = false;

  /** @internal */
  constructor(
    private readonly sendState: CipherState,
    private readonly receiveState: CipherState,
    /** The host id the handshake was encrypted to. */
    readonly remoteStatic: Uint8Array,
    /** The handshake hash at the end of the handshake. */
    readonly handshakeHash: Uint8Array,
    /**
     * The id a resume hello gives to continue this session on another stream
     * (section 10.8): known to the two ends only, new for every handshake.
     */
    readonly resumeId: Uint8Array,
  ) {}

  /** Whether both ends acknowledge what they receive, so that the session can be resumed (verdict 0x02 or 0x03). */
  get resumable(): boolean {
    return this.canResume;
  }

  /** Sets how many messages this side sends under one key (at least 1). */
  setRekeyInterval(messages: number): void {
    this.rekeyInterval = Math.max(1, Math.floor(messages));
  }

  /** Whether the host's end of stream has arrived. */
  get hasReceivedEnd(): boolean {
    return this.receivedEnd;
  }

  /** Whether this side has sealed its end of stream. */
  get hasSentEnd(): boolean {
    return this.sentEnd;
  }

  /**
   * Seals up to {@link MAX_PLAINTEXT_LEN} application bytes as one data frame,
   * framed; a rekey frame goes before it when the key is due for one. An empty
   * input gives empty output: an empty data frame is never sent.
   */
  // An async function runs up to its first await at call time: the nonce and rekey
  // bookkeeping below happens in call order even when callers do not await each seal.
  async seal(data: Uint8Array): Promise<Uint8Array> {
    this.check();
    if (data.length > MAX_PLAINTEXT_LEN) {
      throw new NoiseError("payload-too-large", `${data.length} bytes do not fit one frame (max ${MAX_PLAINTEXT_LEN})`);
    }
    if (data.length === 0) return new Uint8Array(0);
    return this.sealFrame(FrameType.DATA, data);
  }

  /** Seals `data` of any length as full data frames, in order. */
  async sealAll(data: Uint8Array): Promise<Uint8Array> {
    const frames: Promise<Uint8Array>[] = [];
    for (let at = 0; at < data.length; at += MAX_PLAINTEXT_LEN) {
      frames.push(this.seal(data.subarray(at, at + MAX_PLAINTEXT_LEN)));
    }
    return concat(...(await Promise.all(frames)));
  }

  /**
   * Seals an acknowledgement (framed): this side has every byte the host sent, up
   * to `count`. Resumable sessions only; it may follow this side's end.
   */
  async sealAck(count: number): Promise<Uint8Array> {
    this.check();
    if (!this.canResume) throw new NoiseError("misuse", "acknowledgements belong to resumable sessions");
    const body = new Uint8Array(8);
    writeU64(body, 0, BigInt(count));
    return this.sealFrame(FrameType.ACK, body);
  }

  /** Seals the authenticated end of stream (framed). Nothing but acknowledgements can be sealed after it. */
  async sealEnd(): Promise<Uint8Array> {
    this.check();
    const sealed = this.sealFrame(FrameType.END, EMPTY);
    this.sentEnd = true;
    return sealed;
  }

  /**
   * Opens one received frame (without its length prefix). Await each call before
   * the next: a rekey frame changes the key of the frames after it.
   */
  async open(frame: Uint8Array): Promise<Opened> {
    // In a resumable session the host's end closes its data, not its acknowledgements
    // of ours: those (and rekeys) go on until the stream ends (section 10.8).
    if (this.receivedEnd && !this.canResume) throw this.fail(new NoiseError("data-after-end", "data after the end of stream"));
    const plaintext = await this.openRaw(frame);
    const kind = plaintext[plaintext.length - 1];
    const bodyLen = plaintext.length - 1;
    if (this.receivedEnd && kind !== FrameType.ACK && kind !== FrameType.REKEY) {
      throw this.fail(new NoiseError("data-after-end", "data after the end of stream"));
    }
    switch (kind) {
      case FrameType.DATA:
        if (bodyLen === 0) throw this.fail(new NoiseError("malformed-frame", "malformed data frame"));
        return { type: "data", data: plaintext.subarray(0, bodyLen) };
      case FrameType.END:
        if (bodyLen !== 0) throw this.fail(new NoiseError("malformed-frame", "malformed end frame"));
        this.receivedEnd = true;
        return { type: "end" };
      case FrameType.REKEY:
        if (bodyLen !== 0) throw this.fail(new NoiseError("malformed-frame", "malformed rekey frame"));
        this.receiveState.rekey();
        return { type: "rekeyed" };
      case FrameType.VERDICT:
        throw this.fail(new NoiseError("out-of-order", "a verdict comes only from the host, once, first"));
      case FrameType.ACK:
        if (!this.canResume) throw this.fail(new NoiseError("out-of-order", "acknowledgements belong to resumable sessions"));
        if (bodyLen !== 8) throw this.fail(new NoiseError("malformed-frame", "malformed ack frame"));
        return { type: "ack", count: readU64(plaintext, 0) };
      default:
        throw this.fail(new NoiseError("unknown-frame-type", `unknown frame type 0x${(kind ?? 0).toString(16).padStart(2, "0")}`));
    }
  }

  /** Call when the stream ends: fine after the host's end, a `truncated` error before it. */
  handleEof(): void {
    if (!this.receivedEnd) {
      throw this.fail(new NoiseError("truncated", "session truncated: the stream ended without an authenticated end of stream"));
    }
  }

  /** For tests: the counters of the next message sealed and opened. */
  noncesForTesting(): { send: bigint; receive: bigint } {
    return { send: this.sendState.nonce(), receive: this.receiveState.nonce() };
  }

  /** For tests that reach the end of the nonce space without sending 2^64 messages. */
  setNoncesForTesting(send: bigint, receive: bigint): void {
    this.sendState.setNonceForTesting(send);
    this.receiveState.setNonceForTesting(receive);
  }

  /** @internal Decrypts one frame and checks that it is not empty. */
  async openRaw(frame: Uint8Array): Promise<Uint8Array> {
    this.check();
    if (this.opening) throw new NoiseError("misuse", "open called while another open is pending");
    this.opening = true;
    try {
      const plaintext = await this.receiveState.decryptWithAd(EMPTY, frame);
      if (plaintext.length === 0) throw new NoiseError("malformed-frame", "malformed empty frame");
      return plaintext;
    } catch (err) {
      throw err instanceof NoiseError ? this.fail(err) : err;
    } finally {
      this.opening = false;
    }
  }

  /** @internal */
  markReceivedEnd(): void {
    this.receivedEnd = true;
  }

  /** @internal The verdict made the session resumable. */
  markResumable(): void {
    this.canResume = true;
  }

  /** @internal Records `err` as the end of this session and returns it. */
  fail(err: NoiseError): NoiseError {
    this.failed ??= err;
    return err;
  }

  private check(): void {
    if (this.failed !== undefined) throw this.failed;
  }

  private sealFrame(kind: number, body: Uint8Array): Promise<Uint8Array> {
    if (this.sentEnd && kind !== FrameType.ACK) {
      return Promise.reject(new NoiseError("write-after-end", "write after the end of stream"));
    }
    const parts: Promise<Uint8Array>[] = [];
    try {
      // Each key seals exactly `rekeyInterval` messages, the last of them the rekey
      // frame; nonces are not reset (section 10.5).
      if (this.sentUnderKey + 1 >= this.rekeyInterval) {
        parts.push(this.sealRaw(FrameType.REKEY, EMPTY));
        this.sendState.rekey();
        this.sentUnderKey = 0;
      }
      parts.push(this.sealRaw(kind, body));
      this.sentUnderKey += 1;
    } catch (err) {
      return Promise.reject(err instanceof NoiseError ? this.fail(err) : err);
    }
    return Promise.all(parts).then((framed) => concat(...framed));
  }

  private sealRaw(kind: number, body: Uint8Array): Promise<Uint8Array> {
    const plaintext = new Uint8Array(body.length + 1);
    plaintext.set(body);
    plaintext[body.length] = kind;
    return this.sendState.encryptWithAd(EMPTY, plaintext).then(frameMessage);
  }
}
