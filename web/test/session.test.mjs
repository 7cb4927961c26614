// The player session over a WebSocket stand-in, with the relay's and host's side
// scripted in the test: set-up, plaintext both ways, PING/PONG, the clean end, and
// each way a session can fail, each mapped to its own error.
import assert from "node:assert/strict";
import { test } from "node:test";

import { webCryptoAead } from "../build/aead.js";
import { ByteQueue, concat, fromHex, toHex } from "../build/bytes.js";
import { StreamCode } from "../build/codes.js";
import { FrameType, publicKey } from "../build/noise.js";
import { encodeData } from "../build/frames.js";
import { connectPlayer, relayWebSocketUrl } from "../build/session.js";
import { SocketPair, TestHost } from "./support/host.mjs";

const PLAYER = new Uint8Array(32).fill(0x11);
const HOST = new Uint8Array(32).fill(0x22);
const aead = webCryptoAead(globalThis.crypto.subtle);
const CONNECTED = fromHex("002e0111" + "0000000000000009" + "0".repeat(72));

/** Starts a player on a socket pair; returns the pair, the player's promise and the host. */
function start(options = {}) {
  const pair = new SocketPair();
  const host = new TestHost(HOST, aead);
  const connecting = connectPlayer({
    url: relayWebSocketUrl("127.0.0.1", 4433),
    hostId: publicKey(HOST),
    playerSecret: PLAYER,
    openWebSocket: (url) => {
      assert.equal(url, "wss://127.0.0.1:4433/blindrelay/1");
      return pair.player;
    },
    keepAliveMs: 0,
    aead,
    ...options,
  });
  return { far: pair.far, host, connecting, pair };
}

/** Plays the relay and host up to the verdict; returns the established session. */
async function established(options) {
  const { far, host, connecting, pair } = start(options);
  const connect = await far.takeStream(36);
  assert.equal(toHex(connect), "00220110" + toHex(publicKey(HOST)));
  const hello = await far.takeMessage();
  assert.equal(hello.length, 128, "a resumable hello: 32 bytes of payload");
  far.sendStream(concat(CONNECTED, await host.respond(hello), await host.verdict()));
  const session = await connecting;
  return { far, host, session, pair };
}

async function readAll(readable) {
  const chunks = [];
  for await (const chunk of readable) chunks.push(chunk);
  return concat(...chunks);
}

/** Reads the player's sealed frames off the far end until its end frame; returns their bytes. */
async function hostReadsToEnd(far, host) {
  const got = [];
  for (;;) {
    const { kind, body } = await host.open(await far.takeMessage());
    if (kind === FrameType.DATA) got.push(body);
    if (kind === FrameType.END) return concat(...got);
  }
}

test("a session carries bytes both ways and ends cleanly", async () => {
  const { far, host, session } = await established();
  assert.equal(session.sessionId, 9n);
  assert.equal(session.limits.maxBytes, 0n);
  const up = new Uint8Array(300_000).map((_, i) => (i * 31) & 0xff);
  const writer = session.writable.getWriter();
  for (let at = 0; at < up.length; at += 70_001) await writer.write(up.subarray(at, at + 70_001));
  await writer.close();
  assert.deepEqual(await hostReadsToEnd(far, host), up);
  await far.frame("fin");

  const down = new Uint8Array(200_000).map((_, i) => (i * 7) & 0xff);
  for (let at = 0; at < down.length; at += 65_000) {
    far.sendStream(await host.seal(FrameType.DATA, down.subarray(at, at + 65_000)));
  }
  // A PING in the middle is answered with the same bytes.
  far.sendFrame({ type: "ping", opaque: fromHex("0102030405060708") });
  far.sendStream(await host.seal(FrameType.END, new Uint8Array(0)));
  far.sendFrame({ type: "fin" });
  assert.deepEqual(await readAll(session.readable), down);
  const pong = await far.frame("pong");
  assert.equal(toHex(pong.opaque), "0102030405060708");
  // Both directions done: the player closes its WebSocket.
  await far.until(() => (far.closedByPlayer ? true : undefined), "the WebSocket closed");
});

test("a backlog the player has not read yet costs copies in proportion to its bytes, not their square", async () => {
  // A page that decrypts slower than the socket delivers holds a backlog; each frame
  // that arrives must not copy all of it again. Every frame is on its way before the
  // player has opened the first: 4 MiB in 65 frames, which a concatenation per frame
  // copies some 130 MiB for.
  const { far, host, session } = await established();
  const down = new Uint8Array(4 * 1024 * 1024).map((_, i) => (i * 13 + (i >> 16)) & 0xff);
  const messages = [];
  for (let at = 0; at < down.length; at += 65_000) {
    messages.push(encodeData(await host.seal(FrameType.DATA, down.subarray(at, at + 65_000))));
  }
  messages.push(encodeData(await host.seal(FrameType.END, new Uint8Array(0))));
  const copies = countCopies();
  try {
    for (const message of messages) far.sendRaw(message);
    far.sendFrame({ type: "fin" });
    assert.deepEqual(await readAll(session.readable), down);
  } finally {
    copies.stop();
  }
  assert.ok(copies.bytes < 8 * down.length, `${copies.bytes} bytes copied to receive ${down.length}`);
});

test("a byte queue gives back its bytes in order, whatever the pushes and reads", () => {
  const queue = new ByteQueue();
  const sent = new Uint8Array(1_000_000).map((_, i) => (i * 7 + (i >> 8)) & 0xff);
  const got = [];
  let pushed = 0;
  for (let round = 0; pushed < sent.length; round++) {
    const n = Math.min(sent.length - pushed, 1 + ((round * 7919) % 70_000));
    queue.push(sent.subarray(pushed, pushed + n));
    pushed += n;
    // Read less than was pushed on most rounds, so the queue grows and compacts.
    const take = round % 3 === 2 ? queue.length : Math.min(queue.length, (round * 104729) % 50_000);
    got.push(queue.view().slice(0, take));
    queue.consume(take);
  }
  got.push(queue.view().slice());
  queue.consume(queue.length);
  assert.equal(queue.length, 0);
  assert.deepEqual(concat(...got), sent);
  assert.throws(() => queue.consume(1), RangeError);
});

test("the keep-alive sends a PING when the player has been quiet", async () => {
  const { far } = await established({ keepAliveMs: 50 });
  const ping = await far.frame("ping");
  assert.equal(ping.opaque.length, 8);
});

test("the set-up says how far it has come: the relay, then the host, then its verdict", async () => {
  const steps = [];
  const { far, host, connecting } = start({ onStep: (step) => steps.push(step) });
  await far.takeStream(36);
  const hello = await far.takeMessage();
  assert.deepEqual(steps.map((s) => s.step), ["relay", "host"], "Connect sent: waiting for the host");
  far.sendStream(CONNECTED);
  // Connected: the host has the hello; the player waits for its verdict.
  const deadline = Date.now() + 5000;
  while (steps.length < 3) {
    assert.ok(Date.now() < deadline, `no verdict step after Connected: ${JSON.stringify(steps)}`);
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  far.sendStream(concat(await host.respond(hello), await host.verdict()));
  await connecting;
  assert.deepEqual(steps, [
    { step: "relay", transport: "websocket" },
    { step: "host", transport: "websocket" },
    { step: "verdict", transport: "websocket" },
  ]);
});

test("a relay Error is reported with its code and reason", async () => {
  const { far, connecting } = start();
  await far.takeStream(36 + 130);
  far.sendFrame({ type: "stop", code: StreamCode.REFUSED });
  far.sendStream(fromHex("0012017f0003000c686f7374206f66666c696e65"));
  far.sendFrame({ type: "fin" });
  await assert.rejects(connecting, {
    name: "SessionError",
    kind: "relay-refused",
    code: 3,
    message: "the relay refused the session: host offline (host offline)",
  });
});

test("a pool member's Redirect is reported as where the host is", async () => {
  const { far, connecting } = start();
  await far.takeStream(36 + 130);
  // Redirect { r0.example:443, [::1]:4433 } (PROTOCOL.md 7.4), then the relay's FIN.
  far.sendStream(fromHex("001d010702" + "0e72302e6578616d706c653a343433" + "0a5b3a3a315d3a34343333"));
  far.sendFrame({ type: "fin" });
  await assert.rejects(connecting, {
    name: "SessionError",
    kind: "redirected",
    members: ["r0.example:443", "[::1]:4433"],
    message: "this relay is part of a pool; the host is at r0.example:443",
  });
});

test("a player the host does not serve leaves as a served player leaving at once", async () => {
  const { far, host, connecting } = start();
  await far.takeStream(36);
  far.sendStream(concat(CONNECTED, await host.respond(await far.takeMessage()), await host.verdict(true)));
  // The player's end, then its FIN, and no reset or stop.
  const end = await far.takeMessage();
  assert.equal(end.length, 17);
  assert.equal((await host.open(end)).kind, FrameType.END);
  await far.frame("fin");
  far.sendStream(await host.seal(FrameType.END, new Uint8Array(0)));
  far.sendFrame({ type: "fin" });
  await assert.rejects(connecting, { kind: "not-authorized" });
  assert.equal(far.frames.filter((f) => f.type === "reset" || f.type === "stop").length, 0);
});

for (const [code, kind, words] of [
  [StreamCode.BYTE_LIMIT, "byte-limit", /^byte limit: /],
  [StreamCode.PEER_GONE, "host-left", /^host left: /],
  [StreamCode.STALLED, "stalled", /^stalled: /],
  [StreamCode.SESSION_IDLE, "idle", /^idle: /],
  [StreamCode.DURATION_LIMIT, "duration-limit", /^duration limit: /],
  [StreamCode.PROTOCOL_VIOLATION, "rejected", /^rejected: /],
  [0x999, "reset", /unknown stream code 0x999/],
]) {
  test(`RESET ${code.toString(16)} mid-session fails the read as ${kind}`, async () => {
    const { far, host, session } = await established();
    far.sendStream(await host.seal(FrameType.DATA, Uint8Array.of(1, 2, 3)));
    far.sendFrame({ type: "reset", code });
    const reader = session.readable.getReader();
    assert.deepEqual([...(await reader.read()).value], [1, 2, 3]);
    await assert.rejects(reader.read(), { name: "SessionError", kind, code, message: words });
  });
}

test("STOP fails the writes with its code, and reading goes on", async () => {
  const { far, host, session } = await established();
  far.sendFrame({ type: "stop", code: StreamCode.STALLED });
  far.sendStream(await host.seal(FrameType.DATA, Uint8Array.of(9)));
  const reader = session.readable.getReader();
  assert.deepEqual([...(await reader.read()).value], [9]);
  const writer = session.writable.getWriter();
  await assert.rejects(writer.write(Uint8Array.of(1)), { kind: "stalled", code: StreamCode.STALLED });
});

test("CLOSE ends the session with the relay's code", async () => {
  const { far, session } = await established();
  far.sendFrame({ type: "close", code: 2, reason: "relay shutting down" });
  await assert.rejects(session.readable.getReader().read(), {
    kind: "closed",
    code: 2,
    message: "the relay closed the connection: the relay is shutting down (relay shutting down)",
  });
});

test("a FIN before the host's end is truncation, and the player abandons with PROTOCOL_VIOLATION", async () => {
  const { far, host, session } = await established();
  far.sendStream(await host.seal(FrameType.DATA, Uint8Array.of(1)));
  far.sendFrame({ type: "fin" });
  await assert.rejects(readAll(session.readable), { kind: "truncated" });
  assert.equal((await far.frame("reset")).code, StreamCode.PROTOCOL_VIOLATION);
  assert.equal((await far.frame("stop")).code, StreamCode.PROTOCOL_VIOLATION);
});

test("an altered frame is a protocol error, answered with PROTOCOL_VIOLATION", async () => {
  const { far, host, session } = await established();
  const framed = await host.seal(FrameType.DATA, Uint8Array.of(1, 2, 3));
  framed[5] ^= 0x80;
  far.sendStream(framed);
  await assert.rejects(readAll(session.readable), { kind: "protocol" });
  assert.equal((await far.frame("reset")).code, StreamCode.PROTOCOL_VIOLATION);
});

test("bad stream frames and text messages end the connection", async () => {
  for (const spoil of ["frame", "text"]) {
    const { far, session } = await established();
    if (spoil === "frame") far.sendRaw(fromHex("07"));
    else far.sendText("hello");
    await assert.rejects(readAll(session.readable), { kind: "protocol" }, spoil);
    await far.until(() => (far.closedByPlayer ? true : undefined), "the WebSocket closed");
  }
});

test("a relay that never answers runs into the set-up deadline", async () => {
  const { far, connecting } = start({ timeoutMs: 300 });
  await far.takeStream(36 + 130);
  await assert.rejects(connecting, { kind: "timeout" });
  assert.equal((await far.frame("reset")).code, StreamCode.CANCELLED);
});

test("a hello answered by another host fails the handshake", async () => {
  const { far, connecting } = start();
  await far.takeStream(36);
  const hello = await far.takeMessage();
  // The relay forwards to a host whose key the hello was not made for: it resets.
  const impostor = new TestHost(new Uint8Array(32).fill(0x33), aead);
  await assert.rejects(impostor.respond(hello));
  far.sendStream(CONNECTED);
  far.sendFrame({ type: "reset", code: StreamCode.REFUSED });
  await assert.rejects(connecting, { kind: "refused", code: StreamCode.REFUSED });
});

/**
 * Counts the bytes copied by `Uint8Array`'s `set` and `copyWithin` (what the player's
 * buffers copy with) until `stop()`.
 */
function countCopies() {
  const { set, copyWithin } = Uint8Array.prototype;
  const counter = {
    bytes: 0,
    stop() {
      Uint8Array.prototype.set = set;
      Uint8Array.prototype.copyWithin = copyWithin;
    },
  };
  Uint8Array.prototype.set = function (source, offset) {
    counter.bytes += source.length ?? 0;
    return set.call(this, source, offset);
  };
  Uint8Array.prototype.copyWithin = function (target, start, end = this.length) {
    counter.bytes += Math.max(0, end - start);
    return copyWithin.call(this, target, start, end);
  };
  return counter;
}
