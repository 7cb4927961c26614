// Resumable sessions (PROTOCOL.md section 10.8): the replay buffer and the ack
// clock on their own, then the player's session over WebSocket stand-ins with the
// relay's and the host's side scripted in the test: the host's welcome-resumable,
// acknowledgements of what the application read, the replay window as flow
// control, a stream cut under the session, the resume hello with the resume id,
// the count exchange and the resend, and each way resuming ends.
import assert from "node:assert/strict";
import { test } from "node:test";

import { nobleAead, webCryptoAead } from "../build/aead.js";
import { concat, fromHex, toHex } from "../build/bytes.js";
import { StreamCode } from "../build/codes.js";
import { FrameType, MAX_PLAINTEXT_LEN, publicKey } from "../build/noise.js";
import { ACK_DELAY_MS, ACK_EVERY, AckClock, MAX_REPLAY_WINDOW, ReplayBuffer } from "../build/resume.js";
import { connectPlayer, relayWebSocketUrl } from "../build/session.js";
import { SocketPair, TestHost } from "./support/host.mjs";

const PLAYER = new Uint8Array(32).fill(0x11);
const HOST = new Uint8Array(32).fill(0x22);
const CONNECTED = fromHex("002e0111" + "0000000000000009" + "0".repeat(72));
const WELCOME = 0x00;
const WELCOME_RESUMABLE = 0x02;
const RESUMED = 0x03;
const UNKNOWN_SESSION = 0x04;

function pattern(len, seed) {
  return new Uint8Array(len).map((_, i) => (i * 31 + seed + (i >> 16)) & 0xff);
}

// ---------------------------------------------------------------------------
// The replay buffer and the ack clock
// ---------------------------------------------------------------------------

test("the replay buffer holds what is unacknowledged, and no more than its capacity", () => {
  const replay = new ReplayBuffer(100_000);
  assert.equal(replay.push(pattern(70_000, 7)), 70_000);
  assert.equal(replay.push(pattern(70_000, 8)), 30_000, "only the room left");
  assert.deepEqual([replay.held, replay.room, replay.sent], [100_000, 0, 100_000]);
  replay.acknowledge(69_999n);
  assert.deepEqual([replay.held, replay.room, replay.acknowledged], [30_001, 69_999, 69_999]);
  const rest = concat(...replay.unacknowledged(MAX_PLAINTEXT_LEN));
  assert.deepEqual(rest, concat(pattern(70_000, 7).subarray(69_999), pattern(70_000, 8).subarray(0, 30_000)));
  // Pieces for resending are frame-sized.
  const big = new ReplayBuffer(MAX_REPLAY_WINDOW);
  big.push(pattern(200_000, 1));
  assert.deepEqual([...big.unacknowledged(MAX_PLAINTEXT_LEN)].map((p) => p.length), [65518, 65518, 65518, 3446]);
  replay.acknowledge(100_000n);
  assert.deepEqual([replay.held, [...replay.unacknowledged(MAX_PLAINTEXT_LEN)].length], [0, 0]);
});

test("acknowledgements that go back, or past what was sent, are errors", () => {
  const replay = new ReplayBuffer();
  replay.push(new TextEncoder().encode("hello"));
  assert.throws(() => replay.acknowledge(6n), { name: "NoiseError", kind: "bad-ack", message: /never sent/ });
  replay.acknowledge(3n);
  assert.throws(() => replay.acknowledge(2n), { kind: "bad-ack", message: /behind an earlier one/ });
  replay.acknowledge(3n);
  assert.equal(new TextDecoder().decode(concat(...replay.unacknowledged(MAX_PLAINTEXT_LEN))), "lo");
  assert.throws(() => replay.acknowledge(1n << 64n), { kind: "bad-ack" });
});

test("the replay window is kept within the protocol's bounds", () => {
  assert.equal(new ReplayBuffer().capacity, 4 * 1024 * 1024);
  assert.equal(new ReplayBuffer(0).capacity, MAX_PLAINTEXT_LEN, "at least one frame");
  assert.equal(new ReplayBuffer(1 << 30).capacity, MAX_REPLAY_WINDOW);
});

test("acknowledgements come every 256 KiB read or 100 ms after a read, and never when idle", () => {
  const start = 1_000_000;
  const clock = new AckClock();
  assert.equal(clock.due(start + 60_000), undefined, "idle: nothing owed, ever");
  clock.deliver(1000, start);
  assert.equal(clock.due(start), undefined);
  assert.equal(clock.deadline, start + ACK_DELAY_MS);
  assert.equal(clock.due(start + ACK_DELAY_MS - 1), undefined);
  assert.equal(clock.due(start + ACK_DELAY_MS), 1000);
  clock.acknowledged(1000);
  assert.deepEqual([clock.due(start + 60_000), clock.deadline], [undefined, undefined]);
  clock.deliver(ACK_EVERY, start);
  assert.equal(clock.due(start), 1000 + ACK_EVERY, "a full 256 KiB at once");
  // At a resume the count said more than was read (all received): nothing is owed
  // until reading passes it.
  clock.acknowledged(clock.delivered + 500);
  clock.deliver(400, start);
  assert.deepEqual([clock.due(start + 60_000), clock.deadline], [undefined, undefined]);
  clock.deliver(200, start);
  assert.equal(clock.due(start + ACK_DELAY_MS), clock.delivered);
});

// ---------------------------------------------------------------------------
// The session, over scripted relays and hosts
// ---------------------------------------------------------------------------

/** A player whose every WebSocket (the first, then one per resume attempt) is a new SocketPair the test plays. */
function player(options = {}) {
  const pairs = [];
  let waiters = [];
  const connecting = connectPlayer({
    url: relayWebSocketUrl("127.0.0.1", 4433),
    hostId: publicKey(HOST),
    playerSecret: PLAYER,
    openWebSocket: () => {
      const pair = new SocketPair();
      pairs.push(pair);
      for (const wake of waiters.splice(0)) wake();
      return pair.player;
    },
    keepAliveMs: 0,
    aead: webCryptoAead(globalThis.crypto.subtle),
    resumeRetryMs: 20,
    ...options,
  });
  /** The far end of the player's WebSocket number `i`, once it opened it (5 s at most). */
  async function far(i) {
    const deadline = Date.now() + 5000;
    while (pairs.length <= i) {
      if (Date.now() > deadline) throw new Error(`the player never opened WebSocket ${i}`);
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, 50);
        waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return pairs[i].far;
  }
  return { connecting, far, pairs, aead: options.aead ?? webCryptoAead(globalThis.crypto.subtle) };
}

/** Plays the relay and a host on `far` up to the verdict `byte`; returns the host. */
async function answer(far, byte, aead = webCryptoAead(globalThis.crypto.subtle)) {
  assert.equal(toHex(await far.takeStream(36)), "00220110" + toHex(publicKey(HOST)));
  const hello = await far.takeMessage();
  assert.equal(hello.length, 128, "every hello has a 32-byte payload, new or resumed");
  const host = new TestHost(HOST, aead);
  const reply = await host.respond(hello);
  far.sendStream(concat(CONNECTED, reply, await host.verdictByte(byte)));
  return host;
}

/** A resumable session, set up: the player, its first far end and host, and the session. */
async function resumable(options) {
  const p = player(options);
  const far = await p.far(0);
  const host = await answer(far, WELCOME_RESUMABLE, p.aead);
  assert.deepEqual(host.helloPayload, new Uint8Array(32), "a new resumable session asks with 32 zero bytes");
  const session = await p.connecting;
  assert.equal(session.resumable, true);
  return { ...p, host, session, far0: far };
}

/** The host opens the player's next frame. */
async function next(far, host) {
  return host.open(await far.takeMessage());
}

/** The host reads the player's data frames until it has `n` bytes; any other frame is a failure. */
async function hostReads(far, host, n) {
  const got = [];
  let len = 0;
  while (len < n) {
    const { kind, body } = await next(far, host);
    assert.equal(kind, FrameType.DATA, `a data frame, ${len} of ${n} bytes in`);
    got.push(body.slice());
    len += body.length;
  }
  assert.equal(len, n, "no more than asked for");
  return concat(...got);
}

/** A PING answered: everything the test sent before it has reached the player's link. */
async function roundTrip(far) {
  const opaque = crypto.getRandomValues(new Uint8Array(8));
  far.sendFrame({ type: "ping", opaque });
  await far.until(() => far.frames.find((f) => f.type === "pong" && toHex(f.opaque) === toHex(opaque)), "the pong");
}

async function readN(reader, n) {
  const chunks = [];
  let len = 0;
  while (len < n) {
    const { value, done } = await reader.read();
    assert.ok(!done, `the stream ended after ${len} of ${n} bytes`);
    chunks.push(value);
    len += value.length;
  }
  return concat(...chunks);
}

test("a stream cut under a resumable session: counts are exchanged, exactly the missing bytes are sent again, and the application sees a pause", async () => {
  const { session, far, far0, host: host0 } = await resumable();
  const writer = session.writable.getWriter();
  const reader = session.readable.getReader();
  const up = pattern(200_000, 1);
  await writer.write(up);
  assert.deepEqual(await hostReads(far0, host0, up.length), up);
  // The host acknowledges part of it; the rest is lost with the stream.
  far0.sendStream(await host0.ack(90_000));
  const down = pattern(260_000, 2);
  for (let at = 0; at < 150_000; at += 50_000) far0.sendStream(await host0.seal(FrameType.DATA, down.subarray(at, at + 50_000)));
  // The application reads a third of it; all three frames are at the player's link.
  assert.deepEqual(await readN(reader, 50_000), down.subarray(0, 50_000));
  await roundTrip(far0);
  far0.cut();

  // The player dials again, at once, with the session's resume id as the payload.
  const far1 = await far(1);
  const host1 = await answer(far1, RESUMED);
  assert.deepEqual(host1.helloPayload, host0.resumeId, "the resume hello carries the current resume id");
  // The host's count first: it says it has 120 000 of the player's bytes.
  far1.sendStream(await host1.ack(120_000));
  // The player's first frame is its count: everything received, read or not.
  const count = await next(far1, host1);
  assert.equal(count.kind, FrameType.ACK, "the player's first frame after a resume is its count");
  assert.equal(count.count, 150_000);
  // Then exactly the bytes the host lacks, then what the application writes next.
  assert.deepEqual(await hostReads(far1, host1, 80_000), up.subarray(120_000));
  const more = pattern(10_000, 3);
  await writer.write(more);
  assert.deepEqual(await hostReads(far1, host1, 10_000), more);
  // The host sends on from the player's count, and ends.
  for (let at = 150_000; at < down.length; at += 55_000) far1.sendStream(await host1.seal(FrameType.DATA, down.subarray(at, at + 55_000)));
  far1.sendStream(await host1.seal(FrameType.END, new Uint8Array(0)));
  // The host's end is acknowledged at once, read or not: everything received.
  const acked = await next(far1, host1);
  assert.deepEqual([acked.kind, acked.count], [FrameType.ACK, 260_000]);
  // The application reads on, byte-exact, to the host's end.
  assert.deepEqual(await readN(reader, 210_000), down.subarray(50_000));
  assert.equal((await reader.read()).done, true);
  assert.equal(session.resumes, 1);
  await writer.close();
  assert.equal((await next(far1, host1)).kind, FrameType.END);
  // Both ends ended: the player finishes its stream.
  far1.sendStream(await host1.ack(210_000));
  await far1.frame("fin");
});

test("a player that had ended sends its end again after the resend", async () => {
  const { session, far, far0, host: host0 } = await resumable();
  const writer = session.writable.getWriter();
  const up = pattern(70_000, 4);
  await writer.write(up);
  await writer.close();
  assert.deepEqual(await hostReads(far0, host0, up.length), up);
  assert.equal((await next(far0, host0)).kind, FrameType.END);
  far0.cut();
  const far1 = await far(1);
  const host1 = await answer(far1, RESUMED);
  far1.sendStream(await host1.ack(65_518));
  assert.equal((await next(far1, host1)).count, 0, "nothing received");
  assert.deepEqual(await hostReads(far1, host1, 70_000 - 65_518), up.subarray(65_518));
  assert.equal((await next(far1, host1)).kind, FrameType.END, "the end again, after the resend");
});

test("acknowledgements count the bytes the application read, not those received", async () => {
  const { session, far0, host } = await resumable();
  const down = pattern(300_000, 5);
  for (let at = 0; at < down.length; at += 50_000) far0.sendStream(await host.seal(FrameType.DATA, down.subarray(at, at + 50_000)));
  await roundTrip(far0);
  const reader = session.readable.getReader();
  assert.deepEqual(await readN(reader, 100_000), down.subarray(0, 100_000));
  // Under 256 KiB read, and the application reads no more: the acknowledgement
  // comes 100 ms later, and says what was read, not the 300 000 received.
  const first = await next(far0, host);
  assert.deepEqual([first.kind, first.count], [FrameType.ACK, 100_000]);
  await readN(reader, 200_000);
  for (let last = 100_000; last < 300_000; ) {
    const ack = await next(far0, host);
    assert.equal(ack.kind, FrameType.ACK);
    assert.ok(ack.count > last && ack.count <= 300_000, `${ack.count} after ${last}`);
    last = ack.count;
  }
});

test("a writer stops at its replay window until the host acknowledges", async () => {
  // noble's AES-GCM settles within the microtasks of the call, so everything the
  // player can send at once is on its way before the test's next macrotask.
  const window = 100_000;
  const { session, far0, host } = await resumable({ replayWindow: window, aead: nobleAead });
  const up = pattern(3 * window + 7, 6);
  const writer = session.writable.getWriter();
  let written = false;
  const writing = writer.write(up).then(() => (written = true));
  const got = [];
  for (let acked = 0; acked < up.length; acked = Math.min(acked + window, up.length)) {
    const n = Math.min(window, up.length - acked);
    got.push(await hostReads(far0, host, n));
    await new Promise(setImmediate);
    assert.equal(far0.streamSoFar().length, 0, `nothing past the window before the ack of ${acked + n}`);
    if (acked + n < up.length) assert.equal(written, false, "the write waits for room");
    far0.sendStream(await host.ack(acked + n));
  }
  await writing;
  assert.deepEqual(concat(...got), up);
});

for (const [why, cut] of [
  ["the connection is lost", (far) => far.cut()],
  ["the relay resets with PEER_GONE", (far) => far.sendFrame({ type: "reset", code: StreamCode.PEER_GONE })],
  ["the stream is reset with code 0", (far) => far.sendFrame({ type: "reset", code: 0 })],
  ["the stream ends before the host's end", (far) => far.sendFrame({ type: "fin" })],
]) {
  test(`a resumable session resumes when ${why}`, async () => {
    const { session, far, far0, host: host0 } = await resumable();
    cut(far0);
    const far1 = await far(1);
    const host1 = await answer(far1, RESUMED);
    assert.deepEqual(host1.helloPayload, host0.resumeId);
    far1.sendStream(await host1.ack(0));
    far1.sendStream(await host1.seal(FrameType.DATA, Uint8Array.of(1, 2, 3)));
    const reader = session.readable.getReader();
    assert.deepEqual([...(await reader.read()).value], [1, 2, 3]);
    assert.equal(session.resumes, 1);
    session.abort();
  });
}

for (const [code, kind] of [
  [StreamCode.STALLED, "stalled"],
  [StreamCode.BYTE_LIMIT, "byte-limit"],
  [StreamCode.CANCELLED, "cancelled"],
  [StreamCode.PROTOCOL_VIOLATION, "rejected"],
  [StreamCode.SERVICE_UNAVAILABLE, "service-unavailable"],
  [StreamCode.CLOSED, "host-closed"],
]) {
  test(`a stream reset with ${code.toString(16)} ends a resumable session as ${kind}, without a resume`, async () => {
    const { session, pairs, far0 } = await resumable();
    far0.sendFrame({ type: "reset", code });
    // Had it gone down to resume, the read would wait instead.
    await assert.rejects(session.readable.getReader().read(), { name: "SessionError", kind, code });
    assert.equal(pairs.length, 1, "no resume attempt");
  });
}

test("a stop with CLOSED that came with the stream's end is heeded: no resume", async () => {
  const { session, pairs, far0 } = await resumable();
  far0.sendFrame({ type: "stop", code: StreamCode.CLOSED });
  far0.sendFrame({ type: "fin" });
  await assert.rejects(session.readable.getReader().read(), { kind: "host-closed" });
  assert.equal(pairs.length, 1);
});

test("an unknown session ends the attempts at once: session lost", async () => {
  const { session, far, far0 } = await resumable();
  const reader = session.readable.getReader();
  far0.cut();
  const far1 = await far(1);
  const host1 = await answer(far1, UNKNOWN_SESSION);
  // The player leaves that stream as a refused player does (section 9.6): its end,
  // its FIN, and it reads to the host's.
  assert.equal((await next(far1, host1)).kind, FrameType.END);
  await far1.frame("fin");
  far1.sendStream(await host1.seal(FrameType.END, new Uint8Array(0)));
  far1.sendFrame({ type: "fin" });
  await assert.rejects(reader.read(), {
    name: "SessionError",
    kind: "session-lost",
    message: /^session lost: the host no longer holds it \(the stream had failed: /,
  });
  assert.equal(session.resumes, 0);
  await assert.rejects(session.writable.getWriter().write(Uint8Array.of(1)), { kind: "session-lost" });
});

test("a relay that cannot be reached again within the window: session lost, with the window said", async () => {
  let attempts = 0;
  const p = player({
    resumeWindowMs: 300,
    openWebSocket: () => {
      attempts++;
      if (attempts > 1) throw new Error("connection refused");
      const pair = new SocketPair();
      p.pairs.push(pair);
      return pair.player;
    },
  });
  const far0 = await p.far(0);
  await answer(far0, WELCOME_RESUMABLE);
  const session = await p.connecting;
  const reader = session.readable.getReader();
  const started = Date.now();
  far0.cut();
  await assert.rejects(reader.read(), {
    kind: "session-lost",
    message: /^session lost: the relay and the host could not be reached again within 0\.3s \(the stream had failed: the connection to the relay closed\)$/,
  });
  assert.ok(Date.now() - started >= 300, "not before the window ended");
  assert.ok(attempts > 3, `tried again and again (${attempts - 1} attempts)`);
});

test("relay refusals during a resume are tried again", async () => {
  const { session, far } = await resumable();
  const reader = session.readable.getReader();
  (await far(0)).cut();
  // The host has not registered again yet.
  const far1 = await far(1);
  await far1.takeStream(36 + 130);
  far1.sendStream(fromHex("0012017f0003000c686f7374206f66666c696e65"));
  far1.sendFrame({ type: "fin" });
  const far2 = await far(2);
  const host2 = await answer(far2, RESUMED);
  far2.sendStream(await host2.ack(0));
  far2.sendStream(await host2.seal(FrameType.DATA, Uint8Array.of(7)));
  assert.deepEqual([...(await reader.read()).value], [7]);
});

test("after a resume the host's first frame must be its count", async () => {
  const { session, far } = await resumable();
  const reader = session.readable.getReader();
  (await far(0)).cut();
  const far1 = await far(1);
  const host1 = await answer(far1, RESUMED);
  far1.sendStream(await host1.seal(FrameType.DATA, Uint8Array.of(1)));
  await assert.rejects(reader.read(), { kind: "protocol", message: /first frame must be the host's count/ });
  assert.equal((await far1.frame("reset")).code, StreamCode.PROTOCOL_VIOLATION);
});

test("an acknowledgement of bytes never sent breaks the session", async () => {
  const { session, far0, host } = await resumable();
  far0.sendStream(await host.ack(1));
  await assert.rejects(session.readable.getReader().read(), { kind: "protocol", message: /never sent/ });
  assert.equal((await far0.frame("reset")).code, StreamCode.PROTOCOL_VIOLATION);
});

test("a dropped resumable session is abandoned with CLOSED both ways, so the host does not wait to resume it", async () => {
  const { session, far0 } = await resumable();
  session.abort();
  assert.equal((await far0.frame("reset")).code, StreamCode.CLOSED);
  assert.equal((await far0.frame("stop")).code, StreamCode.CLOSED);
});

test("an older host's plain welcome makes a session that is not resumed", async () => {
  const p = player();
  const far0 = await p.far(0);
  const host = await answer(far0, WELCOME);
  const session = await p.connecting;
  assert.equal(session.resumable, false);
  far0.sendStream(await host.seal(FrameType.DATA, Uint8Array.of(1)));
  far0.cut();
  const reader = session.readable.getReader();
  assert.deepEqual([...(await reader.read()).value], [1]);
  await assert.rejects(reader.read(), { kind: "connection" });
  assert.equal(p.pairs.length, 1);
});

test("a resume window of 0 asks for a session that cannot be resumed", async () => {
  const p = player({ resumeWindowMs: 0 });
  const far0 = await p.far(0);
  await far0.takeStream(36);
  const hello = await far0.takeMessage();
  assert.equal(hello.length, 96, "an empty hello payload");
  const host = new TestHost(HOST, p.aead);
  far0.sendStream(concat(CONNECTED, await host.respond(hello), await host.verdict()));
  const session = await p.connecting;
  assert.equal(session.resumable, false);
  session.abort();
});
