// Backend hooks seen from headless Chromium: the page's cookie reaches the
// application's connect hook (crates/hub/tests/data/backend.mjs, Node's http
// module only), a refusal arrives as a close code and reason the page reads in
// its CloseEvent, and duplex.js's rpc() is answered by the application.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";
import path from "node:path";
import readline from "node:readline";
import { spawn } from "node:child_process";

import { REPO_ROOT, launchBrowser, newPage, startServer } from "../lib/harness.mjs";

/** Starts the test backend; resolves with its process and port. */
async function startBackend() {
  const script = path.join(REPO_ROOT, "crates", "hub", "tests", "data", "backend.mjs");
  const child = spawn(process.execPath, [script], { stdio: ["pipe", "pipe", "inherit"] });
  const lines = readline.createInterface({ input: child.stdout });
  const first = await Promise.race([
    new Promise((resolve) => lines.once("line", resolve)),
    new Promise((_, reject) => setTimeout(() => reject(new Error("backend did not start")), 10000)),
  ]);
  return { child, port: JSON.parse(first).port };
}

describe("backend hooks in Chromium", () => {
  let backend;
  let server;
  let browser;

  before(async () => {
    backend = await startBackend();
    const hook = (p) => `"http://127.0.0.1:${backend.port}${p}"`;
    server = await startServer({
      config: `
[hooks]
connect = ${hook("/connect")}
rpc = ${hook("/rpc")}
headers = ["cookie"]
timeout = "2s"
`,
    });
    browser = await launchBrowser();
  });

  after(async () => {
    await browser?.close();
    await server?.cleanup();
    backend?.child.kill("SIGKILL");
  });

  test("a refused connection closes with the application's code and reason", async () => {
    const page = await newPage(browser);
    await page.goto(`${server.origin}/healthz`);
    const closed = await page.evaluate(
      (url) =>
        new Promise((resolve) => {
          const ws = new WebSocket(url, "duplex.v1");
          ws.onclose = (e) => resolve({ code: e.code, reason: e.reason, clean: e.wasClean });
          ws.onmessage = (m) => resolve({ unexpected: m.data });
        }),
      server.origin.replace(/^http/, "ws") + "/ws",
    );
    assert.deepEqual(closed, { code: 4403, reason: "log in first", clean: true });
    assert.deepEqual(page.errors.map(String), []);
  });

  test("the page's cookie makes the user, and rpc() is answered by the application", async () => {
    const page = await newPage(browser);
    await page.goto(`${server.origin}/healthz`);
    const out = await page.evaluate(async () => {
      document.cookie = "session=alice; path=/";
      const { Client, wsUrl } = await import("/duplex.js");
      const c = new Client(wsUrl());
      const welcome = new Promise((resolve) => c.on("welcome", resolve));
      c.connect();
      const w = await welcome;
      const sum = await c.rpc("add", { a: 2, b: 3 }, { timeout: 5000 });
      let refused = null;
      try {
        await c.rpc("nope", null, { timeout: 5000 });
      } catch (e) {
        refused = { code: e.code, message: e.message };
      }
      c.close();
      return { user: w.user, sum, refused };
    });
    assert.deepEqual(out, {
      user: "alice",
      sum: 5,
      refused: { code: "forbidden", message: "no method nope" },
    });
    assert.deepEqual(page.errors.map(String), []);
  });
});
