// The tunnel's HTTP/1.1: requests written byte for byte, responses read with
// http-parser-js (lengths, chunks, bodies to the end of the session, HEAD and
// 304 without bodies, refusals of what cannot be written or read), and the pool
// of sessions against a real HTTP server in node, each "session" a TCP
// connection to it: keep-alive reuse, a Range request's 206, a fresh session for
// a request that finds a kept one gone, and a cancelled body that closes its
// session rather than leaving the rest of the response on it.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { createServer } from "node:http";
import net from "node:net";
import { test } from "node:test";

import { HttpError, ResponseReader, encodeRequest } from "../build/http1.js";
import { Tunnel } from "../build/tunnel.js";

const text = (bytes) => Buffer.from(bytes).toString("latin1");
const bytes = (s) => new Uint8Array(Buffer.from(s, "latin1"));

test("a request is HTTP/1.1 with the origin's Host, no hop-by-hop headers and a length for its body", () => {
  const out = encodeRequest({
    method: "POST",
    target: "/api/items?x=1",
    host: "abc.localhost:8443",
    headers: [
      ["Range", "bytes=0-"],
      ["Connection", "close"],
      ["Host", "elsewhere"],
      ["Content-Length", "99"],
      ["Accept-Encoding", "gzip"],
      ["x-token", "t"],
    ],
    body: bytes("hello"),
  });
  assert.equal(
    text(out),
    "POST /api/items?x=1 HTTP/1.1\r\nHost: abc.localhost:8443\r\nRange: bytes=0-\r\nx-token: t\r\n" +
      "Accept-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello",
  );
  assert.equal(
    text(encodeRequest({ method: "GET", target: "/", host: "h", headers: [] })),
    "GET / HTTP/1.1\r\nHost: h\r\nAccept-Encoding: identity\r\n\r\n",
  );
});

test("a request that would smuggle a second one into the session is refused", () => {
  const base = { method: "GET", target: "/", host: "h", headers: [] };
  assert.throws(() => encodeRequest({ ...base, headers: [["x", "a\r\nGET /evil HTTP/1.1"]] }), HttpError);
  assert.throws(() => encodeRequest({ ...base, headers: [["bad name", "a"]] }), HttpError);
  assert.throws(() => encodeRequest({ ...base, method: "GET /x" }), HttpError);
  assert.throws(() => encodeRequest({ ...base, target: "/a b" }), HttpError);
  assert.throws(() => encodeRequest({ ...base, target: "http://other/" }), HttpError);
  assert.throws(() => encodeRequest({ ...base, host: "h\r\nx: y" }), HttpError);
});

/** Feeds `wire` to a reader one byte at a time; returns head, body text and flags. */
function readAll(method, wire, { eof = false, step = 1 } = {}) {
  const reader = new ResponseReader(method);
  const events = [];
  const data = bytes(wire);
  for (let at = 0; at < data.length; at += step) events.push(...reader.push(data.subarray(at, at + step)));
  if (eof) events.push(...reader.finish());
  const head = events.find((e) => e.type === "head")?.head;
  const body = events.filter((e) => e.type === "body").map((e) => text(e.data)).join("");
  return { head, body, ended: events.some((e) => e.type === "end"), reusable: reader.reusable };
}

test("responses are read by length, by chunks and to the end of the session, a byte at a time", () => {
  const sized = readAll("GET", "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-4/10\r\nContent-Length: 5\r\n\r\nhello");
  assert.equal(sized.head.status, 206);
  assert.equal(sized.head.statusText, "Partial Content");
  assert.deepEqual(sized.head.headers, [
    ["Content-Range", "bytes 0-4/10"],
    ["Content-Length", "5"],
  ]);
  assert.equal(sized.body, "hello");
  assert.ok(sized.ended && sized.reusable);

  const chunked = readAll("GET", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
  assert.equal(chunked.body, "abcde");
  assert.ok(chunked.ended && chunked.reusable);

  const toEnd = readAll("GET", "HTTP/1.0 200 OK\r\n\r\nall of it", { eof: true, step: 4 });
  assert.equal(toEnd.body, "all of it");
  assert.ok(toEnd.ended);
  assert.equal(toEnd.reusable, false, "a body ended by the connection leaves nothing to reuse");

  const closing = readAll("GET", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok");
  assert.ok(closing.ended);
  assert.equal(closing.reusable, false);
});

test("HEAD, 204 and 304 end at their headers even with a Content-Length", () => {
  const head = readAll("HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
  assert.ok(head.ended && head.reusable);
  assert.equal(head.body, "");
  for (const status of ["204 No Content", "304 Not Modified"]) {
    const r = readAll("GET", `HTTP/1.1 ${status}\r\n\r\n`);
    assert.ok(r.ended && r.reusable, status);
  }
});

test("a malformed or cut-short response is an error, and bytes after a response spoil the session", () => {
  assert.throws(() => readAll("GET", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"), HttpError);
  assert.throws(() => readAll("GET", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc", { eof: true }), /inside the host's HTTP response/);
  assert.throws(() => readAll("GET", "", { eof: true }), /before the host's HTTP response/);
  const extra = readAll("GET", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200", { step: 100 });
  assert.ok(extra.ended);
  assert.equal(extra.reusable, false);
});

// ---------------------------------------------------------------------------
// The pool, against node's HTTP server; a "session" is a TCP connection to it.
// ---------------------------------------------------------------------------

const FILE = new Uint8Array(3 * 1024 * 1024).map((_, i) => (i * 7 + (i >> 12)) & 0xff);

async function startServer() {
  const sockets = new Set();
  const server = createServer((req, res) => {
    if (req.url === "/file") {
      const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
      if (m) {
        const start = Number(m[1]);
        const end = m[2] ? Number(m[2]) : FILE.length - 1;
        res.writeHead(206, { "Content-Range": `bytes ${start}-${end}/${FILE.length}`, "Content-Length": end - start + 1 });
        res.end(FILE.subarray(start, end + 1));
      } else {
        res.writeHead(200, { "Content-Length": FILE.length });
        res.end(FILE);
      }
      return;
    }
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      const out = JSON.stringify({ method: req.method, url: req.url, body, host: req.headers.host, ae: req.headers["accept-encoding"] });
      res.writeHead(200, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(out) });
      res.end(out);
    });
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, sockets, port: server.address().port };
}

/** A PlayerSession stand-in over a TCP connection: the same streams, no Noise. */
function socketSession(port, counts) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1", () => {
      counts.open++;
      socket.on("close", () => counts.closed++);
      const readable = new ReadableStream({
        start(controller) {
          socket.on("data", (d) => controller.enqueue(new Uint8Array(d)));
          socket.on("end", () => controller.close());
          socket.on("error", (e) => controller.error(e));
        },
      });
      const writable = new WritableStream({
        write: (chunk) => new Promise((done) => socket.write(chunk, done)),
        close: () => new Promise((done) => socket.end(done)),
      });
      resolve({ readable, writable, abort: () => socket.destroy() });
    });
    socket.on("error", reject);
  });
}

async function readBody(stream) {
  const parts = [];
  for await (const part of stream) parts.push(part);
  return Buffer.concat(parts);
}

const sha = (b) => createHash("sha256").update(b).digest("hex");

test("the pool reuses kept sessions, streams a 206 for a Range and retries a request whose kept session is gone", async () => {
  const { server, sockets, port } = await startServer();
  const counts = { open: 0, closed: 0 };
  const tunnel = new Tunnel({ open: () => socketSession(port, counts) });
  try {
    const get = (target, headers = []) => tunnel.fetch({ method: "GET", target, host: "h.localhost", headers });
    const first = await get("/a");
    assert.equal(first.status, 200);
    assert.deepEqual(JSON.parse(await readBody(first.body)), { method: "GET", url: "/a", body: "", host: "h.localhost", ae: "identity" });
    const posted = await tunnel.fetch({ method: "POST", target: "/b", host: "h.localhost", headers: [], body: new TextEncoder().encode("form") });
    assert.equal(JSON.parse(await readBody(posted.body)).body, "form");
    assert.equal(counts.open, 1, "the second request reused the first session");
    assert.equal(tunnel.stats.reused, 1);

    const range = await get("/file", [["Range", "bytes=1000-"]]);
    assert.equal(range.status, 206);
    assert.deepEqual(range.headers.find(([n]) => n === "Content-Range"), ["Content-Range", `bytes 1000-${FILE.length - 1}/${FILE.length}`]);
    assert.equal(sha(await readBody(range.body)), sha(FILE.subarray(1000)));
    const whole = await get("/file");
    assert.equal(sha(await readBody(whole.body)), sha(FILE));
    assert.equal(counts.open, 1);

    // The service ends its idle connections (a keep-alive timeout); the next
    // request goes out on the kept session, finds it gone, and is sent again.
    for (const s of sockets) s.destroy();
    await waitFor(() => counts.closed === 1);
    const again = await get("/c");
    assert.equal(JSON.parse(await readBody(again.body)).url, "/c");
    assert.equal(counts.open, 2);
  } finally {
    tunnel.closeIdle();
    server.closeAllConnections();
    server.close();
  }
});

test("a body the page stops reading closes its session; six sessions are kept at most", async () => {
  const { server, port } = await startServer();
  const counts = { open: 0, closed: 0 };
  const tunnel = new Tunnel({ open: () => socketSession(port, counts), maxKept: 6 });
  try {
    const big = await tunnel.fetch({ method: "GET", target: "/file", host: "h", headers: [] });
    const reader = big.body.getReader();
    assert.ok((await reader.read()).value.length > 0);
    await reader.cancel();
    await waitFor(() => counts.closed === 1);
    const next = await tunnel.fetch({ method: "GET", target: "/n", host: "h", headers: [] });
    await readBody(next.body);
    assert.equal(counts.open, 2, "the cancelled response's session was not reused");

    // Eight at once: eight sessions, six kept afterwards, two closed.
    const many = await Promise.all(
      Array.from({ length: 8 }, (_, i) => tunnel.fetch({ method: "GET", target: `/m${i}`, host: "h", headers: [] })),
    );
    assert.equal(counts.open, 9);
    await Promise.all(many.map((r) => readBody(r.body)));
    await waitFor(() => counts.closed === 3);
    await Promise.all(
      Array.from({ length: 6 }, (_, i) => tunnel.fetch({ method: "GET", target: `/k${i}`, host: "h", headers: [] }).then((r) => readBody(r.body))),
    );
    assert.equal(counts.open, 9, "six requests at once found six kept sessions");
  } finally {
    tunnel.closeIdle();
    server.closeAllConnections();
    server.close();
  }
});

async function waitFor(condition, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
