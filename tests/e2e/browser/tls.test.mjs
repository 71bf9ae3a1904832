// `duplex serve --tls-cert --tls-key` in headless Chromium: the chat page loads
// over https and two people talk over wss.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import { launchBrowser, newPage, startServer, waitFor } from "../lib/harness.mjs";

describe("TLS", () => {
  let server;
  let browser;
  const pages = [];

  before(async () => {
    server = await startServer({ tls: true });
    // The certificate is self-signed, made for this run: Chromium is told to
    // accept it rather than given a CA to trust (a headless profile has no
    // certificate store to add one to). The server's certificate itself is
    // checked by the harness's health probe, which trusts only that one.
    browser = await launchBrowser(["--ignore-certificate-errors"]);
  });

  after(async () => {
    for (const p of pages) assert.deepEqual(p.errors.map(String), [], "no uncaught page errors");
    await browser?.close();
    await server?.cleanup();
  });

  const status = (page) => page.getAttribute("#status", "data-state");
  const users = (page) => page.$$eval("#users .name", (els) => els.map((e) => e.textContent));
  const texts = (page) => page.$$eval("#messages .msg .text", (els) => els.map((e) => e.textContent));

  async function openChat(nick, room) {
    const page = await newPage(browser);
    pages.push(page);
    page.sockets = [];
    page.on("websocket", (ws) => page.sockets.push(ws.url()));
    await page.addInitScript((n) => localStorage.setItem("duplex.chat.nick", JSON.stringify(n)), nick);
    const response = await page.goto(`${server.origin}/#${room}`);
    assert.equal(response.status(), 200);
    await waitFor(`${nick} connected`, async () => (await status(page)) === "connected");
    await waitFor(`${nick} in the user list`, async () => (await users(page)).includes(nick));
    return page;
  }

  async function send(page, text) {
    await page.fill("#text", text);
    await page.press("#text", "Enter");
    await waitFor(`"${text}" shown to its sender`, async () => (await texts(page)).includes(text));
  }

  test("the chat page loads over https and chats over wss", async () => {
    assert.match(server.origin, /^https:\/\/127\.0\.0\.1:\d+$/);
    const ada = await openChat("Ada", "secure");
    const bob = await openChat("Bob", "secure");
    assert.equal(await ada.evaluate(() => location.protocol), "https:");
    for (const page of [ada, bob]) {
      assert.ok(page.sockets.length > 0, "a WebSocket was opened");
      for (const url of page.sockets) assert.match(url, /^wss:\/\/127\.0\.0\.1:\d+\/ws/);
    }
    await waitFor("Bob in Ada's list", async () => (await users(ada)).includes("Bob"));
    await send(ada, "Hello over TLS.");
    await waitFor("Ada's message at Bob", async () => (await texts(bob)).includes("Hello over TLS."));
    await send(bob, "Encrypted both ways.");
    await waitFor("Bob's message at Ada", async () => (await texts(ada)).includes("Encrypted both ways."));
    // ALPN settles on h2 for the page, and Chromium opens its WebSockets on that connection
    // with extended CONNECT (RFC 8441): the server counts them under HTTP/2.
    const seen = await ada.evaluate(async () => ({
      protocol: performance.getEntriesByType("navigation")[0].nextHopProtocol,
      metrics: await (await fetch("/metrics")).text(),
    }));
    assert.equal(seen.protocol, "h2");
    const count = (version) => {
      const line = seen.metrics
        .split("\n")
        .find((l) => l.startsWith(`duplex_websocket_upgrades_total{version="${version}"}`));
      return line ? Number(line.split(" ").pop()) : 0;
    };
    assert.ok(count("2") >= 2, `WebSockets over HTTP/2: ${count("2")}, over HTTP/1.1: ${count("1.1")}`);
  });
});
