// Control messages (PROTOCOL.md 7.4) and stream frames (17.2) against the hex
// examples of PROTOCOL.md, and the refusals of bad input that those sections list.
import assert from "node:assert/strict";
import { test } from "node:test";

import { fromHex, toHex } from "../build/bytes.js";
import {
  controlFrameLength,
  decodePlayerControl,
  describeErrorCode,
  encodeConnect,
  isCanonicalMemberName,
  takePlayerControl,
} from "../build/control.js";
import { FrameDecoder, encodeData, encodeFrame } from "../build/frames.js";

const rep = (hex, n) => hex.repeat(n);

test("Connect is the frame of PROTOCOL.md 7.4", () => {
  const frame = encodeConnect(new Uint8Array(32).fill(0x44));
  assert.equal(toHex(frame), "00220110" + rep("44", 32));
  assert.equal(frame.length, 36);
  assert.throws(() => encodeConnect(new Uint8Array(31)), { kind: "bad-host-id" });
});

test("Connect carries a redirect count only when it is not 0 (PROTOCOL.md 7.4, 18.4)", () => {
  const id = new Uint8Array(32).fill(0x44);
  assert.equal(toHex(encodeConnect(id, 2)), "00230110" + rep("44", 32) + "02");
  assert.equal(toHex(encodeConnect(id, 0)), toHex(encodeConnect(id)));
  assert.equal(encodeConnect(id, 255).length, 37);
  for (const bad of [-1, 256, 1.5]) assert.throws(() => encodeConnect(id, bad), { kind: "bad-redirect-count" });
});

test("Redirect decodes from the frame of PROTOCOL.md 7.4; Move is not a player's", () => {
  const redirect = takePlayerControl(fromHex("001d010702" + "0e72302e6578616d706c653a343433" + "0a5b3a3a315d3a34343333"));
  assert.deepEqual(redirect, { used: 31, message: { kind: "redirect", members: ["r0.example:443", "[::1]:4433"] } });
  assert.deepEqual(decodePlayerControl(fromHex("010703" + "0361" + "3a31" + "0362" + "3a32" + "0363" + "3a33")), {
    kind: "redirect",
    members: ["a:1", "b:2", "c:3"],
  });
  assert.throws(() => decodePlayerControl(fromHex("0108010c31302e302e302e373a343433")), { kind: "unexpected-kind" });
});

test("member lists that break section 18.3 are refused", () => {
  const name = (text) => toHex(new Uint8Array([text.length])) + toHex(new TextEncoder().encode(text));
  const cases = [
    ["010700", "bad-member-list"],
    ["010704" + name("a:1") + name("b:1") + name("c:1") + name("d:1"), "bad-member-list"],
    ["010702" + name("a:1") + name("a:1"), "bad-member-list"],
    ["010701" + name("A:1"), "bad-member-name"],
    ["010701" + name("a:01"), "bad-member-name"],
    ["010701" + name("a:0"), "bad-member-name"],
    ["010701" + name("a:65536"), "bad-member-name"],
    ["010701" + name("a"), "bad-member-name"],
    ["010701" + name("::1:443"), "bad-member-name"],
    ["010701" + name("[::G]:443"), "bad-member-name"],
    ["010701" + name("a_b:443"), "bad-member-name"],
    ["01070100", "bad-member-name"],
    ["01070101c3", "bad-member-name"],
    ["010702" + name("a:1"), "truncated"],
    ["010701" + name("a:1") + "00", "trailing-bytes"],
  ];
  for (const [hex, kind] of cases) {
    assert.throws(() => decodePlayerControl(fromHex(hex)), { name: "ControlError", kind }, hex);
  }
  for (const ok of ["relay-0.relay.example.net:443", "10.0.0.7:443", "[::1]:4433", "[2001:db8::1]:65535", "x:1"]) {
    assert.ok(isCanonicalMemberName(ok), ok);
  }
  assert.ok(!isCanonicalMemberName("a".repeat(250) + ":443"), "254 bytes");
  assert.ok(isCanonicalMemberName("a".repeat(249) + ":443"), "253 bytes");
  assert.ok(!isCanonicalMemberName("[::1]"), "no port");
  assert.ok(!isCanonicalMemberName("[::1]:443x"), "a port that is not a number");
});

test("Connected and Error decode from the frames of PROTOCOL.md 7.4 and 7.5", () => {
  const connected = takePlayerControl(fromHex("002e0111" + "0102030405060708" + rep("00", 36)));
  assert.deepEqual(connected, {
    used: 48,
    message: {
      kind: "connected",
      sessionId: 0x0102030405060708n,
      limits: { rate: 0n, hostRate: 0n, maxBytes: 0n, maxDuration: 0, idleTimeout: 0, stallTimeout: 0 },
    },
  });
  const limits = decodePlayerControl(
    fromHex("0111" + "0000000000000007" + "000000000000000100000000000000020000000000000003000000040000000500000006"),
  );
  assert.deepEqual(limits.limits, {
    rate: 1n,
    hostRate: 2n,
    maxBytes: 3n,
    maxDuration: 4,
    idleTimeout: 5,
    stallTimeout: 6,
  });
  const error = takePlayerControl(fromHex("0012017f0003000c686f7374206f66666c696e65"));
  assert.deepEqual(error, { used: 20, message: { kind: "error", code: 3, reason: "host offline" } });
  assert.equal(describeErrorCode(3), "host offline");
  // Codes this version does not know still decode (section 7.3).
  const unknown = decodePlayerControl(fromHex("017f03e70000"));
  assert.deepEqual(unknown, { kind: "error", code: 999, reason: "" });
  assert.equal(describeErrorCode(999), "unknown error code 0x3e7");
});

test("a control frame waits for its whole body and leaves what follows", () => {
  const whole = fromHex("0012017f0003000c686f7374206f66666c696e65" + "0060");
  assert.equal(takePlayerControl(whole.subarray(0, 1)), undefined);
  assert.equal(takePlayerControl(whole.subarray(0, 19)), undefined);
  assert.equal(takePlayerControl(whole).used, 20);
});

test("control frames that break section 7.2 are refused", () => {
  // The length is refused from the prefix alone, before the body.
  assert.throws(() => controlFrameLength(fromHex("0401")), { kind: "too-long" });
  assert.throws(() => takePlayerControl(fromHex("0401")), { kind: "too-long" });
  assert.throws(() => controlFrameLength(fromHex("0001")), { kind: "truncated" });
  assert.doesNotThrow(() => controlFrameLength(fromHex("0400")));
  const cases = [
    ["0211" + "0102030405060708" + rep("00", 36), "unsupported-version"],
    ["0111" + "0102030405060708" + rep("00", 35), "truncated"],
    ["0111" + "0102030405060708" + rep("00", 37), "trailing-bytes"],
    ["017f0003000c686f7374206f66666c696e6500", "trailing-bytes"],
    ["017f0003000d686f7374206f66666c696e65", "truncated"],
    ["017f00030101" + rep("61", 257), "reason-too-long"],
    ["017f00030001ff", "invalid-utf8"],
    ["0199", "unknown-kind"],
    ["0112" + "0000000000000007" + rep("00", 36), "unexpected-kind"],
    ["0110" + rep("44", 32), "unexpected-kind"],
    ["01", "truncated"],
  ];
  for (const [hex, kind] of cases) {
    assert.throws(() => decodePlayerControl(fromHex(hex)), { name: "ControlError", kind }, hex);
  }
  // A 256-byte reason is the longest allowed.
  assert.equal(decodePlayerControl(fromHex("017f00010100" + rep("61", 256))).reason.length, 256);
});

test("stream frames are the bytes of PROTOCOL.md 17.2", () => {
  const cases = [
    [{ type: "data", data: new TextEncoder().encode("abc") }, "000003616263"],
    [{ type: "fin" }, "01"],
    [{ type: "reset", code: 0x100 }, "0200000100"],
    [{ type: "stop", code: 0x101 }, "0300000101"],
    [{ type: "close", code: 3, reason: "idle" }, "0400000003000469646c65"],
    [{ type: "ping", opaque: fromHex("0102030405060708") }, "050102030405060708"],
    [{ type: "pong", opaque: new Uint8Array(8).fill(8) }, "060808080808080808"],
  ];
  for (const [frame, hex] of cases) {
    assert.equal(toHex(encodeFrame(frame)), hex, frame.type);
    const decoder = new FrameDecoder();
    decoder.push(fromHex(hex));
    assert.deepEqual(decoder.next(), frame, hex);
    assert.equal(decoder.next(), undefined);
    assert.equal(decoder.buffered(), 0);
  }
});

test("frames decode the same whatever pieces the bytes arrive in", () => {
  const frames = [
    { type: "data", data: new Uint8Array(16384).map((_, i) => i & 0xff) },
    { type: "ping", opaque: fromHex("0102030405060708") },
    { type: "close", code: 5, reason: "é".repeat(10) },
    { type: "data", data: Uint8Array.of(7) },
    { type: "reset", code: 0x105 },
    { type: "fin" },
  ];
  const wire = Uint8Array.from(frames.flatMap((f) => [...encodeFrame(f)]));
  for (const piece of [1, 2, 3, 7, 1000, wire.length]) {
    const decoder = new FrameDecoder();
    const got = [];
    for (let at = 0; at < wire.length; at += piece) {
      decoder.push(wire.subarray(at, at + piece));
      for (let f = decoder.next(); f !== undefined; f = decoder.next()) got.push(f);
    }
    assert.deepEqual(got, frames, `pieces of ${piece}`);
  }
});

test("encodeData splits stream bytes into full DATA frames", () => {
  const bytes = new Uint8Array(40000).fill(1);
  const decoder = new FrameDecoder();
  decoder.push(encodeData(bytes));
  const sizes = [];
  for (let f = decoder.next(); f !== undefined; f = decoder.next()) sizes.push(f.data.length);
  assert.deepEqual(sizes, [16384, 16384, 7232]);
  assert.throws(() => encodeFrame({ type: "data", data: new Uint8Array(0) }), { kind: "bad-data-length" });
  assert.throws(() => encodeFrame({ type: "data", data: new Uint8Array(16385) }), { kind: "bad-data-length" });
});

test("bad frames are refused from their first bytes, and the decoder stays refused", () => {
  for (const [hex, kind] of [
    ["000000", "bad-data-length"],
    ["004001", "bad-data-length"],
    ["07", "unknown-type"],
    ["04000000010101", "reason-too-long"],
    ["040000000100 01ff", "invalid-utf8"],
  ]) {
    const decoder = new FrameDecoder();
    decoder.push(fromHex(hex));
    assert.throws(() => decoder.next(), { name: "FrameError", kind }, hex);
    decoder.push(fromHex("01"));
    assert.throws(() => decoder.next(), { name: "FrameError", kind }, `${hex} stays refused`);
  }
});

test("a long close reason is cut on a character boundary", () => {
  const decoder = new FrameDecoder();
  decoder.push(encodeFrame({ type: "close", code: 3, reason: "é".repeat(200) }));
  assert.equal(decoder.next().reason, "é".repeat(128));
});

test("a decoder fed faster than it is read copies in proportion to the bytes, not their square", () => {
  // 2 MiB of DATA frames pushed in 1 KiB pieces before any frame is taken: a decoder
  // that concatenated its whole backlog at each push copied some 2 GiB here.
  const frames = encodeData(new Uint8Array(2 * 1024 * 1024).fill(7));
  const { set, copyWithin } = Uint8Array.prototype;
  let copied = 0;
  Uint8Array.prototype.set = function (source, offset) {
    copied += source.length ?? 0;
    return set.call(this, source, offset);
  };
  Uint8Array.prototype.copyWithin = function (target, start, end = this.length) {
    copied += Math.max(0, end - start);
    return copyWithin.call(this, target, start, end);
  };
  let taken = 0;
  try {
    const decoder = new FrameDecoder();
    for (let at = 0; at < frames.length; at += 1024) decoder.push(frames.subarray(at, at + 1024));
    for (let frame = decoder.next(); frame !== undefined; frame = decoder.next()) taken += frame.data.length;
  } finally {
    Uint8Array.prototype.set = set;
    Uint8Array.prototype.copyWithin = copyWithin;
  }
  assert.equal(taken, 2 * 1024 * 1024);
  assert.ok(copied < 8 * frames.length, `${copied} bytes copied to decode ${frames.length}`);
});
