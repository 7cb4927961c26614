// The client's side of RFC 6455 that a page's tunnelled WebSocket speaks: frames
// masked as section 5.3 asks (the examples of section 5.7), the server's frames
// read in any split, fragments joined, control frames between fragments, pings
// answered with their payload, the close handshake from either side, and each
// refusal with its code: a masked or reserved frame, a bad opcode, a fragmented or
// long control frame, text that is not UTF-8, and a message past the bound refused
// from its header, before its payload is held. The opening handshake: the
// request's headers, the answer's accept value (section 1.3's example) and each way
// one can be wrong, and a whole exchange with the `ws` package's server.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { createHash } from "node:crypto";
import net from "node:net";
import { test } from "node:test";
import { WebSocketServer } from "ws";

import {
  ClientConnection,
  FrameReader,
  MAX_HANDSHAKE_BYTES,
  MAX_MESSAGE_BYTES,
  WsProtocolError,
  acceptFor,
  checkUpgradeResponse,
  encodeClientFrame,
  encodeClosePayload,
  encodeUpgradeRequest,
  readUpgradeResponse,
} from "../build/rfc6455.js";

const MASK = new Uint8Array([0x37, 0xfa, 0x21, 0x3d]);
const hex = (s) => Uint8Array.from(Buffer.from(s.replace(/\s/g, ""), "hex"));
const ascii = (s) => new TextEncoder().encode(s);

/** An unmasked frame as a server writes it. */
function serverFrame(opcode, payload, { fin = true, rsv = 0, masked = false, lengthOverride } = {}) {
  const len = lengthOverride ?? payload.length;
  const head = [(fin ? 0x80 : 0) | (rsv << 4) | opcode];
  if (len < 126) head.push((masked ? 0x80 : 0) | len);
  else if (len < 0x10000) head.push((masked ? 0x80 : 0) | 126, len >> 8, len & 0xff);
  else {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(BigInt(len));
    head.push((masked ? 0x80 : 0) | 127, ...b);
  }
  if (masked) head.push(0, 0, 0, 0);
  return Uint8Array.from([...head, ...payload]);
}

test("frames are masked as section 5.7's examples: Hello in one frame, lengths of 126 and 65536", () => {
  // Section 5.7: "A single-frame masked text message".
  assert.deepEqual(encodeClientFrame(0x1, ascii("Hello"), MASK), hex("81 85 37 fa 21 3d 7f 9f 4d 51 58"));
  // A masked ping with "Hello".
  assert.deepEqual(encodeClientFrame(0x9, ascii("Hello"), MASK), hex("89 85 37 fa 21 3d 7f 9f 4d 51 58"));
  const mid = encodeClientFrame(0x2, new Uint8Array(256), MASK);
  assert.deepEqual(mid.subarray(0, 8), hex("82 fe 01 00 37 fa 21 3d"));
  assert.equal(mid.length, 8 + 256);
  const long = encodeClientFrame(0x2, new Uint8Array(65536), MASK);
  assert.deepEqual(long.subarray(0, 14), hex("82 ff 00 00 00 00 00 01 00 00 37 fa 21 3d"));
  // Masked zeros are the mask, repeated.
  assert.deepEqual(long.subarray(14, 22), hex("37 fa 21 3d 37 fa 21 3d"));
  assert.deepEqual(encodeClientFrame(0x0, ascii("lo"), MASK, false)[0], 0x00);
  assert.throws(() => encodeClientFrame(0x1, ascii("x"), new Uint8Array(3)), RangeError);
});

test("every frame the connection writes has a fresh mask from its source", () => {
  let n = 0;
  const conn = new ClientConnection({ mask: () => new Uint8Array([n, n, n, n++]) });
  const a = conn.message("a");
  const b = conn.message(new Uint8Array([1]));
  assert.deepEqual(a, Uint8Array.from([0x81, 0x81, 0, 0, 0, 0, 0x61]));
  assert.deepEqual(b, Uint8Array.from([0x82, 0x81, 1, 1, 1, 1, 0x00]));
  // The default source: four random bytes each time.
  const random = new ClientConnection();
  const masks = new Set(Array.from({ length: 8 }, () => Buffer.from(random.message("x").subarray(2, 6)).toString("hex")));
  assert.ok(masks.size > 1);
});

test("the server's frames are read in any split: byte by byte, and several in one chunk", () => {
  const bytes = Uint8Array.from([
    ...serverFrame(0x1, ascii("Hello")),
    ...serverFrame(0x2, new Uint8Array(300).fill(7)),
    ...serverFrame(0x2, new Uint8Array(70_000).fill(9)),
  ]);
  const split = new FrameReader();
  const events = [];
  for (const b of bytes) events.push(...split.push(Uint8Array.of(b)));
  const whole = new FrameReader().push(bytes);
  for (const got of [events, whole]) {
    assert.equal(got.length, 3);
    assert.deepEqual(got[0], { type: "text", data: "Hello" });
    assert.equal(got[1].type, "binary");
    assert.equal(got[1].data.length, 300);
    assert.equal(got[2].data.length, 70_000);
    assert.ok(got[2].data.every((b) => b === 9));
  }
});

test("fragments are joined, with control frames between them delivered at once", () => {
  const reader = new FrameReader();
  assert.deepEqual(reader.push(serverFrame(0x1, ascii("Hel"), { fin: false })), []);
  assert.deepEqual(reader.push(serverFrame(0x9, ascii("p"))), [{ type: "ping", data: ascii("p") }]);
  assert.deepEqual(reader.push(serverFrame(0x0, ascii("lo "), { fin: false })), []);
  // A character split across fragments is whole in the message.
  const check = ascii("✓");
  assert.deepEqual(reader.push(serverFrame(0x0, check.subarray(0, 1), { fin: false })), []);
  assert.deepEqual(reader.push(serverFrame(0x0, check.subarray(1))), [{ type: "text", data: "Hello ✓" }]);
  // Binary the same way, and empty fragments are fine.
  assert.deepEqual(reader.push(serverFrame(0x2, Uint8Array.of(1), { fin: false })), []);
  assert.deepEqual(reader.push(serverFrame(0x0, new Uint8Array(0), { fin: false })), []);
  assert.deepEqual(reader.push(serverFrame(0x0, Uint8Array.of(2))), [{ type: "binary", data: Uint8Array.of(1, 2) }]);
});

test("a ping is answered with a pong carrying its payload; a pong is taken and ignored", () => {
  const conn = new ClientConnection({ mask: () => MASK });
  const got = conn.receive(Uint8Array.from([...serverFrame(0x9, ascii("Hello")), ...serverFrame(0xa, ascii("late"))]));
  assert.deepEqual(got.messages, []);
  assert.deepEqual(got.write, [hex("8a 85 37 fa 21 3d 7f 9f 4d 51 58")]);
  assert.equal(got.closed, undefined);
  assert.equal(conn.state, "open");
});

test("the server closes: the code is echoed, the connection is clean and over", () => {
  const conn = new ClientConnection({ mask: () => MASK });
  const got = conn.receive(Uint8Array.from([...serverFrame(0x1, ascii("last")), ...serverFrame(0x8, encodeClosePayload(4001, "bye")), ...serverFrame(0x1, ascii("after"))]));
  assert.deepEqual(got.messages, ["last"]);
  assert.equal(got.write.length, 1);
  const echo = got.write[0];
  assert.equal(echo[0], 0x88);
  const payload = echo.subarray(6).map((b, i) => b ^ MASK[i % 4]);
  assert.deepEqual(payload, hex("0fa1"));
  assert.deepEqual(got.closed, { code: 4001, reason: "bye", wasClean: true });
  assert.equal(conn.state, "closed");
  // Nothing more is read or written.
  assert.deepEqual(conn.receive(serverFrame(0x1, ascii("more"))), { messages: [], write: [] });
  assert.equal(conn.message("late"), undefined);
  // A close with no code is reported as 1005 and echoed empty.
  const bare = new ClientConnection({ mask: () => MASK });
  const empty = bare.receive(serverFrame(0x8, new Uint8Array(0)));
  assert.deepEqual(empty.closed, { code: 1005, reason: "", wasClean: true });
  assert.deepEqual(empty.write, [hex("88 80 37 fa 21 3d")]);
});

test("the page closes: messages after it are dropped, the server's close ends it with the server's code", () => {
  const conn = new ClientConnection({ mask: () => MASK });
  const frame = conn.close(4000, "done");
  assert.equal(frame[0], 0x88);
  assert.equal(conn.state, "closing");
  assert.equal(conn.close(4000, "again"), undefined, "one close frame only");
  assert.equal(conn.message("too late"), undefined);
  const got = conn.receive(Uint8Array.from([...serverFrame(0x1, ascii("in flight")), ...serverFrame(0x9, ascii("p")), ...serverFrame(0x8, encodeClosePayload(4000, "done"))]));
  assert.deepEqual(got.messages, []);
  assert.deepEqual(got.write, [], "no pong and no second close after the page's close");
  assert.deepEqual(got.closed, { code: 4000, reason: "done", wasClean: true });
  assert.throws(() => encodeClosePayload(1000, "x".repeat(124)), RangeError);
  assert.equal(encodeClosePayload(1000, "é".repeat(61)).length, 124);
});

test("a session lost under the connection is an abnormal close, 1006", () => {
  const conn = new ClientConnection();
  assert.deepEqual(conn.lost(), { code: 1006, reason: "", wasClean: false });
  assert.deepEqual(new ClientConnection().lost("gone"), { code: 1006, reason: "", wasClean: false, failure: "gone" });
});

test("what section 5 forbids fails the connection with its code, told to the server", () => {
  const cases = [
    ["a masked frame", serverFrame(0x1, ascii("x"), { masked: true }), 1002],
    ["a reserved bit", serverFrame(0x1, ascii("x"), { rsv: 4 }), 1002],
    ["a reserved opcode", serverFrame(0x3, ascii("x")), 1002],
    ["a reserved control opcode", serverFrame(0xb, ascii("x")), 1002],
    ["a fragmented ping", serverFrame(0x9, ascii("x"), { fin: false }), 1002],
    ["a 126-byte ping", serverFrame(0x9, new Uint8Array(126)), 1002],
    ["a continuation with no message", serverFrame(0x0, ascii("x")), 1002],
    ["a new message inside one", Uint8Array.from([...serverFrame(0x1, ascii("a"), { fin: false }), ...serverFrame(0x1, ascii("b"))]), 1002],
    ["text that is not UTF-8", serverFrame(0x1, Uint8Array.of(0xc3, 0x28)), 1007],
    ["a one-byte close", serverFrame(0x8, Uint8Array.of(3)), 1002],
    ["close code 1005 on the wire", serverFrame(0x8, encodeClosePayload(1005)), 1002],
    ["close code 999", serverFrame(0x8, encodeClosePayload(999)), 1002],
    ["a close reason that is not UTF-8", serverFrame(0x8, Uint8Array.of(0x03, 0xe8, 0xff)), 1007],
    ["a 64-bit length with its top bit", Uint8Array.of(0x82, 0x7f, 0x80, 0, 0, 0, 0, 0, 0, 0), 1002],
  ];
  for (const [what, bytes, code] of cases) {
    assert.throws(() => new FrameReader().push(bytes), (err) => err instanceof WsProtocolError && err.code === code, what);
    const conn = new ClientConnection({ mask: () => MASK });
    const got = conn.receive(bytes);
    assert.equal(got.closed?.code, 1006, what);
    assert.equal(got.closed?.wasClean, false, what);
    assert.ok(got.closed?.failure, what);
    assert.equal(got.write.length, 1, what);
    const told = got.write[0].subarray(6).map((b, i) => b ^ MASK[i % 4]);
    assert.equal((told[0] << 8) | told[1], code, what);
    assert.equal(conn.state, "closed", what);
  }
});

test("a message past the bound is refused from its header, before its payload arrives: 1009", () => {
  assert.equal(MAX_MESSAGE_BYTES, 16 * 1024 * 1024);
  // One frame that says 16 MiB and one byte: refused with only its 10 header bytes in.
  const header = serverFrame(0x2, new Uint8Array(0), { lengthOverride: MAX_MESSAGE_BYTES + 1 });
  assert.equal(header.length, 10);
  assert.throws(() => new FrameReader().push(header), (err) => err instanceof WsProtocolError && err.code === 1009);
  // Exactly the bound passes.
  const at = new FrameReader().push(serverFrame(0x2, new Uint8Array(MAX_MESSAGE_BYTES)));
  assert.equal(at[0].data.length, MAX_MESSAGE_BYTES);
  // Fragments count together: the one that goes past is refused at its header.
  const small = new FrameReader(100);
  assert.deepEqual(small.push(serverFrame(0x2, new Uint8Array(60), { fin: false })), []);
  assert.throws(() => small.push(serverFrame(0x0, new Uint8Array(0), { lengthOverride: 41 })), (err) => err.code === 1009);
  // A 2^63-1 length is refused the same way, not held.
  assert.throws(
    () => new FrameReader().push(Uint8Array.of(0x82, 0x7f, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)),
    (err) => err.code === 1009,
  );
  // Control frames do not count against it, and the connection tells the server 1009.
  const conn = new ClientConnection({ mask: () => MASK, maxMessageBytes: 10 });
  const got = conn.receive(serverFrame(0x1, new Uint8Array(0), { lengthOverride: 11 }));
  const told = got.write[0].subarray(6).map((b, i) => b ^ MASK[i % 4]);
  assert.equal((told[0] << 8) | told[1], 1009);
  assert.equal(got.closed.code, 1006);
});

test("the upgrade request has the headers of section 4.1 and refuses a line break", () => {
  const text = new TextDecoder().decode(
    encodeUpgradeRequest({ target: "/socket?x=1", host: "h.localhost:4433", origin: "https://h.localhost:4433", key: "dGhlIHNhbXBsZSBub25jZQ==", protocols: ["chat", "superchat"], cookie: "sid=1" }),
  );
  assert.equal(
    text,
    "GET /socket?x=1 HTTP/1.1\r\nHost: h.localhost:4433\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: https://h.localhost:4433\r\n" +
      "Sec-WebSocket-Protocol: chat, superchat\r\nCookie: sid=1\r\n\r\n",
  );
  const base = { target: "/", host: "h", origin: "https://h", key: "k", protocols: [] };
  assert.throws(() => encodeUpgradeRequest({ ...base, cookie: "a=1\r\nX: y" }), WsProtocolError);
  assert.throws(() => encodeUpgradeRequest({ ...base, target: "/a b" }), WsProtocolError);
  assert.throws(() => encodeUpgradeRequest({ ...base, target: "http://elsewhere/" }), WsProtocolError);
});

test("the answer's head is read up to its blank line, bounded, and checked as section 4.1 asks", async () => {
  // Section 1.3's example key and accept value.
  assert.equal(await acceptFor("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
  const answer = (lines) => ascii(`${lines.join("\r\n")}\r\n\r\n`);
  const good = [
    "HTTP/1.1 101 Switching Protocols",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
    "Sec-WebSocket-Protocol: chat",
  ];
  const bytes = Uint8Array.from([...answer(good), 0x81, 0x00]);
  assert.equal(readUpgradeResponse(bytes.subarray(0, 20)), undefined);
  const head = readUpgradeResponse(bytes);
  assert.equal(head.status, 101);
  assert.equal(head.length, bytes.length - 2, "the first frame follows the head");
  const key = "dGhlIHNhbXBsZSBub25jZQ==";
  assert.equal(await checkUpgradeResponse(head, key, ["superchat", "chat"]), "chat");
  const wrong = async (lines, protocols = ["chat"]) =>
    assert.rejects(checkUpgradeResponse(readUpgradeResponse(answer(lines)), key, protocols), WsProtocolError, lines.join("|"));
  await wrong(["HTTP/1.1 200 OK", ...good.slice(1)]);
  await wrong([good[0], "Upgrade: h2c", ...good.slice(2)]);
  await wrong([good[0], good[1], "Connection: keep-alive", ...good.slice(3)]);
  await wrong([...good.slice(0, 3), "Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=", good[4]]);
  await wrong([...good, "Sec-WebSocket-Extensions: permessage-deflate"]);
  await wrong(good.slice(0, 4), ["chat"]);
  await wrong(good, ["superchat"]);
  await wrong(good, []);
  assert.throws(() => readUpgradeResponse(ascii("SSH-2.0-x\r\n\r\n")), WsProtocolError);
  assert.throws(() => readUpgradeResponse(new Uint8Array(MAX_HANDSHAKE_BYTES).fill(0x41)), WsProtocolError);
});

test("against the ws package's server: the handshake is accepted, and frames cross both ways", async () => {
  const server = createServer();
  const wss = new WebSocketServer({ server, handleProtocols: () => "v1" });
  const received = [];
  wss.on("connection", (ws) => {
    ws.on("message", (data, isBinary) => {
      received.push(isBinary ? [...data] : data.toString());
      if (!isBinary && data.toString() === "close") ws.close(4002, "as asked");
      else ws.send(data, { binary: isBinary });
    });
    ws.ping("p");
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    const socket = net.connect(server.address().port, "127.0.0.1");
    const key = Buffer.from(createHash("sha256").update("k").digest()).subarray(0, 16).toString("base64");
    socket.write(encodeUpgradeRequest({ target: "/", host: "x", origin: "https://x", key, protocols: ["v1"] }));
    let held = new Uint8Array(0);
    let head;
    const conn = new ClientConnection();
    const out = { messages: [], closed: undefined };
    const done = new Promise((resolve, reject) => {
      socket.on("error", reject);
      socket.on("close", resolve);
      socket.on("data", async (chunk) => {
        held = Uint8Array.from([...held, ...chunk]);
        if (head === undefined) {
          head = readUpgradeResponse(held);
          if (head === undefined) return;
          assert.equal(await checkUpgradeResponse(head, key, ["v1"]), "v1");
          socket.write(conn.message("text ✓"));
          socket.write(conn.message(Uint8Array.of(1, 2, 3)));
          socket.write(conn.message("close"));
          held = held.subarray(head.length);
        }
        const got = conn.receive(held);
        held = new Uint8Array(0);
        out.messages.push(...got.messages);
        for (const frame of got.write) socket.write(frame);
        if (got.closed) {
          out.closed = got.closed;
          socket.end();
        }
      });
    });
    await done;
    assert.deepEqual(received, ["text ✓", [1, 2, 3], "close"]);
    assert.deepEqual(out.messages, ["text ✓", Uint8Array.of(1, 2, 3)]);
    assert.deepEqual(out.closed, { code: 4002, reason: "as asked", wasClean: true });
  } finally {
    wss.close();
    server.close();
  }
});
