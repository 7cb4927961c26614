// The pinned Noise vector of PROTOCOL.md section 10.7, from the player's side: with
// the fixed keys, the player must write messages 1, 3 and 4 byte for byte and open
// 2, 2b and 5, and the transcript must hash to the pinned digest.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";

import { nobleAead, webCryptoAead } from "../build/aead.js";
import { concat, fromHex, toHex } from "../build/bytes.js";
import { MessageReader, PROLOGUE, PlayerHandshake, publicKey } from "../build/noise.js";

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
