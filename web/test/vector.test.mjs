// The pinned Noise vector of PROTOCOL.md section 10.7, from the player's side: with
// the fixed keys, the player must write messages 1, 3 and 4 byte for byte and open
// 2, 2b and 5, and the transcript must hash to the pinned digest.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";

import { nobleAead, webCryptoAead } from "../build/aead.js";
import { concat, fromHex, toHex } from "../build/bytes.js";
import { MessageReader, PROLOGUE, PlayerHandshake, publicKey } from "../build/noise.js";
import { TestHost } from "./support/host.mjs";

const fill = (byte) => new Uint8Array(32).fill(byte);
const PLAYER_STATIC = fill(0x01);
const HOST_STATIC = fill(0x02);
const PLAYER_EPHEMERAL = fill(0x03);

const HELLO =
  "0060" +
  "5dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9df1c6e0124b3ef22" +
  "15b8a95d5d330d08a031e199b7afdcf979ca70099a3500fe2d2184680b23ffb390c517e232762641d2faae5f04dd355d" +
  "4c7d5459f0dc18748700bd470db9a2c0";
const REPLY =
  "0030" + "ac01b2209e86354fb853237b5de0f4fab13c7fcbf433a61c019369617fecf10b" + "6ea50427c0490d796c8145ded074c1c3";
const VERDICT = "0012" + "df114df60cbaeaa24c14634e7e5d9e0fbdf8";
const DATA_GET = "001f" + "16ca0ebe9984eb056a833d4558e91e05afe976f5fc47198ad7f67806f2c9ba";
const END = "0011" + "133977698d58d49ae7c80b1d7edc4078bc";
const DATA_OK = "0017" + "9b2539fe17fb9eee79ca1db63e2a87880aa156fd5293b3";
const HANDSHAKE_HASH = "5ace202e6bc0ed175b8d0765b61368bbc8a5eba312a38bc3ed12d19d17884b29";
const DIGEST = "f43b4db74f529e9b60576c87062d4a4432a973fa9016a7254cfc0b693f0c39d9";

/** Strips the 2-byte length of one framed message, checking it. */
function unframe(hex) {
  const reader = new MessageReader();
  reader.push(fromHex(hex));
  const message = reader.next();
  assert.ok(message, "a whole message");
  assert.equal(reader.buffered(), 0);
  return message;
}

test("the keys of the vector are the ones PROTOCOL.md lists", () => {
  assert.equal(toHex(publicKey(PLAYER_STATIC)), "a4e09292b651c278b9772c569f5fa9bb13d906b46ab68c9df9dc2b4409f8a209");
  assert.equal(toHex(publicKey(HOST_STATIC)), "ce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59");
  assert.equal(toHex(publicKey(PLAYER_EPHEMERAL)), "5dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9df1c6e0124b3ef22");
  assert.equal(
    toHex(PROLOGUE),
    "626c696e6472656c61792f312073657373696f6e204e6f6973655f494b5f32353531395f41455347434d5f424c414b453273",
  );
});

for (const aead of [webCryptoAead(globalThis.crypto.subtle), nobleAead]) {
  test(`the player reproduces the pinned transcript (${aead.name})`, async () => {
    const hostId = publicKey(HOST_STATIC);
    const handshake = await PlayerHandshake.start(PLAYER_STATIC, hostId, {
      aead,
      ephemeralSecretForTesting: PLAYER_EPHEMERAL,
    });
    assert.equal(toHex(handshake.hello), HELLO, "message 1, the hello");

    const expect = await handshake.readReply(unframe(REPLY));
    assert.equal(toHex(expect.handshakeHash), HANDSHAKE_HASH);
    const opened = await expect.openVerdict(unframe(VERDICT));
    assert.equal(opened.verdict, "welcome", "message 2b, the verdict");
    const transport = opened.transport;
    assert.deepEqual(transport.remoteStatic, hostId);

    const get = await transport.seal(new TextEncoder().encode("GET /movie.mkv"));
    assert.equal(toHex(get), DATA_GET, "message 3");
    const end = await transport.sealEnd();
    assert.equal(toHex(end), END, "message 4");

    const ok = await transport.open(unframe(DATA_OK));
    assert.equal(ok.type, "data");
    assert.equal(new TextDecoder().decode(ok.data), "200 OK", "message 5");

    const transcript = concat(handshake.hello, fromHex(REPLY), fromHex(VERDICT), get, end, fromHex(DATA_OK));
    assert.equal(transcript.length, 245);
    assert.equal(createHash("sha256").update(transcript).digest("hex"), DIGEST);
  });
}

test("a player with another static key cannot finish the handshake on the pinned reply", async () => {
  const hostId = publicKey(HOST_STATIC);
  const other = await PlayerHandshake.start(fill(0x05), hostId, { ephemeralSecretForTesting: PLAYER_EPHEMERAL });
  assert.notEqual(toHex(other.hello), HELLO);
  await assert.rejects(other.readReply(unframe(REPLY)), { name: "NoiseError", kind: "handshake" });
});

// PROTOCOL.md section 10.8's pinned vectors: the session of 10.7 made resumable
// (the same keys, a hello payload of 32 zero bytes, verdict 0x02) has the resume id
// RESUME_ID; a resume of it with ephemeral keys 05×32 (player) and 06×32 (host),
// whose hello carries that id, answered "resumed", then the host's ack of 14 and
// the player's ack of 6, is a 254-byte transcript with the digest RESUME_DIGEST.
const RESUME_ID = "10d23e8385e35510253b6e1f730584f260ba682b6ff050fa42c24fe97a24800a";
const RESUME_DIGEST = "435d59853782a444a0661d33bba32fb023899434556091141c7d86b764dd5391";

for (const aead of [webCryptoAead(globalThis.crypto.subtle), nobleAead]) {
  test(`the player reproduces the pinned resume id and resume transcript (${aead.name})`, async () => {
    const hostId = publicKey(HOST_STATIC);
    const first = await PlayerHandshake.start(PLAYER_STATIC, hostId, { aead, hello: "resumable", ephemeralSecretForTesting: PLAYER_EPHEMERAL });
    assert.equal(first.hello.length, 2 + 128);
    const host = new TestHost(HOST_STATIC, aead);
    const reply = await host.respond(unframe(toHex(first.hello)), fill(0x04));
    assert.deepEqual(host.helloPayload, new Uint8Array(32), "a resumable new session asks with 32 zero bytes");
    const welcome = await (await first.readReply(unframe(toHex(reply)))).openVerdict(unframe(toHex(await host.verdictByte(0x02))));
    assert.equal(welcome.verdict, "welcome");
    assert.equal(welcome.transport.resumable, true);
    assert.equal(toHex(welcome.transport.resumeId), RESUME_ID, "the pinned resume id");
    assert.equal(toHex(host.resumeId), RESUME_ID, "the host derives the same");

    const resume = await PlayerHandshake.start(PLAYER_STATIC, hostId, {
      aead,
      hello: { resume: welcome.transport.resumeId },
      ephemeralSecretForTesting: fill(0x05),
    });
    assert.equal(resume.hello.length, 2 + 128, "the size of a new session's hello");
    const again = new TestHost(HOST_STATIC, aead);
    const resumeReply = await again.respond(unframe(toHex(resume.hello)), fill(0x06));
    assert.equal(toHex(again.helloPayload), RESUME_ID, "the resume hello carries the id");
    const verdict = await again.verdictByte(0x03);
    const resumed = await (await resume.readReply(unframe(toHex(resumeReply)))).openVerdict(unframe(toHex(verdict)));
    assert.equal(resumed.verdict, "resumed");
    const hostAck = await again.ack(14);
    const playerAck = await resumed.transport.sealAck(6);
    assert.deepEqual(await resumed.transport.open(unframe(toHex(hostAck))), { type: "ack", count: 14n });
    assert.equal((await again.open(unframe(toHex(playerAck)))).count, 6);
    const transcript = concat(resume.hello, resumeReply, verdict, hostAck, playerAck);
    assert.equal(transcript.length, 254);
    assert.equal(createHash("sha256").update(transcript).digest("hex"), RESUME_DIGEST);
    assert.notEqual(toHex(resumed.transport.resumeId), RESUME_ID, "each resume makes a new id");
  });
}

test("a verdict that does not answer the hello is refused", async () => {
  const hostId = publicKey(HOST_STATIC);
  const cases = [
    ["resumable", 0x03],
    ["resumable", 0x04],
    [{ resume: fill(0x09) }, 0x00],
    [{ resume: fill(0x09) }, 0x02],
  ];
  for (const [hello, byte] of cases) {
    const handshake = await PlayerHandshake.start(PLAYER_STATIC, hostId, { hello });
    const host = new TestHost(HOST_STATIC, webCryptoAead(globalThis.crypto.subtle));
    const expect = await handshake.readReply(unframe(toHex(await host.respond(unframe(toHex(handshake.hello))))));
    await assert.rejects(expect.openVerdict(unframe(toHex(await host.verdictByte(byte)))), { kind: "out-of-order" }, `${byte}`);
  }
  // A resumable hello answered with a plain welcome (an older host): a session that is not resumable.
  const handshake = await PlayerHandshake.start(PLAYER_STATIC, hostId, { hello: "resumable" });
  const host = new TestHost(HOST_STATIC, webCryptoAead(globalThis.crypto.subtle));
  const expect = await handshake.readReply(unframe(toHex(await host.respond(unframe(toHex(handshake.hello))))));
  const opened = await expect.openVerdict(unframe(toHex(await host.verdictByte(0x00))));
  assert.equal(opened.verdict, "welcome");
  assert.equal(opened.transport.resumable, false);
  await assert.rejects(opened.transport.sealAck(1), { kind: "misuse" });
});
