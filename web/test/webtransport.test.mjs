// The player session on a WebTransport stream (PROTOCOL.md 19.1), over a stand-in
// for the browser's WebTransport with the relay's and host's side scripted in the
// test; and the choice between WebTransport and WebSocket (src/transport.ts):
// WebTransport first, WebSocket when it is missing, fails, or is not wanted.
import assert from "node:assert/strict";
import { test } from "node:test";

import { webCryptoAead } from "../build/aead.js";
import { concat, fromHex, toHex } from "../build/bytes.js";
import { StreamCode } from "../build/codes.js";
import { FrameType, publicKey } from "../build/noise.js";
import { connectPlayer } from "../build/session.js";
import { RelayTransports, parseInfo } from "../build/transport.js";
import { keepAlive, streamAbortReason, streamCodeOf } from "../build/webtransport.js";
import { SocketPair, TestHost } from "./support/host.mjs";

const PLAYER = new Uint8Array(32).fill(0x11);
const HOST = new Uint8Array(32).fill(0x22);
const aead = webCryptoAead(globalThis.crypto.subtle);
const CONNECTED = fromHex("002e0111" + "0000000000000009" + "0".repeat(72));
const ORIGIN = "https://h.localhost:4433";
const INFO = { url: `${ORIGIN}/blindrelay/1`, serverCertificateHashes: [{ algorithm: "sha-256", value: "AAECAw==" }] };

/** A WebTransport error as the browser makes one for a stream's code. */
function streamError(code) {
  return Object.assign(new Error(`stream code ${code}`), { name: "WebTransportError", streamErrorCode: code });
}

/** The relay's end of one bidirectional stream: what the player wrote, and a way to answer. */
class FarStream {
  constructor() {
    this.bytes = new Uint8Array(0);
    this.finished = false;
    this.abortedWith = undefined;
    this.cancelledWith = undefined;
    this.waiters = [];
    this.readable = new ReadableStream({
      start: (controller) => {
        this.controller = controller;
      },
      cancel: (reason) => {
        this.cancelledWith = reason;
        this.wake();
      },
    });
    this.writable = new WritableStream({
      write: (chunk) => {
        if (this.stopCode !== undefined) throw streamError(this.stopCode);
        this.bytes = concat(this.bytes, chunk);
        this.wake();
      },
      close: () => {
        this.finished = true;
        this.wake();
      },
      abort: (reason) => {
        this.abortedWith = reason;
        this.wake();
      },
    });
  }

  wake() {
    for (const w of this.waiters.splice(0)) w();
  }

  async until(check, what) {
    const deadline = Date.now() + 5000;
    while (!check()) {
      if (Date.now() > deadline) throw new Error(`the player never ${what}`);
      await new Promise((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 50);
      });
    }
  }

  async take(n) {
    await this.until(() => this.bytes.length >= n, `wrote ${n} bytes`);
    const out = this.bytes.slice(0, n);
    this.bytes = this.bytes.slice(n);
    return out;
  }

  async takeMessage() {
    const prefix = await this.take(2);
    return this.take((prefix[0] << 8) | prefix[1]);
  }

  send(bytes) {
    this.controller.enqueue(bytes);
  }
}

/** A stand-in for the browser's WebTransport: each stream the player opens is a FarStream. */
class FakeWebTransport {
  constructor({ ready = Promise.resolve() } = {}) {
    this.ready = ready;
    this.streams = [];
    this.closed = new Promise((resolve) => {
      this.resolveClosed = resolve;
    });
  }

  async createBidirectionalStream() {
    const far = new FarStream();
    this.streams.push(far);
    return { readable: far.readable, writable: far.writable };
  }

  close(info = {}) {
    this.resolveClosed(info);
  }
}

/** Plays the relay and host on `wt`'s stream number `index` up to the welcome. */
async function relayAndHost(wt, index = 0) {
  const host = new TestHost(HOST, aead);
  const deadline = Date.now() + 5000;
  while (wt.streams.length <= index && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
  const far = wt.streams[index];
  // No stream frames: the control stream's bytes as on QUIC.
  assert.equal(toHex(await far.take(36)), "00220110" + toHex(publicKey(HOST)));
  const hello = await far.takeMessage();
  assert.equal(hello.length, 128, "a resumable hello: 32 bytes of payload");
  far.send(concat(CONNECTED, await host.respond(hello), await host.verdict()));
  return { far, host };
}

test("a session on a WebTransport stream carries bytes both ways, unframed, and ends cleanly", async () => {
  const wt = new FakeWebTransport();
  const connecting = connectPlayer({ webTransport: wt, hostId: publicKey(HOST), playerSecret: PLAYER, aead });
  const { far, host } = await relayAndHost(wt);
  const session = await connecting;
  assert.equal(session.transport, "webtransport");
  assert.equal(session.sessionId, 9n);

  const writer = session.writable.getWriter();
  const up = new Uint8Array(100_000).map((_, i) => i & 0xff);
  await writer.write(up);
  await writer.close();
  const got = [];
  for (;;) {
    const { kind, body } = await host.open(await far.takeMessage());
    if (kind === FrameType.END) break;
    got.push(body);
  }
  assert.deepEqual(concat(...got), up);
  await far.until(() => far.finished, "finished its direction");

  far.send(await host.seal(FrameType.DATA, new TextEncoder().encode("from the host")));
  far.send(await host.seal(FrameType.END, new Uint8Array(0)));
  far.controller.close();
  const chunks = [];
  for await (const chunk of session.readable) chunks.push(chunk);
  assert.equal(new TextDecoder().decode(concat(...chunks)), "from the host");
  assert.equal(far.abortedWith, undefined, "a clean end resets nothing");
});

test("a reset of the stream ends the session with its code's meaning", async () => {
  const wt = new FakeWebTransport();
  const connecting = connectPlayer({ webTransport: wt, hostId: publicKey(HOST), playerSecret: PLAYER, aead });
  const { far } = await relayAndHost(wt);
  const session = await connecting;
  far.controller.error(streamError(StreamCode.BYTE_LIMIT));
  const reader = session.readable.getReader();
  await assert.rejects(reader.read(), { name: "SessionError", kind: "byte-limit", code: StreamCode.BYTE_LIMIT });
});

test("a relay Error on a WebTransport stream is reported, and STOP_SENDING does not hide it", async () => {
  const wt = new FakeWebTransport();
  const connecting = connectPlayer({ webTransport: wt, hostId: publicKey(HOST), playerSecret: PLAYER, aead });
  while (wt.streams.length === 0) await new Promise((r) => setTimeout(r, 5));
  const far = wt.streams[0];
  await far.take(36 + 130);
  far.stopCode = StreamCode.REFUSED;
  far.send(fromHex("0012017f0003000c686f7374206f66666c696e65"));
  far.controller.close();
  await assert.rejects(connecting, { name: "SessionError", kind: "relay-refused", code: 3 });
});

test("a bad frame from the host abandons the stream with PROTOCOL_VIOLATION both ways", async () => {
  const wt = new FakeWebTransport();
  const connecting = connectPlayer({ webTransport: wt, hostId: publicKey(HOST), playerSecret: PLAYER, aead });
  const { far } = await relayAndHost(wt);
  const session = await connecting;
  far.send(fromHex("0013" + "00".repeat(19)));
  await assert.rejects(session.readable.getReader().read(), { kind: "protocol" });
  await far.until(() => far.abortedWith !== undefined && far.cancelledWith !== undefined, "reset and stopped the stream");
  assert.equal(far.abortedWith.streamErrorCode, StreamCode.PROTOCOL_VIOLATION);
  assert.equal(far.cancelledWith.streamErrorCode, StreamCode.PROTOCOL_VIOLATION);
});

test("WebTransport is used first, on one connection for every session, with the relay's certificate hashes", async () => {
  const opened = [];
  const wt = new FakeWebTransport();
  const transports = new RelayTransports({
    origin: ORIGIN,
    setting: "auto",
    fetchInfo: async () => INFO,
    openWebTransport: (url, options) => {
      opened.push({ url, options });
      return wt;
    },
  });
  for (let i = 0; i < 2; i++) {
    const connecting = transports.connect({ hostId: publicKey(HOST), playerSecret: PLAYER, aead });
    await relayAndHost(wt, i);
    assert.equal((await connecting).transport, "webtransport");
  }
  assert.equal(opened.length, 1, "one WebTransport session for both");
  assert.equal(opened[0].url, `${ORIGIN}/blindrelay/1`);
  assert.deepEqual([...opened[0].options.serverCertificateHashes[0].value], [0, 1, 2, 3]);
  assert.equal(wt.streams.length, 2);
  assert.equal(transports.lastUsed, "webtransport");
});

test("a WebTransport session that closed is opened again for the next session, not given up", async () => {
  const sessions = [];
  const transports = new RelayTransports({
    origin: ORIGIN,
    setting: "auto",
    fetchInfo: async () => INFO,
    openWebTransport: () => {
      const wt = new FakeWebTransport();
      sessions.push(wt);
      return wt;
    },
  });
  const first = transports.connect({ hostId: publicKey(HOST), playerSecret: PLAYER, aead });
  while (sessions.length < 1) await new Promise((r) => setTimeout(r, 5));
  await relayAndHost(sessions[0]);
  assert.equal((await first).transport, "webtransport");
  // The relay went away under the page without the closed event having come yet: no stream any more.
  sessions[0].createBidirectionalStream = async () => {
    throw new Error("the session is closed");
  };
  const second = transports.connect({ hostId: publicKey(HOST), playerSecret: PLAYER, aead });
  while (sessions.length < 2) await new Promise((r) => setTimeout(r, 5));
  await relayAndHost(sessions[1]);
  assert.equal((await second).transport, "webtransport");
  assert.equal(transports.webTransportFailure, undefined);
});

test("WebSocket is used when WebTransport fails, is missing, or is not wanted", async () => {
  const cases = [
    {
      why: "never ready",
      options: { openWebTransport: () => new FakeWebTransport({ ready: Promise.reject(new Error("certificate refused")) }) },
      failure: /certificate refused/,
    },
    { why: "missing", options: { openWebTransport: undefined }, failure: /no WebTransport/ },
    {
      why: "another origin",
      options: { fetchInfo: async () => ({ ...INFO, url: "https://elsewhere.example/blindrelay/1" }) },
      failure: /another origin/,
    },
    { why: "not wanted", options: { setting: "websocket" }, failure: undefined },
  ];
  for (const { why, options, failure } of cases) {
    let triedWebTransport = false;
    const transports = new RelayTransports({
      origin: ORIGIN,
      setting: "auto",
      fetchInfo: async () => INFO,
      openWebTransport: () => {
        triedWebTransport = true;
        return new FakeWebTransport();
      },
      ...options,
    });
    const pair = new SocketPair();
    const host = new TestHost(HOST, aead);
    const connecting = transports.connect({
      hostId: publicKey(HOST),
      playerSecret: PLAYER,
      aead,
      keepAliveMs: 0,
      openWebSocket: (url) => {
        assert.equal(url, "wss://h.localhost:4433/blindrelay/1", why);
        return pair.player;
      },
    });
    await pair.far.takeStream(36);
    pair.far.sendStream(concat(CONNECTED, await host.respond(await pair.far.takeMessage()), await host.verdict()));
    const session = await connecting;
    assert.equal(session.transport, "websocket", why);
    if (failure === undefined) {
      assert.equal(triedWebTransport, false, why);
      assert.equal(transports.webTransportFailure, undefined, why);
    } else {
      assert.match(transports.webTransportFailure, failure, why);
      // For a while after a failure, WebSocket straight away.
      assert.equal(transports.preferred(), "websocket", why);
    }
    session.abort();
  }
});

/** `Redirect { members }` as a relay writes it (PROTOCOL.md section 18.3). */
function redirect(members) {
  const names = members.map((m) => new TextEncoder().encode(m));
  const body = concat(Uint8Array.of(0x01, 0x07, names.length), ...names.map((n) => concat(Uint8Array.of(n.length), n)));
  return concat(Uint8Array.of(body.length >> 8, body.length & 0xff), body);
}

test("a redirect is followed over WebTransport in a pool with a CA's certificate, over WebSocket in one trusted by pin", async () => {
  const member = "127.0.0.1:4434";
  for (const pinned of [false, true]) {
    const info = { ...INFO, serverCertificateHashes: pinned ? INFO.serverCertificateHashes : [], members: [member] };
    const opened = [];
    const sockets = [];
    const transports = new RelayTransports({
      origin: ORIGIN,
      setting: "auto",
      fetchInfo: async () => info,
      openWebTransport: (url, options) => {
        const wt = new FakeWebTransport();
        opened.push({ url, options, wt });
        return wt;
      },
    });
    const connecting = transports.connect({
      hostId: publicKey(HOST),
      playerSecret: PLAYER,
      aead,
      keepAliveMs: 0,
      openWebSocket: (url) => {
        const pair = new SocketPair();
        sockets.push({ url, far: pair.far });
        return pair.player;
      },
    });
    while (opened.length < 1 || opened[0].wt.streams.length < 1) await new Promise((r) => setTimeout(r, 5));
    assert.equal(opened[0].url, `${ORIGIN}/blindrelay/1`);
    const entry = opened[0].wt.streams[0];
    await entry.take(36);
    entry.send(redirect([member]));
    const host = new TestHost(HOST, aead);
    if (pinned) {
      // Each member's short-lived certificate is its own: the hashes would not match there.
      while (sockets.length < 1) await new Promise((r) => setTimeout(r, 5));
      assert.equal(sockets[0].url, `wss://${member}/blindrelay/1`);
      const connect = await sockets[0].far.takeStream(37);
      assert.equal(connect[36], 1);
      sockets[0].far.sendStream(concat(CONNECTED, await host.respond(await sockets[0].far.takeMessage()), await host.verdict()));
      assert.equal((await connecting).transport, "websocket");
      assert.equal(opened.length, 1);
    } else {
      while (opened.length < 2 || opened[1].wt.streams.length < 1) await new Promise((r) => setTimeout(r, 5));
      assert.equal(opened[1].url, `https://${member}/blindrelay/1`);
      assert.deepEqual(opened[1].options, {}, "a CA's certificate: no hashes");
      const far = opened[1].wt.streams[0];
      const connect = await far.take(37);
      assert.equal(connect[36], 1);
      far.send(concat(CONNECTED, await host.respond(await far.takeMessage()), await host.verdict()));
      assert.equal((await connecting).transport, "webtransport");
      assert.equal(sockets.length, 0);
    }
    assert.equal(transports.poolMember(), member);
    transports.close();
  }
});

test("when the host moves between members, the sessions at the old one keep their WebTransport session", async () => {
  const [a, b] = ["127.0.0.1:4434", "127.0.0.1:4435"];
  const info = { ...INFO, serverCertificateHashes: [], members: [a, b] };
  const opened = [];
  const transports = new RelayTransports({
    origin: ORIGIN,
    setting: "auto",
    fetchInfo: async () => info,
    keepAliveMs: 0,
    openWebTransport: (url) => {
      const wt = new FakeWebTransport();
      const close = wt.close.bind(wt);
      wt.close = (why) => {
        wt.closedByPage = true;
        close(why);
      };
      opened.push({ url, wt });
      return wt;
    },
  });
  const streamOf = async (n, index = 0) => {
    while (opened.length <= n || opened[n].wt.streams.length <= index) await new Promise((r) => setTimeout(r, 5));
    return opened[n].wt.streams[index];
  };
  const serve = async (far) => {
    const host = new TestHost(HOST, aead);
    far.send(concat(CONNECTED, await host.respond(await far.takeMessage()), await host.verdict()));
  };
  const base = { hostId: publicKey(HOST), playerSecret: PLAYER, aead };
  // The page's relay sends the first session to a, which serves it.
  const first = transports.connect(base);
  const entry = await streamOf(0);
  await entry.take(36);
  entry.send(redirect([a]));
  const atA = await streamOf(1);
  await atA.take(37);
  await serve(atA);
  await first;
  // The host moved on to b: a redirects the next session there.
  const second = transports.connect(base);
  const again = await streamOf(1, 1);
  await again.take(36);
  again.send(redirect([b]));
  const atB = await streamOf(2);
  assert.equal(opened[2].url, `https://${b}/blindrelay/1`);
  await atB.take(37);
  await serve(atB);
  await second;
  assert.equal(opened[1].wt.closedByPage, undefined, "the session running at a keeps its WebTransport session");
  assert.equal(transports.poolMember(), b);
  transports.close();
  await new Promise((resolve) => setTimeout(resolve, 0));
  assert.equal(opened[1].wt.closedByPage, true);
  assert.equal(opened[2].wt.closedByPage, true);
});

test("webtransport.json is checked before it is used", () => {
  // A relay on its own (or from before pools in the page) lists no members.
  assert.deepEqual(parseInfo(INFO), { ...INFO, members: [] });
  const pooled = { ...INFO, members: ["127.0.0.1:4434", "relay-1.example:443"] };
  assert.deepEqual(parseInfo(pooled), pooled);
  assert.deepEqual(parseInfo({ url: INFO.url, serverCertificateHashes: [] }).serverCertificateHashes, []);
  for (const bad of [
    null,
    "x",
    { url: "http://h/blindrelay/1", serverCertificateHashes: [] },
    { url: INFO.url },
    { url: INFO.url, serverCertificateHashes: [{ algorithm: "sha-1", value: "AA==" }] },
    { url: INFO.url, serverCertificateHashes: [null] },
    { ...INFO, members: "127.0.0.1:4434" },
    { ...INFO, members: [4434] },
  ]) {
    assert.throws(() => parseInfo(bad), { name: "SessionError", kind: "connection" }, JSON.stringify(bad));
  }
});

test("a stream is abandoned with its code whichever WebTransportError constructor the browser has", () => {
  const before = globalThis.WebTransportError;
  // Chromium's: one dictionary; two arguments are a TypeError.
  class Dictionary extends Error {
    constructor(init, ...rest) {
      if (rest.length > 0 || typeof init !== "object") throw new TypeError("not a WebTransportErrorInit");
      super(init.message);
      this.name = "WebTransportError";
      this.streamErrorCode = init.streamErrorCode;
    }
  }
  // The specification's: (message, options).
  class Specification extends Error {
    constructor(message, options = {}) {
      super(message);
      this.name = "WebTransportError";
      this.streamErrorCode = options.streamErrorCode ?? null;
    }
  }
  try {
    for (const Ctor of [Dictionary, Specification, undefined]) {
      globalThis.WebTransportError = Ctor;
      const err = streamAbortReason(StreamCode.CANCELLED);
      assert.equal(streamCodeOf(err), StreamCode.CANCELLED, Ctor?.name ?? "none");
      if (Ctor !== undefined) assert.ok(err instanceof Ctor, Ctor.name);
    }
  } finally {
    globalThis.WebTransportError = before;
  }
});

test("an open WebTransport session sends a one-byte keep-alive datagram every 2 s, and stops when it closes", async (t) => {
  t.mock.timers.enable({ apis: ["setInterval"] });
  const wt = new FakeWebTransport();
  const sent = [];
  wt.datagrams = { writable: new WritableStream({ write: (chunk) => void sent.push([...chunk]) }) };
  const stop = keepAlive(wt, 2000);
  t.mock.timers.tick(1999);
  await new Promise((r) => setImmediate(r));
  assert.equal(sent.length, 0, "not before 2 s");
  t.mock.timers.tick(1);
  await new Promise((r) => setImmediate(r));
  t.mock.timers.tick(2000);
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(sent, [[0], [0]]);
  wt.close();
  await new Promise((r) => setImmediate(r));
  t.mock.timers.tick(10_000);
  await new Promise((r) => setImmediate(r));
  assert.equal(sent.length, 2, "none once closed");
  stop();
  // A transport without datagrams (or a keep-alive of 0) sends nothing and fails nothing.
  keepAlive(new FakeWebTransport(), 2000)();
});
