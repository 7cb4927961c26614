// What a browser gets through the tunnel, in headless Chromium on this machine,
// over WebTransport and over WebSocket in the same run: a 256 MiB fetch through the
// service worker (sustained throughput), time to the response head of small new
// requests, the browser's CPU per GiB (every Chromium process, from /proc), and
// AES-GCM in the page: WebCrypto against @noble/ciphers. Same setup as
// player.test.mjs: the relay serving the page, a host forwarding to nginx, the
// host's share link. Bounded: per transport one fetch, 20 small requests, a 120 s
// deadline each. The relay runs without its default session rate (100 Mbit/s),
// which would otherwise be the figure measured.
//
//   BLINDRELAY_BIN_DIR=... node bench.mjs [--mib 256]

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

import { Processes, binDir } from "./support.mjs";
import { freePort, relayMetrics, spkiHash, startNginx, startRelayAndHost } from "./web.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const WAIT_MS = 120_000;
const at = process.argv.indexOf("--mib");
const MIB = at > 0 ? Number(process.argv[at + 1]) : 256;

const work = fs.mkdtempSync(path.join(os.tmpdir(), "blindrelay-bench-"));
const procs = new Processes(work);
let context;
try {
  const site = path.join(work, "site");
  fs.mkdirSync(site);
  fs.writeFileSync(path.join(site, "index.html"), "<!doctype html><title>bench</title><h1>bench</h1>");
  fs.writeFileSync(path.join(site, "small.txt"), "x".repeat(1024));
  // Zeros: the session encrypts them like anything else, and nginx sends them from the page cache.
  const fd = fs.openSync(path.join(site, "big.bin"), "w");
  const chunk = Buffer.alloc(1 << 20);
  for (let i = 0; i < MIB; i++) fs.writeSync(fd, chunk);
  fs.closeSync(fd);
  const nginxPort = await freePort();
  startNginx(procs, work, site, nginxPort);

  execFileSync(path.join(binDir(), "blindrelay"), ["keygen", "--role", "host", "--out", path.join(work, "host.key")]);
  // The relay's default session rate (100 Mbit/s) would be what is measured: off,
  // so that the figures are the browser's.
  const config = path.join(work, "relay.toml");
  fs.writeFileSync(config, '[sessions]\nrate = "0"\n');
  const { admin, link, origin } = await startRelayAndHost(procs, work, nginxPort, {
    relayArgs: ["--config", config],
    rustLog: "warn",
  });
  const u = new URL(origin);
  const spki = await spkiHash("127.0.0.1", Number(u.port), u.hostname);
  context = await chromium.launchPersistentContext(path.join(work, "profile"), {
    executablePath: CHROMIUM,
    headless: true,
    chromiumSandbox: false,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync", `--ignore-certificate-errors-spki-list=${spki}`,
      // As in player.test.mjs: WebTransport's QUIC would take ::1 for *.localhost, where the relay does not listen.
      `--host-resolver-rules=MAP ${u.hostname} 127.0.0.1`,
    ],
  });
  context.setDefaultTimeout(WAIT_MS);
  const results = [];
  for (const transport of ["webtransport", "websocket"]) {
    // A page of its own for each: a fresh service worker and its own sessions.
    const page = await context.newPage();
    const before = await relayMetrics(admin, "session_sides_total");
    const wanted = transport === "websocket" ? link.replace("/.blindrelay/#", "/.blindrelay/?transport=websocket#") : link;
    await page.goto(wanted);
    await page.waitForURL(`${origin}/`);
    await page.locator("h1", { hasText: "bench" }).waitFor();
    // From here on (the service worker has read the setting), every session goes the one way.
    const started = await relayMetrics(admin, "session_sides_total");
    results.push(await measure(page, transport));
    const after = await relayMetrics(admin, "session_sides_total");
    const label = `side="player",transport="${transport}"`;
    const other = transport === "websocket" ? `side="player",transport="webtransport"` : `side="player",transport="websocket"`;
    assert.ok(after[label] > before[label], `the sessions of the ${transport} run went over ${transport}`);
    assert.equal(after[other], started[other], `no session of the ${transport} run went another way`);
    await page.close();
  }
  const [wt, ws] = results;
  console.log(
    JSON.stringify(
      {
        date: new Date().toISOString(),
        cores: os.cpus().length,
        mib: MIB,
        results,
        webTransportOverWebSocket: {
          throughput: Number((wt.throughputMbitPerS / ws.throughputMbitPerS).toFixed(2)),
          firstByteMedian: Number((wt.firstByteMs.median / ws.firstByteMs.median).toFixed(2)),
          cpuPerGiB: Number((wt.chromiumCpuSecondsPerGiB / ws.chromiumCpuSecondsPerGiB).toFixed(2)),
        },
      },
      null,
      2,
    ),
  );
} finally {
  await context?.close().catch(() => {});
  await procs.closeAll();
  fs.rmSync(work, { recursive: true, force: true });
}

/** The figures of one transport, measured in `page` (already on the host's page). */
async function measure(page, transport) {
  // AES-GCM, 64 KiB frames, in the page: the two implementations the session can use.
  const aead = await page.evaluate(async () => {
    const mod = await import("/.blindrelay/player.js");
    const key = crypto.getRandomValues(new Uint8Array(32));
    const data = new Uint8Array(65519);
    const out = {};
    for (const [name, impl] of [["webcrypto", mod.webCryptoAead(crypto.subtle)], ["noble", mod.nobleAead]]) {
      const k = await impl.importKey(key);
      const n = name === "noble" ? 256 : 2048;
      const t0 = performance.now();
      for (let i = 0; i < n; i++) await k.seal(BigInt(i), new Uint8Array(0), data);
      out[name] = (n * data.length * 8) / ((performance.now() - t0) / 1000) / 1e6;
    }
    return out;
  });

  // Time to the response head of a new request (a kept session: the pool's case), 20 times.
  const ttfb = await page.evaluate(async () => {
    const times = [];
    for (let i = 0; i < 20; i++) {
      const t0 = performance.now();
      const r = await fetch(`/small.txt?${i}`, { cache: "no-store" });
      times.push(performance.now() - t0);
      await r.arrayBuffer();
    }
    times.sort((a, b) => a - b);
    return { median: times[10], max: times[19] };
  });

  const cpuBefore = chromiumCpuSeconds();
  const big = await page.evaluate(async () => {
    const t0 = performance.now();
    const r = await fetch("/big.bin", { cache: "no-store" });
    const head = performance.now() - t0;
    const reader = r.body.getReader();
    let n = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      n += value.length;
    }
    return { bytes: n, seconds: (performance.now() - t0) / 1000, head };
  });
  const cpu = chromiumCpuSeconds() - cpuBefore;
  assert.equal(big.bytes, MIB * 1024 * 1024);
  const mbits = (big.bytes * 8) / big.seconds / 1e6;
  return {
    transport,
    throughputMbitPerS: Math.round(mbits),
    firstByteMs: { median: Number(ttfb.median.toFixed(1)), max: Number(ttfb.max.toFixed(1)) },
    bigFetchHeadMs: Number(big.head.toFixed(1)),
    chromiumCpuSecondsPerGiB: Number((cpu / (big.bytes / 2 ** 30)).toFixed(2)),
    aesGcmMbitPerS: { webcrypto: Math.round(aead.webcrypto), noble: Math.round(aead.noble) },
  };
}

/** User and system CPU seconds of every process whose executable is Chromium (browser, renderers, GPU, network, workers). */
function chromiumCpuSeconds() {
  const tick = 100; // USER_HZ on Linux
  let total = 0;
  for (const pid of fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      if (!/\/chrom(e|ium)$/.test(fs.readlinkSync(`/proc/${pid}/exe`))) continue;
      const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      total += (Number(fields[11]) + Number(fields[12])) / tick;
    } catch {
      // Gone between the listing and the read.
    }
  }
  return total;
}
