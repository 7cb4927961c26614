// The page in a pool of relays (PROTOCOL.md section 18.4): the walk of src/pool.ts
// branch by branch, and `RelayTransports` following a relay's Redirect over
// WebSocket stand-ins: to the members the page's relay lists only, with the count
// in Connect, at most two hops, the member remembered for the next session and
// left when it cannot be reached.
import assert from "node:assert/strict";
import { test } from "node:test";

import { webCryptoAead } from "../build/aead.js";
import { concat, fromHex } from "../build/bytes.js";
import { ErrorCode } from "../build/codes.js";
import { SessionError } from "../build/link.js";
import { publicKey } from "../build/noise.js";
import { MAX_REDIRECTS, PoolWalk } from "../build/pool.js";
import { RelayTransports } from "../build/transport.js";
import { SocketPair, TestHost } from "./support/host.mjs";

const PLAYER = new Uint8Array(32).fill(0x11);
const HOST = new Uint8Array(32).fill(0x22);
const aead = webCryptoAead(globalThis.crypto.subtle);
const CONNECTED = fromHex("002e0111" + "0000000000000009" + "0".repeat(72));
const ORIGIN = "https://h.localhost:4433";
const OWN = "wss://h.localhost:4433/blindrelay/1";
const MEMBERS = ["127.0.0.1:4434", "127.0.0.1:4435", "127.0.0.1:4436"];
const INFO = { url: `${ORIGIN}/blindrelay/1`, serverCertificateHashes: [{ algorithm: "sha-256", value: "AAECAw==" }], members: MEMBERS };

const redirected = (members) => new SessionError("redirected", "redirected", undefined, members);
const offline = () => new SessionError("relay-refused", "host offline", ErrorCode.HostOffline);
const lost = () => new SessionError("connection", "unreachable");

/** `Redirect { members }` as a relay writes it (section 18.3). */
function redirect(members) {
  const names = members.map((m) => new TextEncoder().encode(m));
  const body = concat(Uint8Array.of(0x01, 0x07, names.length), ...names.map((n) => concat(Uint8Array.of(n.length), n)));
  return concat(Uint8Array.of(body.length >> 8, body.length & 0xff), body);
}

test("the walk asks its own relay, then the members a redirect names that the page may reach, once each", () => {
  const walk = new PoolWalk();
  assert.deepEqual(walk.next(), { member: undefined, redirects: 0 });
  assert.equal(walk.failed(redirected(["evil.example:443", MEMBERS[0], MEMBERS[1]]), MEMBERS), undefined);
  assert.deepEqual(walk.next(), { member: MEMBERS[0], redirects: 1 }, "a member the relay does not list is not asked");
  // The owner cannot be reached: the next in rank.
  assert.equal(walk.failed(lost(), MEMBERS), undefined);
  assert.deepEqual(walk.next(), { member: MEMBERS[1], redirects: 1 });
  assert.equal(walk.failed(lost(), MEMBERS), undefined);
  assert.equal(walk.next(), undefined);
  assert.equal(walk.end().kind, "connection");
});

test("redirects are followed at most twice, and never back to a relay already asked", () => {
  const walk = new PoolWalk();
  walk.next();
  walk.failed(redirected([MEMBERS[0]]), MEMBERS);
  assert.deepEqual(walk.next(), { member: MEMBERS[0], redirects: 1 });
  walk.failed(redirected([MEMBERS[0], MEMBERS[1]]), MEMBERS);
  assert.deepEqual(walk.next(), { member: MEMBERS[1], redirects: 2 }, "the member that redirected is not asked again");
  assert.equal(walk.failed(redirected([MEMBERS[2]]), MEMBERS), undefined);
  assert.equal(walk.next(), undefined, `a redirect past ${MAX_REDIRECTS} is not followed`);
  assert.equal(walk.end().kind, "redirected");
});

test("an owner that does not hold the host sends the walk to the members after it, each answering for itself", () => {
  const walk = new PoolWalk();
  walk.next();
  walk.failed(redirected(MEMBERS), MEMBERS);
  walk.next();
  assert.equal(walk.failed(offline(), MEMBERS), undefined);
  assert.deepEqual(walk.next(), { member: MEMBERS[1], redirects: MAX_REDIRECTS });
  assert.equal(walk.failed(offline(), MEMBERS), undefined);
  assert.deepEqual(walk.next(), { member: MEMBERS[2], redirects: MAX_REDIRECTS });
  // The last one named: its refusal is the answer.
  assert.equal(walk.failed(offline(), MEMBERS)?.code, ErrorCode.HostOffline);
  // At the page's own relay, with nothing queued, a refusal is the answer.
  const alone = new PoolWalk();
  alone.next();
  assert.equal(alone.failed(offline(), []).code, ErrorCode.HostOffline);
  const refused = new SessionError("not-authorized", "no");
  assert.equal(new PoolWalk().failed(refused, MEMBERS), refused);
});

test("a walk starts at the member that served the last session, then the page's own relay", () => {
  const walk = new PoolWalk(MEMBERS[1]);
  assert.deepEqual(walk.next(), { member: MEMBERS[1], redirects: 0 });
  walk.failed(lost(), MEMBERS);
  assert.deepEqual(walk.next(), { member: undefined, redirects: 0 });
});

/** RelayTransports over WebSocket stand-ins: each socket the page opens, by URL, for the test to answer. */
function pooledTransports() {
  const sockets = [];
  const unreachable = new Set();
  const transports = new RelayTransports({ origin: ORIGIN, setting: "websocket", fetchInfo: async () => INFO });
  const connect = () =>
    transports.connect({
      hostId: publicKey(HOST),
      playerSecret: PLAYER,
      aead,
      keepAliveMs: 0,
      openWebSocket: (url) => {
        if (unreachable.has(url)) throw new Error(`nothing at ${url}`);
        const pair = new SocketPair();
        sockets.push({ url, far: pair.far });
        return pair.player;
      },
    });
  const socket = async (n) => {
    while (sockets.length <= n) await new Promise((r) => setTimeout(r, 5));
    return sockets[n];
  };
  return { transports, connect, socket, sockets, unreachable };
}

/** Answers a Connect with `redirects` on `far` as a relay that serves it, and a host that welcomes the player. */
async function serve(far, redirects) {
  const connect = await far.takeStream(redirects === 0 ? 36 : 37);
  if (redirects !== 0) assert.equal(connect[36], redirects, "Connect carries the redirect count");
  const host = new TestHost(HOST, aead);
  far.sendStream(concat(CONNECTED, await host.respond(await far.takeMessage()), await host.verdict()));
}

test("the page's sessions follow a redirect to a member the relay lists, keep their origin, and stay with it", async () => {
  const { transports, connect, socket, sockets, unreachable } = pooledTransports();
  const first = connect();
  const entry = await socket(0);
  assert.equal(entry.url, OWN);
  await entry.far.takeStream(36);
  entry.far.sendStream(redirect(["evil.example:443", MEMBERS[0]]));
  const owner = await socket(1);
  assert.equal(owner.url, `wss://${MEMBERS[0]}/blindrelay/1`, "to the listed member, not the other");
  await serve(owner.far, 1);
  (await first).abort();
  assert.equal(transports.poolMember(), MEMBERS[0]);

  // The next session goes to the owner straight away, as a first request there.
  const second = connect();
  const again = await socket(2);
  assert.equal(again.url, `wss://${MEMBERS[0]}/blindrelay/1`);
  await serve(again.far, 0);
  (await second).abort();

  // The owner is gone (it left the pool): back to the page's relay, which redirects to the new owner.
  unreachable.add(`wss://${MEMBERS[0]}/blindrelay/1`);
  const third = connect();
  const back = await socket(3);
  assert.equal(back.url, OWN);
  await back.far.takeStream(36);
  back.far.sendStream(redirect([MEMBERS[1]]));
  const next = await socket(4);
  assert.equal(next.url, `wss://${MEMBERS[1]}/blindrelay/1`);
  await serve(next.far, 1);
  (await third).abort();
  assert.equal(transports.poolMember(), MEMBERS[1]);
  assert.equal(sockets.length, 5);
});

test("relays that keep redirecting get two hops, then the page says where the host is", async () => {
  const { connect, socket, sockets } = pooledTransports();
  const session = connect();
  for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
    const relay = await socket(hop);
    const connectBytes = await relay.far.takeStream(hop === 0 ? 36 : 37);
    if (hop > 0) assert.equal(connectBytes[36], hop);
    relay.far.sendStream(redirect([MEMBERS[hop]]));
  }
  await assert.rejects(session, { name: "SessionError", kind: "redirected" });
  assert.deepEqual(
    sockets.map((s) => s.url),
    [OWN, `wss://${MEMBERS[0]}/blindrelay/1`, `wss://${MEMBERS[1]}/blindrelay/1`],
  );
});

test("a redirect to members the relay does not list is reported, not followed", async () => {
  const { connect, socket, sockets } = pooledTransports();
  const session = connect();
  const entry = await socket(0);
  await entry.far.takeStream(36);
  entry.far.sendStream(redirect(["evil.example:443"]));
  await assert.rejects(session, { name: "SessionError", kind: "redirected" });
  assert.equal(sockets.length, 1);
});

test("a resume attempt follows one redirect at a time, and goes back to the page's relay when a member fails it", async () => {
  const { transports } = pooledTransports();
  const reroute = transports.rerouter(MEMBERS[0], 1);
  assert.deepEqual(await reroute(), { url: `wss://${MEMBERS[0]}/blindrelay/1`, redirects: 1 }, "where the session was set up");
  // The host moved on: the member redirects the attempt.
  assert.deepEqual(await reroute(redirected([MEMBERS[1]])), { url: `wss://${MEMBERS[1]}/blindrelay/1`, redirects: 2 });
  assert.equal(transports.poolMember(), MEMBERS[1]);
  // Past the limit, or to a member the relay does not list: the page's own relay, afresh.
  assert.deepEqual(await reroute(redirected([MEMBERS[2]])), { url: OWN, redirects: 0 });
  assert.deepEqual(await reroute(redirected(["evil.example:443"])), { url: OWN, redirects: 0 });
  assert.equal(transports.poolMember(), undefined);
  // From the page's relay one hop; a member that cannot be reached, or no longer holds the host, sends it back.
  assert.deepEqual(await reroute(redirected([MEMBERS[2]])), { url: `wss://${MEMBERS[2]}/blindrelay/1`, redirects: 1 });
  assert.deepEqual(await reroute(lost()), { url: OWN, redirects: 0 });
  await reroute(redirected([MEMBERS[2]]));
  assert.deepEqual(await reroute(offline()), { url: OWN, redirects: 0 });
});
