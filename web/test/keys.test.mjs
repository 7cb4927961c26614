// The text form of keys, host ids and pins (PROTOCOL.md sections 2, 3.2 and 4.3),
// checked against the protocol's own example and RFC 4648's test vectors.
import assert from "node:assert/strict";
import { test } from "node:test";

import { fromHex } from "../build/bytes.js";
import { KeyTextError, decodeBase32, encodeBase32, keyText, parseKey } from "../build/keys.js";
import { publicKey } from "../build/noise.js";

const EXAMPLE_ID = "z2gtvuomwyz6y63qyf4bjjohn3gqffufaugtir2fxicyodsypvmq";

test("the host id of PROTOCOL.md 3.2 reads and writes as the example says", () => {
  const key = publicKey(new Uint8Array(32).fill(2));
  assert.deepEqual(key, fromHex("ce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59"));
  assert.equal(keyText(key), EXAMPLE_ID);
  assert.deepEqual(parseKey(EXAMPLE_ID), key);
  // Either case, and surrounding whitespace, as section 3.2 allows.
  assert.deepEqual(parseKey(`  ${EXAMPLE_ID.toUpperCase()}\n`), key);
});

test("base32 is RFC 4648's, lower case and without padding", () => {
  const vectors = ["", "my", "mzxq", "mzxw6", "mzxw6yq", "mzxw6ytb", "mzxw6ytboi"];
  for (const [i, text] of vectors.entries()) {
    const bytes = new TextEncoder().encode("foobar".slice(0, i));
    assert.equal(encodeBase32(bytes), text);
    assert.deepEqual(decodeBase32(text), bytes);
  }
});

test("text that is not one key's only text form is refused", () => {
  for (const bad of [
    EXAMPLE_ID.slice(0, 51), // 51 characters cannot encode whole bytes
    EXAMPLE_ID.slice(0, 50), // whole bytes, but 31 of them
    `${EXAMPLE_ID}aaaaaaaa`, // 37 bytes
    `${EXAMPLE_ID.slice(0, 51)}r`, // the last character's unused bits are not zero
    `${EXAMPLE_ID.slice(0, 51)}1`, // not in the alphabet
    `${EXAMPLE_ID.slice(0, 20)} ${EXAMPLE_ID.slice(21)}`, // whitespace inside
    `${EXAMPLE_ID}====`, // padding
  ]) {
    assert.throws(() => parseKey(bad), KeyTextError, bad);
  }
  assert.throws(() => keyText(new Uint8Array(31)), KeyTextError);
});
