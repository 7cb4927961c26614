// A host side for tests, built from the same primitives as the player (the Noise
// responder of IK, written out step by step), plus a stand-in for a WebSocket to
// the relay. Nothing here is used by the player's code.
import { concat } from "../../build/bytes.js";
import { FrameDecoder, encodeData, encodeFrame } from "../../build/frames.js";
import {
  FrameType,
  MessageReader,
  PROLOGUE,
  SymmetricState,
  deriveResumeId,
  dh,
  frameMessage,
  generateSecretKey,
  publicKey,
} from "../../build/noise.js";

const EMPTY = new Uint8Array(0);

/** The host's side of one session: reads a hello, answers, seals and opens frames. */
export class TestHost {
  constructor(hostSecret, aead, { rekeyInterval = 65536 } = {}) {
    this.hostSecret = hostSecret;
    this.aead = aead;
    this.rekeyInterval = rekeyInterval;
    this.sentUnderKey = 0;
  }

  /** `<- s; -> e, es, s, ss` read, `<- e, ee, se` written: returns the framed reply. */
  async respond(hello, ephemeral = generateSecretKey()) {
    const s = new SymmetricState(this.aead);
    s.mixHash(PROLOGUE);
    s.mixHash(publicKey(this.hostSecret));
    const re = hello.subarray(0, 32);
    s.mixHash(re);
    s.mixKey(dh(this.hostSecret, re));
    const rs = await s.decryptAndHash(hello.subarray(32, 80));
    s.mixKey(dh(this.hostSecret, rs));
    // What the player asked for: empty, 32 zero bytes (resumable), or a resume id.
    this.helloPayload = await s.decryptAndHash(hello.subarray(80));
    const epub = publicKey(ephemeral);
    s.mixHash(epub);
    s.mixKey(dh(ephemeral, re));
    s.mixKey(dh(ephemeral, rs));
    const payload = await s.encryptAndHash(EMPTY);
    const [toHost, toPlayer] = s.split();
    this.resumeId = deriveResumeId(...s.splitKeys());
    this.playerKey = rs;
    this.send = toPlayer;
    this.receive = toHost;
    this.handshakeHash = s.h;
    return frameMessage(concat(epub, payload));
  }

  /** The verdict (welcome unless `refuse`), the host's message 0. */
  async verdict(refuse = false) {
    return this.verdictByte(refuse ? 1 : 0);
  }

  /** The verdict with its byte: 0x02 welcome-resumable, 0x03 resumed, 0x04 unknown session, … */
  async verdictByte(byte) {
    this.sentUnderKey = 1;
    return this.raw(FrameType.VERDICT, Uint8Array.of(byte));
  }

  /** An ack frame of `count` (section 10.8). */
  async ack(count) {
    const body = new Uint8Array(8);
    new DataView(body.buffer).setBigUint64(0, BigInt(count));
    return this.seal(FrameType.ACK, body);
  }

  /** Seals one frame of `kind`, rekeying first when due, as section 10.5 says. */
  async seal(kind, body) {
    const parts = [];
    if (this.sentUnderKey + 1 >= this.rekeyInterval) {
      parts.push(await this.raw(FrameType.REKEY, EMPTY));
      this.send.rekey();
      this.sentUnderKey = 0;
    }
    parts.push(await this.raw(kind, body));
    this.sentUnderKey += 1;
    return concat(...parts);
  }

  async raw(kind, body) {
    return frameMessage(await this.send.encryptWithAd(EMPTY, concat(body, Uint8Array.of(kind))));
  }

  /** Opens one message: `{ kind, body }` (and `count` for an ack), following the player's rekeys. */
  async open(message) {
    const plain = await this.receive.decryptWithAd(EMPTY, message);
    const kind = plain[plain.length - 1];
    if (kind === FrameType.REKEY) this.receive.rekey();
    const body = plain.subarray(0, plain.length - 1);
    if (kind === FrameType.ACK) return { kind, body, count: Number(new DataView(body.buffer, body.byteOffset, 8).getBigUint64(0)) };
    return { kind, body };
  }
}

/**
 * A WebSocket stand-in: what the player sends arrives at `far`, what the test sends
 * through `far` arrives at the player, each on a later turn of the event loop as a
 * real socket's would.
 */
export class SocketPair {
  constructor() {
    const listeners = { open: [], message: [], close: [], error: [] };
    const emit = (type, event = {}) => listeners[type].forEach((f) => f(event));
    const far = (this.far = new FarEnd(emit));
    this.openCount = 0;
    this.player = {
      binaryType: "blob",
      readyState: 0,
      bufferedAmount: 0,
      addEventListener: (type, f) => {
        listeners[type].push(f);
        // Like a real socket, it opens on a later turn than the one that made it.
        if (type === "open") {
          setImmediate(() => {
            this.player.readyState = 1;
            emit("open");
          });
        }
      },
      send: (bytes) => {
        const copy = bytes.slice();
        setImmediate(() => far.receive(copy));
      },
      close: () => {
        if (far.closedByPlayer) return;
        far.closedByPlayer = true;
        far.wake();
        setImmediate(() => emit("close"));
      },
    };
  }
}

class FarEnd {
  constructor(emit) {
    this.emit = emit;
    this.decoder = new FrameDecoder();
    this.frames = [];
    this.stream = new MessageReader();
    this.streamBytes = [];
    this.waiters = [];
    this.closedByPlayer = false;
  }

  receive(bytes) {
    this.decoder.push(bytes);
    for (let f = this.decoder.next(); f !== undefined; f = this.decoder.next()) {
      this.frames.push(f);
      if (f.type === "data") this.streamBytes.push(f.data);
    }
    this.wake();
  }

  wake() {
    const w = this.waiters;
    this.waiters = [];
    w.forEach((f) => f());
  }

  /** Waits until `check()` returns something other than undefined (5 s at most). */
  async until(check, what) {
    const deadline = Date.now() + 5000;
    for (;;) {
      const value = check();
      if (value !== undefined) return value;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, Math.max(1, deadline - Date.now()));
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** The player's stream bytes so far, joined. */
  streamSoFar() {
    return concat(...this.streamBytes);
  }

  /** Waits for `n` stream bytes from the player and takes them. */
  async takeStream(n) {
    await this.until(() => (concat(...this.streamBytes).length >= n ? true : undefined), `${n} stream bytes`);
    const all = concat(...this.streamBytes);
    this.streamBytes = [all.subarray(n)];
    return all.subarray(0, n);
  }

  /** Waits for one whole Noise message from the player. */
  async takeMessage() {
    const head = await this.takeStream(2);
    return this.takeStream((head[0] << 8) | head[1]);
  }

  /** Waits for a non-DATA frame of `type` from the player. */
  async frame(type) {
    return this.until(() => this.frames.find((f) => f.type === type), `a ${type} frame`);
  }

  sendStream(bytes) {
    this.sendRaw(encodeData(bytes));
  }

  sendFrame(frame) {
    this.sendRaw(encodeFrame(frame));
  }

  sendRaw(bytes) {
    const copy = bytes.slice();
    setImmediate(() => this.emit("message", { data: copy.buffer }));
  }

  /** The connection is lost under the player (a relay killed, a network gone): its WebSocket closes. */
  cut() {
    this.cutByTest = true;
    setImmediate(() => this.emit("close"));
  }

  sendText(text) {
    setImmediate(() => this.emit("message", { data: text }));
  }
}
