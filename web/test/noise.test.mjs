// The player's Noise session against a host built in the test from the same
// primitives: handshake, many frames both ways, rekeying, the end frame, and every
// refusal of section 10.3.
import assert from "node:assert/strict";
import { test } from "node:test";

import { nobleAead, webCryptoAead } from "../build/aead.js";
import { concat } from "../build/bytes.js";
import { FrameType, MAX_NONCE, MAX_PLAINTEXT_LEN, MessageReader, PlayerHandshake, publicKey } from "../build/noise.js";
import { TestHost } from "./support/host.mjs";

const PLAYER = new Uint8Array(32).fill(0x11);
const HOST = new Uint8Array(32).fill(0x22);
const webcrypto = webCryptoAead(globalThis.crypto.subtle);

/** Splits framed bytes into messages, checking nothing is left over. */
function messages(bytes) {
  const reader = new MessageReader();
  reader.push(bytes);
  const out = [];
  for (let m = reader.next(); m !== undefined; m = reader.next()) out.push(m);
  assert.equal(reader.buffered(), 0);
  return out;
}

async function session(aead = webcrypto, { hostRekeyInterval } = {}) {
  const handshake = await PlayerHandshake.start(PLAYER, publicKey(HOST), { aead });
  assert.equal(handshake.hello.length, 98);
  const host = new TestHost(HOST, aead, hostRekeyInterval ? { rekeyInterval: hostRekeyInterval } : {});
  const reply = await host.respond(messages(handshake.hello)[0]);
  assert.equal(reply.length, 50);
  assert.deepEqual(host.playerKey, publicKey(PLAYER), "the host learns the player's key");
  const expect = await handshake.readReply(messages(reply)[0]);
  assert.deepEqual(expect.handshakeHash, host.handshakeHash);
  const verdict = await host.verdict();
  assert.equal(verdict.length, 20);
  const opened = await expect.openVerdict(messages(verdict)[0]);
  assert.equal(opened.verdict, "welcome");
  return { player: opened.transport, host, expect, handshake };
}

for (const aead of [webcrypto, nobleAead]) {
  test(`many frames flow both ways and the end is authenticated (${aead.name})`, async () => {
    const { player, host } = await session(aead, { hostRekeyInterval: 5 });
    player.setRekeyInterval(3);
    const sent = [];
    let wire = new Uint8Array(0);
    for (let i = 0; i < 40; i++) {
      const chunk = new Uint8Array(1 + ((i * 7919) % 3000)).fill(i);
      sent.push(chunk);
      wire = concat(wire, await player.seal(chunk));
    }
    wire = concat(wire, await player.sealEnd());
    assert.ok(player.hasSentEnd);
    await assert.rejects(player.seal(Uint8Array.of(1)), { kind: "write-after-end" });
    const got = [];
    let rekeys = 0;
    for (const message of messages(wire)) {
      const { kind, body } = await host.open(message);
      if (kind === FrameType.DATA) got.push(body);
      if (kind === FrameType.REKEY) rekeys += 1;
      if (kind === FrameType.END) assert.equal(body.length, 0);
    }
    assert.deepEqual(concat(...got), concat(...sent));
    // 41 frames at 3 per key, the third of each a rekey: nonces 2, 5, … 59.
    assert.equal(rekeys, 20);
    assert.equal(player.noncesForTesting().send, 61n);

    // The host's direction: its verdict was message 0, so at interval 5 its rekeys sit at nonces 4, 9, …
    const back = [];
    let hostWire = new Uint8Array(0);
    for (let i = 0; i < 30; i++) {
      back.push(Uint8Array.of(i, i, i));
      hostWire = concat(hostWire, await host.seal(FrameType.DATA, back[i]));
    }
    hostWire = concat(hostWire, await host.seal(FrameType.END, new Uint8Array(0)));
    const received = [];
    const kinds = [];
    for (const message of messages(hostWire)) {
      const opened = await player.open(message);
      kinds.push(opened.type);
      if (opened.type === "data") received.push(opened.data);
    }
    assert.deepEqual(concat(...received), concat(...back));
    assert.equal(kinds.filter((k) => k === "rekeyed").length, 7);
    assert.equal(kinds.at(-1), "end");
    assert.ok(player.hasReceivedEnd);
    player.handleEof();
  });
}

test("the default interval rekeys at nonce 65535, and the receiver follows", async () => {
  const { player, host } = await session(nobleAead);
  const one = Uint8Array.of(0x5a);
  const first = messages(await player.seal(one));
  assert.equal((await host.open(first[0])).kind, FrameType.DATA);
  for (let i = 1; i < 65535; i++) {
    assert.equal((await player.seal(one)).length, 2 + 18, `message ${i}: no rekey before nonce 65535`);
  }
  // The host has no need to open the frames in between: the key is the same for them all.
  host.receive.setNonceForTesting(65535n);
  assert.equal(player.noncesForTesting().send, 65535n);
  const due = messages(await player.seal(one));
  assert.equal(due.length, 2, "a rekey frame, then the data frame");
  assert.equal(due[0].length, 17);
  assert.equal((await host.open(due[0])).kind, FrameType.REKEY);
  const after = await host.open(due[1]);
  assert.deepEqual([after.kind, [...after.body]], [FrameType.DATA, [0x5a]]);
  assert.equal(player.noncesForTesting().send, 65537n, "nonces are not reset by a rekey");
});

test("a data frame holds at most 65518 bytes and sealAll splits longer input", async () => {
  const { player, host } = await session();
  await assert.rejects(player.seal(new Uint8Array(MAX_PLAINTEXT_LEN + 1)), { kind: "payload-too-large" });
  assert.equal((await player.seal(new Uint8Array(0))).length, 0, "no empty data frame");
  const big = new Uint8Array(3 * MAX_PLAINTEXT_LEN + 10).map((_, i) => i % 251);
  const framed = messages(await player.sealAll(big));
  assert.deepEqual(
    framed.map((m) => m.length),
    [65535, 65535, 65535, 27],
  );
  const bodies = [];
  for (const m of framed) bodies.push((await host.open(m)).body);
  assert.deepEqual(concat(...bodies), big);
});

test("a stream cut short is truncation, not a clean end", async () => {
  const { player, host } = await session();
  await player.open(messages(await host.seal(FrameType.DATA, Uint8Array.of(1)))[0]);
  assert.throws(() => player.handleEof(), { kind: "truncated" });
});

test("altered, reordered and replayed frames fail, and the session stays failed", async () => {
  for (const spoil of ["alter", "reorder", "replay", "short"]) {
    const { player, host } = await session();
    const a = messages(await host.seal(FrameType.DATA, Uint8Array.of(1)))[0];
    const b = messages(await host.seal(FrameType.DATA, Uint8Array.of(2)))[0];
    let bad;
    if (spoil === "alter") bad = Uint8Array.from(a, (x, i) => (i === 3 ? x ^ 1 : x));
    if (spoil === "reorder") bad = b;
    if (spoil === "replay") {
      await player.open(a);
      bad = a;
    }
    if (spoil === "short") bad = a.subarray(0, 15);
    await assert.rejects(player.open(bad), { name: "NoiseError", kind: "decrypt" }, spoil);
    await assert.rejects(player.open(b), { kind: "decrypt" }, `${spoil}: still failed`);
    await assert.rejects(player.seal(Uint8Array.of(1)), { kind: "decrypt" }, `${spoil}: no sealing after`);
  }
});

test("frames that break section 10.3 are refused", async () => {
  const cases = [
    [FrameType.DATA, new Uint8Array(0), "malformed-frame"],
    [FrameType.END, Uint8Array.of(0), "malformed-frame"],
    [FrameType.REKEY, Uint8Array.of(0), "malformed-frame"],
    [FrameType.VERDICT, Uint8Array.of(0), "out-of-order"],
    // An ack belongs to a resumable session only (section 10.3); this one is not.
    [FrameType.ACK, new Uint8Array(8), "out-of-order"],
    [0x05, Uint8Array.of(1), "unknown-frame-type"],
  ];
  for (const [kind, body, expected] of cases) {
    const { player, host } = await session();
    await assert.rejects(player.open(messages(await host.seal(kind, body))[0]), { kind: expected }, `type ${kind}`);
  }
  // An empty plaintext (only a tag).
  const { player, host } = await session();
  const empty = await host.send.encryptWithAd(new Uint8Array(0), new Uint8Array(0));
  await assert.rejects(player.open(empty), { kind: "malformed-frame" });
});

test("nothing is opened after the end", async () => {
  const { player, host } = await session();
  await player.open(messages(await host.seal(FrameType.END, new Uint8Array(0)))[0]);
  const late = messages(await host.seal(FrameType.DATA, Uint8Array.of(1)))[0];
  await assert.rejects(player.open(late), { kind: "data-after-end" });
});

test("the host's first frame must be its verdict, of one byte that answers the hello", async () => {
  for (const [kind, body, expected] of [
    [FrameType.DATA, Uint8Array.of(1), "out-of-order"],
    // Welcome-resumable, resumed and unknown session answer other hellos than this plain one.
    [FrameType.VERDICT, Uint8Array.of(2), "out-of-order"],
    [FrameType.VERDICT, Uint8Array.of(3), "out-of-order"],
    [FrameType.VERDICT, Uint8Array.of(4), "out-of-order"],
    [FrameType.VERDICT, Uint8Array.of(5), "malformed-frame"],
    [FrameType.VERDICT, Uint8Array.of(0, 0), "malformed-frame"],
  ]) {
    const handshake = await PlayerHandshake.start(PLAYER, publicKey(HOST));
    const host = new TestHost(HOST, webcrypto);
    const expect = await handshake.readReply(messages(await host.respond(messages(handshake.hello)[0]))[0]);
    await assert.rejects(expect.openVerdict(messages(await host.raw(kind, body))[0]), { kind: expected });
  }
});

test("a refused player can only seal its end, and the host reads it", async () => {
  const handshake = await PlayerHandshake.start(PLAYER, publicKey(HOST));
  const host = new TestHost(HOST, webcrypto);
  const expect = await handshake.readReply(messages(await host.respond(messages(handshake.hello)[0]))[0]);
  const refusal = await host.verdict(true);
  assert.equal(refusal.length, 20, "the same size as a welcome");
  const opened = await expect.openVerdict(messages(refusal)[0]);
  assert.equal(opened.verdict, "not-authorized");
  assert.equal(opened.transport, undefined);
  const end = await opened.refused.sealEnd();
  assert.equal(end.length, 19);
  assert.equal((await host.open(messages(end)[0])).kind, FrameType.END);
  await assert.rejects(opened.refused.sealEnd(), { kind: "misuse" });
  await assert.rejects(expect.openVerdict(messages(refusal)[0]), { kind: "misuse" });
});

test("the wrong host cannot answer, and low-order host ids are refused", async () => {
  const handshake = await PlayerHandshake.start(PLAYER, publicKey(HOST));
  const impostor = new TestHost(new Uint8Array(32).fill(0x33), webcrypto);
  await assert.rejects(impostor.respond(messages(handshake.hello)[0]), "the impostor cannot read the hello");
  const host = new TestHost(HOST, webcrypto);
  const reply = messages(await host.respond(messages(handshake.hello)[0]))[0];
  reply[40] ^= 1;
  await assert.rejects(handshake.readReply(reply), { kind: "handshake" });
  await assert.rejects(handshake.readReply(reply), { kind: "misuse" }, "a handshake reads one reply");
  await assert.rejects(handshake.readReply(new Uint8Array(47)), { kind: "misuse" });
  const short = await PlayerHandshake.start(PLAYER, publicKey(HOST));
  await assert.rejects(short.readReply(new Uint8Array(47)), { kind: "handshake" });

  // The identity point and a point of order 8: X25519 with them is all-zero.
  for (const low of [new Uint8Array(32), Uint8Array.of(1, ...new Uint8Array(31))]) {
    await assert.rejects(PlayerHandshake.start(PLAYER, low), { kind: "handshake" });
  }
});

test("a counter at 2^64 - 1 ends the session", async () => {
  const { player, host } = await session();
  player.setNoncesForTesting(MAX_NONCE - 1n, MAX_NONCE - 1n);
  await player.seal(Uint8Array.of(1));
  await assert.rejects(player.seal(Uint8Array.of(1)), { kind: "nonce-exhausted" });
  const { player: reader } = await session();
  reader.setNoncesForTesting(0n, MAX_NONCE);
  await assert.rejects(reader.open(messages(await host.seal(FrameType.DATA, Uint8Array.of(1)))[0]), {
    kind: "nonce-exhausted",
  });
});
