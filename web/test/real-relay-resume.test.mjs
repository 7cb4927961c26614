// A resumable session of the browser player (src/resumable.ts) against the real
// thing, across a relay that dies: `blindrelayd` on a fixed loopback port with its
// certificate in a state folder, and `blindrelay host` forwarding to a TCP service
// in this test. Mid-transfer the relay is killed (SIGKILL) and started again on
// the same port with the same certificate; the player dials it again over
// WebSocket, resumes the session, and the transfer finishes byte-exact.
//
// The binaries are those of BLINDRELAY_BIN_DIR, or this workspace's debug build.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import dgram from "node:dgram";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import tls from "node:tls";

import { WebSocket } from "ws";

import { concat, equalBytes } from "../build/bytes.js";
import { parseKey } from "../build/keys.js";
import { generateSecretKey } from "../build/noise.js";
import { connectPlayer, relayWebSocketUrl } from "../build/session.js";
import { Processes, binDir } from "../../tests/browser/support.mjs";
import { startService } from "./support/service.mjs";

/** The service's answer: several MiB, more than the host's 4 MiB replay window past what the test reads before the kill. */
const RESPONSE_LEN = 12 * 1024 * 1024 + 4321;
/** What the player reads before the relay is killed. */
const BEFORE_KILL = 2 * 1024 * 1024;
/** For each step that waits on the processes. */
const STEP_MS = 20_000;

let dir;
let processes;
let relayArgs;
let relay;
let relayUrl;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "blindrelay-web-resume-"));
  processes = new Processes(dir);
  const port = await freePort();
  // The state folder keeps the self-signed certificate, so the restarted relay has the same pin and URL.
  relayArgs = ["--listen", `127.0.0.1:${port}`, "--state-dir", path.join(dir, "state")];
  relay = processes.start("relay", "blindrelayd", relayArgs);
  relayUrl = parseRelayUrl(await relay.waitForLine(/^relay url: (\S+)$/, STEP_MS));
});

after(async () => {
  await processes?.closeAll();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test("a transfer goes on, byte-exact, across a relay killed and started again", { timeout: 90_000 }, async () => {
  const service = await startService(processes);
  const host = await startHost(service.addr);

  const session = await connectPlayer({
    url: relayWebSocketUrl(relayUrl.host, relayUrl.port),
    hostId: parseKey(host.hostId),
    playerSecret: generateSecretKey(),
    // A new TLS connection, checked against the pin, for the first stream and for every resume attempt.
    openWebSocket: async (url) => {
      assert.equal(url, relayWebSocketUrl(relayUrl.host, relayUrl.port));
      const socket = await pinnedTls(relayUrl);
      return new WebSocket(url, { createConnection: () => socket });
    },
  });
  assert.equal(session.resumable, true, "the host agrees to a resumable session");

  const request = concat(u32(RESPONSE_LEN), randomBytes(50_000));
  const writer = session.writable.getWriter();
  await writer.write(request);
  await writer.close();
  const reader = session.readable.getReader();
  const chunks = [];
  let received = 0;
  while (received < BEFORE_KILL) {
    const { value, done } = await reader.read();
    assert.ok(!done, "the response goes on past the kill");
    chunks.push(value);
    received += value.length;
  }

  // The host sends at most its replay window past what the player acknowledged
  // (what it read), so most of the response is still to come.
  await relay.kill();
  relay = processes.start("relay-restarted", "blindrelayd", relayArgs);
  assert.equal(await relay.waitForLine(/^relay url: (\S+)$/, STEP_MS), relayUrl.text, "the same relay URL and pin after the restart");
  // The application reads nothing more until the session has resumed: what arrived
  // before the kill and was not read must count as received, and the host must
  // not send it again.
  await until(() => session.resumes >= 1, "the session to resume");

  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    chunks.push(value);
  }
  const response = concat(...chunks);
  const served = await service.done;
  assert.ok(equalBytes(served.request, request), "the service got the request, byte for byte");
  assert.equal(response.length, RESPONSE_LEN);
  assert.ok(equalBytes(response, served.response), "the response arrived whole and in order");
  assert.ok(session.resumes >= 1, "the session moved to a new stream");
  // The host resumed it too, rather than serving a new session.
  await host.proc.waitForLog(/session resumed/, STEP_MS);
});

/** A port free for TCP and UDP on loopback, outside the kernel's range for outgoing connections, kept across the restart. */
async function freePort() {
  for (let i = 0; i < 200; i++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    const ok = await new Promise((resolve) => {
      const server = net.createServer();
      server.once("error", () => resolve(false));
      server.listen(port, "127.0.0.1", () => {
        const udp = dgram.createSocket("udp4");
        udp.once("error", () => server.close(() => resolve(false)));
        udp.bind(port, "127.0.0.1", () => udp.close(() => server.close(() => resolve(true))));
      });
    });
    if (ok) return port;
  }
  throw new Error("no free port");
}

/** `blindrelay://HOST:PORT?pin=PIN` as printed by `blindrelayd` for a loopback address. */
function parseRelayUrl(text) {
  const m = /^blindrelay:\/\/(\d+\.\d+\.\d+\.\d+):(\d+)\?pin=([a-z2-7]{52})$/.exec(text);
  assert.ok(m, `an IPv4 relay URL with a pin: ${text}`);
  return { text, host: m[1], port: Number(m[2]), pin: parseKey(m[3]) };
}

/** TLS to the relay as a browser's `wss:` (ALPN http/1.1), its certificate checked against the pin before anything is sent. */
function pinnedTls({ host, port, pin }) {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host, port, ALPNProtocols: ["http/1.1"], rejectUnauthorized: false });
    socket.once("secureConnect", () => {
      const digest = createHash("sha256").update(socket.getPeerCertificate().raw).digest();
      if (!equalBytes(digest, pin)) {
        socket.destroy();
        reject(new Error("the relay's certificate does not match the relay URL's pin"));
      } else {
        resolve(socket);
      }
    });
    socket.once("error", reject);
  });
}

/** Runs `blindrelay host` over QUIC; resolves once it is registered. */
async function startHost(forward) {
  const key = path.join(dir, "host.key");
  execFileSync(path.join(binDir(), "blindrelay"), ["keygen", "--out", key], { encoding: "utf8", timeout: STEP_MS });
  const args = ["host", "--key", key, "--relay", relayUrl.text, "--forward", forward, "--transport", "quic"];
  const proc = processes.start("host", "blindrelay", args, { rustLog: "info" });
  const hostId = await proc.waitForLine(/^host id: (\S+)$/, STEP_MS);
  await proc.waitForLine(/^relay: registered$/, STEP_MS);
  return { proc, hostId };
}

/** Polls `check` every 20 ms until it holds, for at most STEP_MS. */
async function until(check, what) {
  const deadline = Date.now() + STEP_MS;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`waited ${STEP_MS} ms for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function u32(value) {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, value);
  return out;
}
