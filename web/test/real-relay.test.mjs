// The player of src/session.ts against the real relay and host: `blindrelayd`, and
// `blindrelay host` registered over QUIC and forwarding to a TCP service in this
// test. The player reaches the relay as a browser would (WebSocket over TLS with
// ALPN http/1.1) and verifies it by the pin of its relay URL, so each session is a
// mixed pair: WebSocket on the player's side, QUIC on the host's.
//
// The binaries are those of BLINDRELAY_BIN_DIR, or this workspace's debug build
// (`cargo build --locked --bin blindrelayd --bin blindrelay`).
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import tls from "node:tls";

import { WebSocket } from "ws";

import { concat, equalBytes } from "../build/bytes.js";
import { ErrorCode } from "../build/codes.js";
import { keyText, parseKey } from "../build/keys.js";
import { generateSecretKey, publicKey } from "../build/noise.js";
import { connectPlayer, relayWebSocketUrl } from "../build/session.js";
import { Processes, binDir } from "../../tests/browser/support.mjs";
import { startService } from "./support/service.mjs";

/** What the service answers: more than 256 full Noise frames, as the task of a media server. */
const RESPONSE_LEN = 16 * 1024 * 1024 + 12_345;
/** What the player sends: several frames, and not a multiple of one. */
const REQUEST_LEN = 300_001;
/** For each step that waits on the processes; the whole file stays well under 30 s. */
const STEP_MS = 15_000;

let dir;
let processes;
let relay;
let relayUrl;
let admin;
let service;
let openHost;
let pickyHost;

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "blindrelay-web-"));
  processes = new Processes(dir);
  try {
    relay = processes.start("relay", "blindrelayd", ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    relayUrl = parseRelayUrl(await relay.waitForLine(/^relay url: (\S+)$/));
    admin = await relay.waitForLine(/^admin: (\S+)$/);
    service = await startService(processes);

    // A host that serves every player, and one that serves only a key this test's
    // players never hold.
    openHost = await startHost("host-open", []);
    const stranger = keyText(publicKey(generateSecretKey()));
    pickyHost = await startHost("host-picky", [stranger]);
  } catch (err) {
    await processes.closeAll();
    throw err;
  }
});

after(async () => {
  await processes?.closeAll();
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

test("a request and a 16 MiB response cross a mixed pair byte for byte, and both ends close cleanly", { timeout: STEP_MS }, async () => {
  const request = concat(u32(RESPONSE_LEN), randomBytes(REQUEST_LEN - 4));
  const session = await connectPlayer({
    url: relayWebSocketUrl(relayUrl.host, relayUrl.port),
    hostId: parseKey(openHost.hostId),
    playerSecret: generateSecretKey(),
    openWebSocket: await pinnedWebSocket(relayUrl),
    keepAliveMs: 0,
  });
  assert.equal(session.resumable, true, "the host of today agrees to a resumable session");
  const writer = session.writable.getWriter();
  // Read while writing, as a page would: the relay's windows are finite, and neither
  // direction may wait for the other to finish.
  const reading = readAll(session.readable);
  await writer.write(request);
  await writer.close();
  const response = await reading;

  const served = await service.done;
  assert.ok(equalBytes(served.request, request), "the service got the player's request, byte for byte");
  assert.equal(response.length, served.response.length);
  assert.ok(equalBytes(response, served.response), "the player got the service's response, byte for byte");

  // The host saw both directions end with their authenticated ends: a truncation or
  // an error would log "session cut short" or "session ended with an error" instead.
  // Its counts are from the session to the service and back.
  const ended = await openHost.proc.waitForLog(/session ended .*(to_local=\d+ from_local=\d+)/, STEP_MS);
  assert.equal(ended, `to_local=${REQUEST_LEN} from_local=${RESPONSE_LEN}`);
  // The host's side came over QUIC...
  await openHost.proc.waitForLog(/session open .*path=relayed\/quic/, STEP_MS);
  // ...and the relay counts the pair as a WebSocket player and a QUIC host, and
  // holds no session once both ends are done.
  const metrics = await until(async () => {
    const text = await scrape(admin);
    return metric(text, "blindrelay_sessions_active") === 0 ? text : undefined;
  }, "the relay to close the session");
  assert.equal(metric(metrics, 'blindrelay_session_sides_total{side="player",transport="websocket"}'), 1);
  assert.equal(metric(metrics, 'blindrelay_session_sides_total{side="host",transport="quic"}'), 1);
  assert.equal(metric(metrics, 'blindrelay_session_sides_total{side="player",transport="quic"}'), 0);
});

test("a host that does not serve the player's key tells it so", { timeout: STEP_MS }, async () => {
  await assert.rejects(
    connectPlayer({
      url: relayWebSocketUrl(relayUrl.host, relayUrl.port),
      hostId: parseKey(pickyHost.hostId),
      playerSecret: generateSecretKey(),
      openWebSocket: await pinnedWebSocket(relayUrl),
      keepAliveMs: 0,
    }),
    { name: "SessionError", kind: "not-authorized" },
  );
});

test("a host id nobody registered is refused as host offline by the relay", { timeout: STEP_MS }, async () => {
  await assert.rejects(
    connectPlayer({
      url: relayWebSocketUrl(relayUrl.host, relayUrl.port),
      hostId: publicKey(generateSecretKey()),
      playerSecret: generateSecretKey(),
      openWebSocket: await pinnedWebSocket(relayUrl),
      keepAliveMs: 0,
    }),
    { name: "SessionError", kind: "relay-refused", code: ErrorCode.HostOffline, message: /host offline/ },
  );
});

test("a relay whose certificate does not match the pin gets nothing", { timeout: STEP_MS }, async () => {
  const pin = relayUrl.pin.slice();
  pin[0] ^= 1;
  await assert.rejects(pinnedWebSocket({ ...relayUrl, pin }), /does not match the relay URL's pin/);
});

/** `blindrelay://HOST:PORT?pin=PIN` as printed by `blindrelayd` for a loopback address. */
function parseRelayUrl(text) {
  const m = /^blindrelay:\/\/(\d+\.\d+\.\d+\.\d+):(\d+)\?pin=([a-z2-7]{52})$/.exec(text);
  assert.ok(m, `an IPv4 relay URL with a pin: ${text}`);
  return { text, host: m[1], port: Number(m[2]), pin: parseKey(m[3]) };
}

/**
 * Opens TLS to the relay as a browser would for `wss:` (ALPN `http/1.1`), checks the
 * leaf certificate against the pin (PROTOCOL.md section 4.3) before a byte of the
 * upgrade is sent, and returns an `openWebSocket` for connectPlayer that runs the
 * WebSocket over that very connection. Node checks names only after a chain it
 * trusts, and a pinned relay's certificate is self-signed: so the chain is not
 * checked, and the pin, which names the one certificate, is.
 */
async function pinnedWebSocket({ host, port, pin }) {
  const socket = await new Promise((resolve, reject) => {
    const socket = tls.connect({ host, port, ALPNProtocols: ["http/1.1"], rejectUnauthorized: false });
    socket.once("secureConnect", () => {
      const leaf = socket.getPeerCertificate().raw;
      const digest = createHash("sha256").update(leaf).digest();
      if (!equalBytes(digest, pin)) {
        socket.destroy();
        reject(new Error("the relay's certificate does not match the relay URL's pin"));
      } else if (socket.alpnProtocol !== "http/1.1") {
        socket.destroy();
        reject(new Error(`the relay chose the ALPN ${socket.alpnProtocol}, not http/1.1`));
      } else {
        resolve(socket);
      }
    });
    socket.once("error", reject);
  });
  return (url) => {
    assert.equal(url, relayWebSocketUrl(host, port));
    return new WebSocket(url, { createConnection: () => socket });
  };
}

/** Makes a host key and runs `blindrelay host` on it over QUIC; resolves once it is registered. */
async function startHost(name, authorizedPlayers) {
  const key = path.join(dir, `${name}.key`);
  const printed = execFileSync(path.join(binDir(), "blindrelay"), ["keygen", "--out", key], {
    encoding: "utf8",
    timeout: STEP_MS,
  });
  const keygenId = /^host id: (\S+)$/m.exec(printed)?.[1];
  const args = ["host", "--key", key, "--relay", relayUrl.text, "--forward", service.addr, "--transport", "quic"];
  if (authorizedPlayers.length > 0) {
    const file = path.join(dir, `${name}.players`);
    fs.writeFileSync(file, `# the only player this host serves\n${authorizedPlayers.join("\n")}\n`);
    args.push("--authorized-players", file);
  }
  // Debug for the host's "session ended" line, which says the ends were clean.
  const proc = processes.start(name, "blindrelay", args, { rustLog: "info,blindrelay=debug" });
  const hostId = await proc.waitForLine(/^host id: (\S+)$/, STEP_MS);
  assert.equal(hostId, keygenId, "the host runs as the key keygen made");
  await proc.waitForLine(/^ticket: \S+$/, STEP_MS);
  await proc.waitForLine(/^relay: registered$/, STEP_MS);
  return { proc, hostId };
}

async function readAll(readable) {
  const chunks = [];
  for await (const chunk of readable) chunks.push(chunk);
  return concat(...chunks);
}

function u32(value) {
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, value);
  return out;
}

async function scrape(addr) {
  const res = await fetch(`http://${addr}/metrics`, { signal: AbortSignal.timeout(STEP_MS) });
  assert.equal(res.status, 200);
  return res.text();
}

/** The value of one sample, `name{labels}` exactly as the exposition writes it. */
function metric(text, sample) {
  const line = text.split("\n").find((line) => line.startsWith(`${sample} `));
  assert.ok(line !== undefined, `the relay's metrics have ${sample}`);
  return Number(line.slice(sample.length + 1));
}

/** Polls `check` until it returns something, for at most STEP_MS. */
async function until(check, what) {
  const deadline = Date.now() + STEP_MS;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`waited ${STEP_MS} ms for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
