// The player's static key in both forms: a non-extractable WebCrypto X25519 key
// and raw bytes give a hello the host opens to the same player key, and a session
// that carries data; a WebCrypto key cannot be read out.
import assert from "node:assert/strict";
import { test } from "node:test";

import { webCryptoAead } from "../build/aead.js";
import { FrameType, PlayerHandshake, generateSecretKey, publicKey } from "../build/noise.js";
import { generateWebCryptoKeyPair, rawStaticKey, webCryptoStaticKey } from "../build/statickey.js";
import { TestHost } from "./support/host.mjs";

const subtle = globalThis.crypto.subtle;
const aead = webCryptoAead(subtle);

async function handshakeWith(staticKey) {
  const hostSecret = generateSecretKey();
  const host = new TestHost(hostSecret, aead);
  const handshake = await PlayerHandshake.start(staticKey, publicKey(hostSecret), { aead });
  const reply = await host.respond(handshake.hello.subarray(2));
  const expect = await handshake.readReply(reply.subarray(2));
  const opened = await expect.openVerdict((await host.verdict()).subarray(2));
  assert.equal(opened.verdict, "welcome");
  const sealed = await opened.transport.seal(new TextEncoder().encode("ping"));
  const got = await host.open(sealed.subarray(2));
  return { host, got };
}

test("a non-extractable WebCrypto key runs the handshake, and the host sees its public key", async () => {
  const pair = await generateWebCryptoKeyPair(subtle);
  assert.ok(pair, "node's WebCrypto has X25519");
  assert.equal(pair.privateKey.extractable, false);
  await assert.rejects(subtle.exportKey("raw", pair.privateKey));
  const key = webCryptoStaticKey(subtle, pair.privateKey, pair.publicKey);
  const { host, got } = await handshakeWith(key);
  assert.deepEqual(host.playerKey, pair.publicKey);
  assert.equal(got.kind, FrameType.DATA);
  assert.equal(new TextDecoder().decode(got.body), "ping");
});

test("raw bytes and a StaticKey of the same bytes give the same player key", async () => {
  const secret = generateSecretKey();
  const { host } = await handshakeWith(rawStaticKey(secret));
  assert.deepEqual(host.playerKey, publicKey(secret));
});

test("a low-order host id is refused with either form", async () => {
  const pair = await generateWebCryptoKeyPair(subtle);
  const zero = new Uint8Array(32);
  for (const key of [rawStaticKey(generateSecretKey()), webCryptoStaticKey(subtle, pair.privateKey, pair.publicKey)]) {
    await assert.rejects(PlayerHandshake.start(key, zero, { aead }), /not a usable X25519 key/);
  }
});
