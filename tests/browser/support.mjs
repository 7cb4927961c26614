// What the browser tests need besides the browser: the real binaries, started as
// processes that are all ended when the test ends (pass or fail), a service for
// the host to forward to, and a player's request through its listen address.

import { spawn, execFileSync } from "node:child_process";
import { createServer } from "node:http";
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, "..", "..");

let targetDirCache;

/** The workspace's cargo target folder, as cargo itself names it. */
export function cargoTargetDir() {
  if (targetDirCache === undefined) {
    const out = execFileSync(
      "cargo",
      ["metadata", "--format-version", "1", "--no-deps", "--offline"],
      { cwd: repoRoot, encoding: "utf8", maxBuffer: 64 * 1024 * 1024 },
    );
    targetDirCache = JSON.parse(out).target_directory;
  }
  return targetDirCache;
}

/**
 * Where `blindrelayd` and `blindrelay` are: BLINDRELAY_BIN_DIR, or the debug
 * build of this workspace (CI builds both before running these tests).
 */
export function binDir() {
  const dir = process.env.BLINDRELAY_BIN_DIR ?? path.join(cargoTargetDir(), "debug");
  for (const bin of ["blindrelayd", "blindrelay"]) {
    if (!fs.existsSync(path.join(dir, bin))) {
      throw new Error(
        `${bin} is not in ${dir}: run \`cargo build --locked --bin blindrelayd --bin blindrelay\` ` +
          "or point BLINDRELAY_BIN_DIR at the folder that holds both",
      );
    }
  }
  return dir;
}

/** Where screenshots and process logs go: BLINDRELAY_ARTEFACT_DIR, or under target/. */
export function artefactDir(name) {
  const base =
    process.env.BLINDRELAY_ARTEFACT_DIR ?? path.join(cargoTargetDir(), "browser-tests");
  const dir = path.join(base, name);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  return dir;
}

/**
 * Every process and server a test starts, so that one `closeAll()` in a
 * `finally` ends them all, whatever failed.
 */
export class Processes {
  constructor(logDir) {
    this.logDir = logDir;
    this.children = [];
    this.servers = [];
  }

  /**
   * Starts `bin` from binDir() with `args`; its output is kept and logged.
   * Its log filter is `options.rustLog` (for a test that waits on a log line), else
   * the environment's RUST_LOG, else `info`.
   */
  start(name, bin, args, options = {}) {
    const child = spawn(path.join(binDir(), bin), args, {
      cwd: options.cwd,
      env: { ...process.env, RUST_LOG: options.rustLog ?? process.env.RUST_LOG ?? "info" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const proc = new Proc(name, child, this.logDir);
    this.children.push(proc);
    return proc;
  }

  /**
   * Starts a program that is not one of ours (`nginx`), found on PATH or at its
   * full path, kept and ended like the others.
   */
  startCommand(name, command, args, options = {}) {
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: process.env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    const proc = new Proc(name, child, this.logDir);
    this.children.push(proc);
    return proc;
  }

  /** Keeps `server` to close at the end. */
  track(server) {
    this.servers.push(server);
    return server;
  }

  /** Ends every process (SIGKILL: nothing here needs a graceful end) and server. */
  async closeAll() {
    await Promise.all(this.children.map((proc) => proc.kill()));
    await Promise.all(
      this.servers.map(
        (server) =>
          new Promise((resolve) => {
            server.closeAllConnections?.();
            server.close(() => resolve());
          }),
      ),
    );
  }
}

/** One running process, its stdout read line by line. */
class Proc {
  constructor(name, child, logDir) {
    this.name = name;
    this.child = child;
    this.lines = [];
    this.logLines = [];
    this.stderr = "";
    this.exited = null;
    this.waiters = new Set();
    this.log = fs.createWriteStream(path.join(logDir, `${name}.log`));
    let partial = "";
    child.stdout.setEncoding("utf8");
    child.stdout.on("data", (chunk) => {
      this.log.write(chunk);
      partial += chunk;
      const parts = partial.split("\n");
      partial = parts.pop();
      this.lines.push(...parts);
      this.wake();
    });
    let partialLog = "";
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      this.log.write(chunk);
      // The tail is enough to say why a process died.
      this.stderr = (this.stderr + chunk).slice(-4000);
      partialLog += chunk;
      const parts = partialLog.split("\n");
      partialLog = parts.pop();
      this.logLines.push(...parts);
      this.wake();
    });
    this.done = new Promise((resolve) => {
      child.on("exit", (code, signal) => {
        this.exited = { code, signal };
        this.wake();
        resolve();
      });
      child.on("error", (err) => {
        this.exited = { error: err.message };
        this.wake();
        resolve();
      });
    });
  }

  wake() {
    for (const waiter of this.waiters) waiter();
  }

  /**
   * The first stdout line that matches `pattern` (from the start of the output),
   * its first capture group if it has one. Fails when the process exits first or
   * the deadline passes.
   */
  waitForLine(pattern, timeoutMs = 20_000) {
    return this.waitIn(this.lines, "printed", pattern, timeoutMs);
  }

  /** The same as waitForLine, for the log lines on stderr. */
  waitForLog(pattern, timeoutMs = 20_000) {
    return this.waitIn(this.logLines, "logged", pattern, timeoutMs);
  }

  waitIn(lines, verb, pattern, timeoutMs) {
    return new Promise((resolve, reject) => {
      const check = () => {
        for (const line of lines) {
          const m = pattern.exec(line);
          if (m) {
            finish();
            resolve(m[1] ?? m[0]);
            return;
          }
        }
        if (this.exited) {
          finish();
          reject(
            new Error(
              `${this.name} exited (${JSON.stringify(this.exited)}) before it ${verb} ${pattern}: ` +
                this.stderr,
            ),
          );
        }
      };
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`${this.name} ${verb} no ${pattern} in ${timeoutMs} ms: ${this.stderr}`));
      }, timeoutMs);
      const finish = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  async kill() {
    if (!this.exited) {
      this.child.kill("SIGKILL");
      await this.done;
    }
    await new Promise((resolve) => this.log.end(resolve));
  }
}

/**
 * The service the host forwards to: `GET /` answers at once; `GET /hold` sends
 * its headers and a first chunk and keeps the response open, so that a session
 * stays open for as long as the request does.
 */
export function startService(processes) {
  const server = createServer((req, res) => {
    if (req.url === "/hold") {
      res.writeHead(200, { "Content-Type": "text/plain" });
      res.write("holding\n");
      return;
    }
    const body = "hello from the service\n";
    res.writeHead(200, { "Content-Type": "text/plain", "Content-Length": body.length });
    res.end(body);
  });
  processes.track(server);
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve(`127.0.0.1:${server.address().port}`));
  });
}

/**
 * `GET /` through a player's listen address (a session per TCP connection):
 * `{ ok: true, body }` when the service answered, `{ ok: false, error }` when
 * the player reset the connection because the session was refused.
 */
export function fetchThrough(listen, timeoutMs = 15_000) {
  const [host, port] = splitAddr(listen);
  return new Promise((resolve) => {
    const req = http.get({ host, port, path: "/", agent: false, timeout: timeoutMs }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => (body += chunk));
      res.on("end", () => resolve({ ok: true, status: res.statusCode, body }));
      res.on("error", (err) => resolve({ ok: false, error: err.message }));
    });
    req.on("timeout", () => req.destroy(new Error(`no answer in ${timeoutMs} ms`)));
    req.on("error", (err) => resolve({ ok: false, error: err.message }));
  });
}

/**
 * `GET /hold` through a player: resolves once the first chunk has come back (the
 * session is open), with a function that ends the request.
 */
export function holdThrough(listen, timeoutMs = 15_000) {
  const [host, port] = splitAddr(listen);
  return new Promise((resolve, reject) => {
    const req = http.get({ host, port, path: "/hold", agent: false }, (res) => {
      // Ending the request on purpose aborts the response: not a failure.
      res.on("error", () => {});
      res.once("data", () => {
        clearTimeout(timer);
        resolve(() => req.destroy());
      });
    });
    const timer = setTimeout(() => {
      req.destroy();
      reject(new Error(`the held request got nothing back in ${timeoutMs} ms`));
    }, timeoutMs);
    req.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

function splitAddr(addr) {
  const at = addr.lastIndexOf(":");
  return [addr.slice(0, at).replace(/^\[|\]$/g, ""), Number(addr.slice(at + 1))];
}
