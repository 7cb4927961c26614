// What the browser player's tests and benchmark need besides the browser: a relay
// that serves the player and a host that prints its share link, the relay's
// metrics, a film made by ffmpeg (as an MP4, or as HLS segments), nginx serving
// it, a TCP forwarder, and Chromium trusting the relay's certificate.

import { execFileSync } from "node:child_process";
import { X509Certificate, createHash } from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import path from "node:path";
import tls from "node:tls";
import { chromium } from "playwright-core";

/**
 * A real H.264/AAC MP4 of `seconds` seconds (test pattern and a tone), its index
 * at the front (`+faststart`) so that a player can start and seek by Range
 * requests without reading to the end first.
 */
export function makeFilm(file, seconds) {
  execFileSync(
    "ffmpeg",
    [
      "-hide_banner", "-loglevel", "error", "-y",
      "-f", "lavfi", "-i", `testsrc=size=320x240:rate=25:duration=${seconds}`,
      "-f", "lavfi", "-i", `sine=frequency=440:sample_rate=44100:duration=${seconds}`,
      "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "50",
      "-c:a", "aac", "-b:a", "64k",
      "-movflags", "+faststart",
      file,
    ],
    { stdio: ["ignore", "ignore", "pipe"], timeout: 120_000 },
  );
}

/**
 * The same film as HLS, as a media server transcodes for browsers: H.264/AAC in
 * MPEG-TS segments of `segmentSeconds` (a key frame at each start, so a seek
 * lands on one), listed in `dir/index.m3u8` as a complete (VOD) playlist.
 */
export function makeHls(dir, seconds, segmentSeconds) {
  fs.mkdirSync(dir, { recursive: true });
  const gop = String(25 * segmentSeconds);
  execFileSync(
    "ffmpeg",
    [
      "-hide_banner", "-loglevel", "error", "-y",
      "-f", "lavfi", "-i", `testsrc=size=320x240:rate=25:duration=${seconds}`,
      "-f", "lavfi", "-i", `sine=frequency=440:sample_rate=44100:duration=${seconds}`,
      "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
      "-g", gop, "-keyint_min", gop, "-sc_threshold", "0",
      "-c:a", "aac", "-b:a", "64k",
      "-f", "hls", "-hls_time", String(segmentSeconds), "-hls_playlist_type", "vod",
      "-hls_segment_filename", path.join(dir, "seg%03d.ts"),
      path.join(dir, "index.m3u8"),
    ],
    { stdio: ["ignore", "ignore", "pipe"], timeout: 120_000 },
  );
}

/** A free TCP port on loopback (free when asked; nginx takes it right after). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * nginx in the foreground, one process, serving `root` on 127.0.0.1:`port` with
 * keep-alive and Range requests (its defaults), every path it writes under `work`.
 * `serverConf` goes into its `server` block as it is (`limit_rate 64k;`).
 */
export function startNginx(processes, work, root, port, { serverConf = "" } = {}) {
  const conf = path.join(work, "nginx.conf");
  const temp = path.join(work, "nginx-temp");
  fs.mkdirSync(temp, { recursive: true });
  const temps = ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
    .map((t) => `  ${t}_temp_path ${path.join(temp, t)};`)
    .join("\n");
  fs.writeFileSync(
    conf,
    `daemon off;
master_process off;
worker_processes 1;
pid ${path.join(work, "nginx.pid")};
error_log stderr warn;
events { worker_connections 256; }
http {
  access_log off;
${temps}
  types {
    text/html html; video/mp4 mp4; application/octet-stream bin;
    text/javascript js; application/vnd.apple.mpegurl m3u8; video/mp2t ts;
  }
  server {
    listen 127.0.0.1:${port};
    root ${root};
    keepalive_timeout 75s;
${serverConf}
  }
}
`,
  );
  return processes.startCommand("nginx", process.env.NGINX_PATH ?? "nginx", ["-p", work, "-c", conf, "-e", "stderr"]);
}

/**
 * The SHA-256 of the SubjectPublicKeyInfo of the certificate that `host:port`
 * presents, in base64: what `--ignore-certificate-errors-spki-list` takes.
 */
export function spkiHash(host, port, servername) {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host, port, servername, rejectUnauthorized: false, ALPNProtocols: ["http/1.1"] }, () => {
      const cert = new X509Certificate(socket.getPeerCertificate(false).raw);
      socket.destroy();
      const spki = cert.publicKey.export({ type: "spki", format: "der" });
      resolve(createHash("sha256").update(spki).digest("base64"));
    });
    socket.once("error", reject);
  });
}

/**
 * `blindrelayd` on 127.0.0.1 (a port of its choosing, or `listen`) with its admin listener, and
 * `blindrelay host` (its key `host.key` in `work`) forwarding to 127.0.0.1:`port`,
 * given the relay URL with `localhost` for the relay's address: a relay without a
 * public name serves the player on `<host id>.localhost`, which browsers send to
 * this machine, and the host prints a share link only for a relay named by a DNS
 * name. Resolves once the host is registered and has printed its `web:` link.
 */
export async function startRelayAndHost(
  processes,
  work,
  port,
  { hostArgs = [], relayArgs = [], listen = "127.0.0.1:0", waitMs = 30_000, rustLog } = {},
) {
  const relay = processes.start("relay", "blindrelayd", ["--listen", listen, "--admin", "127.0.0.1:0", ...relayArgs], {
    rustLog,
  });
  const relayUrl = await relay.waitForLine(/^relay url: (\S+)$/, waitMs);
  const admin = await relay.waitForLine(/^admin: (\S+)$/, waitMs);
  const byName = relayUrl.replace("://127.0.0.1:", "://localhost:");
  const host = processes.start(
    "host",
    "blindrelay",
    ["host", "--key", "host.key", "--relay", byName, "--forward", `127.0.0.1:${port}`, ...hostArgs],
    { cwd: work, rustLog },
  );
  const hostId = await host.waitForLine(/^host id: (\S+)$/, waitMs);
  await host.waitForLine(/^relay: registered$/, waitMs);
  // Printed before the registration, or not at all (the host logs why).
  const printed = host.lines.find((line) => line.startsWith("web: "));
  if (printed === undefined) throw new Error(`the host printed no web: link: ${host.stderr}`);
  const link = printed.slice(5);
  return { relay, host, admin, link, origin: new URL(link).origin, hostId };
}

/** The samples of the relay's metric `name`, by their label text (`side="player",transport="quic"`). */
export async function relayMetrics(admin, name) {
  const text = await new Promise((resolve, reject) => {
    http
      .get(`http://${admin}/metrics`, (res) => {
        let body = "";
        res.setEncoding("utf8");
        res.on("data", (chunk) => (body += chunk));
        res.on("end", () => resolve(body));
        res.on("error", reject);
      })
      .on("error", reject);
  });
  const out = {};
  for (const line of text.split("\n")) {
    const m = /^(\w+)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (m && (m[1] === name || m[1] === `blindrelay_${name}`)) out[m[2] ?? ""] = Number(m[3]);
  }
  if (Object.keys(out).length === 0) throw new Error(`the relay has no metric ${name}`);
  return out;
}

/**
 * Passes TCP connections on `listenHost:listenPort` to `toHost:toPort`, bytes
 * unchanged (TLS stays end to end); counts them in `connections`. Nothing listens
 * for UDP there.
 */
export async function forwardTcp(listenHost, listenPort, toHost, toPort) {
  const sockets = new Set();
  const server = net.createServer((client) => {
    server.connections += 1;
    const upstream = net.connect(toPort, toHost);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on("close", () => sockets.delete(s));
      s.on("error", () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  server.connections = 0;
  server.closeAllConnections = () => {
    for (const s of sockets) s.destroy();
  };
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(listenPort, listenHost, resolve);
  });
  return server;
}

/**
 * Headless Chromium (Debian's, or CHROMIUM_PATH) with a fresh profile in `work`
 * that trusts exactly the certificate the host's origin presents on TCP
 * (`--ignore-certificate-errors-spki-list`), with the origin mapped to the relay's
 * 127.0.0.1: Chromium resolves `*.localhost` to ::1 too and would take that for
 * WebTransport's QUIC, where the relay does not listen.
 */
export async function launchChromium(work, originUrl, { waitMs = 30_000 } = {}) {
  const spki = await spkiHash("127.0.0.1", Number(originUrl.port), originUrl.hostname);
  const context = await chromium.launchPersistentContext(path.join(work, "chromium-profile"), {
    executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
    headless: true,
    chromiumSandbox: false,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--autoplay-policy=no-user-gesture-required",
      `--ignore-certificate-errors-spki-list=${spki}`,
      `--host-resolver-rules=MAP ${originUrl.hostname} 127.0.0.1`,
    ],
    viewport: { width: 800, height: 640 },
  });
  context.setDefaultTimeout(waitMs);
  return context;
}

/** Waits until something accepts on 127.0.0.1:`port`; fails when `proc` exits or the deadline passes. */
export async function waitForPort(port, proc, waitMs = 30_000) {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, "127.0.0.1", () => {
        s.destroy();
        resolve(true);
      });
      s.on("error", () => resolve(false));
    });
    if (ok) return;
    if (proc.exited) throw new Error(`${proc.name} exited: ${proc.stderr}`);
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port} after ${waitMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
