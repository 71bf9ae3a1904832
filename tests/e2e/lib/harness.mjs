// Shared building blocks of the browser tests: the real `duplex serve` binary on a free
// loopback port, headless Chromium through playwright-core, a TCP proxy that can
// cut or stall connections, and small polling utilities.
import { execFileSync, spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import https from "node:https";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));

/** The repository root (tests/e2e/lib/../../..). */
export const REPO_ROOT = path.resolve(HERE, "..", "..", "..");

/** Where screenshots go: `target/e2e` in the repository, or `$DUPLEX_E2E_OUT`. */
export const OUT_DIR = process.env.DUPLEX_E2E_OUT
  ? path.resolve(process.env.DUPLEX_E2E_OUT)
  : path.join(REPO_ROOT, "target", "e2e");

/** The Chromium flags for a headless run on a CI machine with no GPU or network. */
export const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/**
 * The server binary under test, from `$DUPLEX_BIN`. Throws with instructions
 * when it is not set or not executable, so a misconfigured run fails loudly
 * instead of skipping.
 * @returns {string} absolute path
 */
export function duplexBin() {
  const bin = process.env.DUPLEX_BIN;
  const how =
    "build it with `cargo build --release -p duplex-cli` and run the tests with " +
    "DUPLEX_BIN=<target dir>/release/duplex (tests/e2e/run.sh does both)";
  if (!bin) throw new Error(`DUPLEX_BIN is not set: ${how}`);
  const abs = path.resolve(bin);
  try {
    fs.accessSync(abs, fs.constants.X_OK);
  } catch {
    throw new Error(`DUPLEX_BIN=${bin} does not exist or is not executable: ${how}`);
  }
  return abs;
}

/** @returns {Promise<number>} a TCP port on 127.0.0.1 that was free a moment ago */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Writes a self-signed certificate for 127.0.0.1 and localhost, and its key,
 * into `dir` with `openssl` (valid for a day); returns the two paths.
 * @param {string} dir
 */
export function selfSignedCert(dir) {
  const cert = path.join(dir, "cert.pem");
  const key = path.join(dir, "key.pem");
  try {
    execFileSync(
      process.env.OPENSSL_BIN || "openssl",
      [
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "1", "-subj", "/CN=duplex e2e",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "-keyout", key, "-out", cert,
      ],
      { stdio: ["ignore", "ignore", "pipe"], timeout: 20000 },
    );
  } catch (err) {
    throw new Error(`cannot make a test certificate with openssl (install it or set OPENSSL_BIN): ${err.message}`);
  }
  return { cert, key };
}

/**
 * GETs `url` and resolves with the status; over https the server's
 * certificate must be `ca`.
 */
function probe(url, ca) {
  if (!url.startsWith("https:")) return fetch(url).then((res) => res.status);
  return new Promise((resolve, reject) => {
    const req = https.get(url, { ca, timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on("timeout", () => req.destroy(new Error("timed out")));
    req.on("error", reject);
  });
}

/**
 * Runs `$DUPLEX_BIN serve --listen 127.0.0.1:PORT [--config FILE]` and waits
 * until `/healthz` answers. The returned handle can stop and start the same
 * server again on the same port. With `tls`, it serves https and wss with a
 * self-signed certificate (`server.cert`, PEM) made for the run.
 *
 * @param {{port?: number, config?: string, tls?: boolean}} [opts] `config` is TOML text
 */
export async function startServer(opts = {}) {
  const bin = duplexBin();
  const port = opts.port ?? (await freePort());
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "duplex-e2e-"));
  const args = ["serve", "--listen", `127.0.0.1:${port}`];
  if (opts.config) {
    const file = path.join(dir, "duplex.toml");
    fs.writeFileSync(file, opts.config);
    args.push("--config", file);
  }
  let cert = null;
  if (opts.tls) {
    let files;
    try {
      files = selfSignedCert(dir);
    } catch (err) {
      fs.rmSync(dir, { recursive: true, force: true });
      throw err;
    }
    args.push("--tls-cert", files.cert, "--tls-key", files.key);
    cert = fs.readFileSync(files.cert, "utf8");
  }
  const server = {
    port,
    origin: `${opts.tls ? "https" : "http"}://127.0.0.1:${port}`,
    cert,
    child: null,
    lines: [],
    async start() {
      const child = spawn(bin, args, {
        stdio: ["ignore", "pipe", "pipe"],
        env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "info" },
      });
      this.child = child;
      const keep = (chunk) => {
        for (const line of chunk.toString().split("\n")) {
          if (line) this.lines.push(line);
        }
        if (this.lines.length > 400) this.lines.splice(0, this.lines.length - 400);
      };
      child.stdout.on("data", keep);
      child.stderr.on("data", keep);
      const exited = new Promise((resolve) => child.once("exit", (code, sig) => resolve({ code, sig })));
      child.exitedPromise = exited;
      const deadline = Date.now() + 20000;
      for (;;) {
        const early = await Promise.race([exited, sleep(100).then(() => null)]);
        if (early) {
          throw new Error(
            `duplex serve exited (code ${early.code}, signal ${early.sig}) before it was healthy:\n${this.log()}`,
          );
        }
        try {
          if ((await probe(`${this.origin}/healthz`, cert)) === 200) return;
        } catch {
          // Not listening yet.
        }
        if (Date.now() > deadline) {
          await this.stop();
          throw new Error(`duplex serve not healthy after 20 s:\n${this.log()}`);
        }
      }
    },
    /** Stops the server: SIGTERM (graceful), SIGKILL after 10 s. */
    async stop(signal = "SIGTERM") {
      const child = this.child;
      if (!child || child.exitCode !== null || child.signalCode !== null) return;
      child.kill(signal);
      const done = await Promise.race([child.exitedPromise, sleep(10000).then(() => null)]);
      if (!done) {
        child.kill("SIGKILL");
        await child.exitedPromise;
      }
    },
    /** The last lines the server logged, for failure messages. */
    log() {
      return this.lines.slice(-60).join("\n");
    },
    async cleanup() {
      await this.stop("SIGKILL");
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await server.start();
  } catch (err) {
    fs.rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return server;
}

/**
 * Launches Debian's Chromium headless (`$CHROMIUM_BIN`, default
 * /usr/bin/chromium). Playwright gives it a fresh temporary profile
 * (`--user-data-dir`) and removes it on close. `extraArgs` are added to
 * `CHROMIUM_ARGS`.
 * @param {string[]} [extraArgs]
 */
export async function launchBrowser(extraArgs = []) {
  const exe = process.env.CHROMIUM_BIN || "/usr/bin/chromium";
  if (!fs.existsSync(exe)) {
    throw new Error(
      `Chromium not found at ${exe}: install it (apt-get install -y chromium) or set CHROMIUM_BIN`,
    );
  }
  return chromium.launch({ executablePath: exe, headless: true, args: [...CHROMIUM_ARGS, ...extraArgs], timeout: 60000 });
}

/**
 * Opens a page in a fresh browser context (its own storage, like another
 * person) and records uncaught exceptions in `page.errors`.
 * @param {import("playwright-core").Browser} browser
 * @param {object} [contextOptions]
 */
export async function newPage(browser, contextOptions = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, ...contextOptions });
  const page = await context.newPage();
  page.errors = [];
  page.on("pageerror", (err) => page.errors.push(err));
  // Console errors are expected while a server is down (refused WebSocket
  // connections), so they are only kept for diagnostics.
  page.consoleErrors = [];
  page.on("console", (msg) => {
    if (msg.type() === "error") page.consoleErrors.push(msg.text());
  });
  return page;
}

/**
 * A TCP proxy between the browser and the server that can fail the way real
 * networks do: `cut()` drops every connection and refuses new ones (a lost
 * link), `stall()` keeps connections open but silently drops all bytes (a dead
 * path, detected only by heartbeats), `restore()` heals it.
 */
export class TcpProxy {
  /** @param {number} targetPort */
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.mode = "up";
    this.pairs = new Set();
    this.accepted = 0;
    this.server = net.createServer((down) => this._accept(down));
  }

  /** @returns {Promise<number>} the proxy's port */
  listen() {
    return new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(0, "127.0.0.1", () => {
        this.port = this.server.address().port;
        this.origin = `http://127.0.0.1:${this.port}`;
        resolve(this.port);
      });
    });
  }

  _accept(down) {
    if (this.mode === "down") {
      down.resetAndDestroy();
      return;
    }
    this.accepted++;
    const up = net.connect(this.targetPort, "127.0.0.1");
    const pair = { down, up };
    this.pairs.add(pair);
    const forward = (from, to) =>
      from.on("data", (chunk) => {
        if (this.mode === "up") to.write(chunk);
      });
    forward(down, up);
    forward(up, down);
    const end = () => {
      this.pairs.delete(pair);
      down.destroy();
      up.destroy();
    };
    for (const s of [down, up]) {
      s.on("error", end);
      s.on("close", end);
    }
  }

  /** Drops every connection (RST) and refuses new ones until `restore()`. */
  cut() {
    this.mode = "down";
    for (const { down, up } of this.pairs) {
      down.resetAndDestroy();
      up.resetAndDestroy();
    }
    this.pairs.clear();
  }

  /** Keeps connections open but forwards nothing, in either direction. */
  stall() {
    this.mode = "stalled";
  }

  /** Forwards again and accepts new connections. */
  restore() {
    this.mode = "up";
  }

  close() {
    this.cut();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/**
 * Polls `fn` until it returns a truthy value and returns that value; throws
 * with `what` and the last value after `timeout` ms.
 */
export async function waitFor(what, fn, { timeout = 15000, interval = 100 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}; last value: ${fmt(last)}`);
    }
    await sleep(interval);
  }
}

function fmt(v) {
  if (v instanceof Error) return v.message;
  try {
    return JSON.stringify(v);
  } catch {
    return String(v);
  }
}

/** @param {number} ms */
export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Signs an HS256 JWT, to test token authentication against a server
 * configured with the same secret.
 * @param {object} claims
 * @param {string} secret
 */
export function signJwt(claims, secret) {
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString("base64url");
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  const sig = crypto.createHmac("sha256", secret).update(head).digest("base64url");
  return `${head}.${sig}`;
}

/** POSTs a publication through the HTTP API. */
export async function apiPublish(origin, key, channel, data) {
  const res = await fetch(`${origin}/api/publish`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify({ channel, data }),
  });
  const body = await res.text();
  if (!res.ok) throw new Error(`POST /api/publish: ${res.status} ${body}`);
  return JSON.parse(body);
}

/** Makes sure the screenshot directory exists and returns a path in it. */
export function outPath(name) {
  fs.mkdirSync(OUT_DIR, { recursive: true });
  return path.join(OUT_DIR, name);
}
