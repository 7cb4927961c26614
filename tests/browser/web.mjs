// What the browser player's test needs besides the relay and host: a film made
// by ffmpeg, nginx serving it, and, until the relay serves the player itself, a
// stand-in for the relay's HTTPS side that serves web/dist/ on a host's origin
// the way the relay does and hands the WebSocket on to the relay.

import { execFileSync } from "node:child_process";
import { X509Certificate, createHash } from "node:crypto";
import fs from "node:fs";
import https from "node:https";
import net from "node:net";
import path from "node:path";
import tls from "node:tls";

import { repoRoot } from "./support.mjs";

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
 */
export function startNginx(processes, work, root, port) {
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
  types { text/html html; video/mp4 mp4; application/octet-stream bin; }
  server {
    listen 127.0.0.1:${port};
    root ${root};
    keepalive_timeout 75s;
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

const dist = path.join(repoRoot, "web", "dist");

/**
 * The stand-in for the relay's HTTPS side: on any `<host id>.localhost` origin it
 * serves `/.blindrelay/` (index.html), `player.js` and `sw.js` (with
 * `Service-Worker-Allowed: /`) under a Content-Security-Policy of 'self', sends
 * `/` to `/.blindrelay/`, and passes a WebSocket upgrade for `/blindrelay/1`
 * through, bytes unchanged, to the relay's TLS listener at `relayPort`.
 * Resolves with its port.
 */
export async function startStandIn(processes, work, relayPort) {
  const key = path.join(work, "standin.key");
  const cert = path.join(work, "standin.crt");
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
    "-addext", "subjectAltName=DNS:localhost,DNS:*.localhost",
  ], { stdio: ["ignore", "ignore", "pipe"] });
  const csp =
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; " +
    "media-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";
  const files = {
    "/.blindrelay/": ["index.html", "text/html; charset=utf-8"],
    "/.blindrelay/player.js": ["player.js", "text/javascript; charset=utf-8"],
    "/.blindrelay/sw.js": ["sw.js", "text/javascript; charset=utf-8"],
  };
  const server = https.createServer({ key: fs.readFileSync(key), cert: fs.readFileSync(cert) }, (req, res) => {
    const url = new URL(req.url, "https://x");
    if (url.pathname === "/") {
      res.writeHead(302, { Location: "/.blindrelay/" });
      res.end();
      return;
    }
    const file = files[url.pathname];
    if (file === undefined) {
      res.writeHead(404, { "Content-Type": "text/plain" });
      res.end("not found\n");
      return;
    }
    const headers = {
      "Content-Type": file[1],
      "Content-Security-Policy": csp,
      "Cache-Control": "no-cache",
      "X-Content-Type-Options": "nosniff",
    };
    if (file[0] === "sw.js") headers["Service-Worker-Allowed"] = "/";
    res.writeHead(200, headers);
    res.end(fs.readFileSync(path.join(dist, file[0])));
  });
  const upgraded = new Set();
  server.on("upgrade", (req, socket, head) => {
    upgraded.add(socket);
    socket.on("close", () => upgraded.delete(socket));
    if (req.url !== "/blindrelay/1") {
      socket.end("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
      return;
    }
    const relay = tls.connect(
      { host: "127.0.0.1", port: relayPort, rejectUnauthorized: false, ALPNProtocols: ["http/1.1"] },
      () => {
        let lines = `${req.method} ${req.url} HTTP/1.1\r\n`;
        for (let i = 0; i < req.rawHeaders.length; i += 2) lines += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
        relay.write(`${lines}\r\n`);
        if (head.length > 0) relay.write(head);
        relay.pipe(socket);
        socket.pipe(relay);
      },
    );
    const end = () => {
      relay.destroy();
      socket.destroy();
    };
    relay.on("error", end);
    socket.on("error", end);
    relay.on("close", end);
    socket.on("close", end);
  });
  // An upgraded socket is no longer the server's: end those too, or close() waits on them.
  processes.track({
    closeAllConnections: () => {
      server.closeAllConnections();
      for (const socket of upgraded) socket.destroy();
    },
    close: (done) => server.close(done),
  });
  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  return server.address().port;
}
