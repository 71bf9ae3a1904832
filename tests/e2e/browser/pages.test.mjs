// The ticker and stats demo pages in headless Chromium against the real server.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import { launchBrowser, newPage, outPath, startServer, waitFor } from "../lib/harness.mjs";

describe("ticker and stats pages", () => {
  let server;
  let browser;
  const pages = [];

  before(async () => {
    server = await startServer();
    browser = await launchBrowser();
  });

  after(async () => {
    for (const p of pages) assert.deepEqual(p.errors.map(String), [], "no uncaught page errors");
    await browser?.close();
    await server?.cleanup();
  });

  async function open(path) {
    const page = await newPage(browser);
    pages.push(page);
    await page.goto(`${server.origin}${path}`);
    return page;
  }

  test("the ticker shows live prices that change", async () => {
    const page = await open("/ticker");
    await waitFor("connected", async () => (await page.getAttribute("#status", "data-state")) === "connected");
    const prices = () =>
      page.$$eval(".quote", (els) =>
        Object.fromEntries(els.map((e) => [e.dataset.symbol, e.querySelector(".price").textContent])),
      );
    const first = await waitFor("three symbols", async () => {
      const p = await prices();
      return Object.keys(p).length >= 3 && p;
    });
    for (const [symbol, price] of Object.entries(first)) {
      assert.match(symbol, /^[A-Z0-9.]+$/);
      assert.match(price, /^\d[\d,]*\.\d{2}$/, `${symbol} price ${price}`);
    }
    const changed = await waitFor(
      "a price change",
      async () => {
        const now = await prices();
        const c = Object.keys(first).filter((s) => now[s] !== first[s]);
        return c.length > 0 && c;
      },
      { timeout: 10000 },
    );
    assert.ok(changed.length > 0);
    await waitFor("sparklines drawn", async () =>
      page.$$eval(".quote .spark polyline", (els) =>
        els.every((e) => e.getAttribute("points").split(" ").length >= 3),
      ),
    );
    await waitFor("ticks per second shown", async () => Number(await page.textContent("#rate")) > 0);
    await page.screenshot({ path: outPath("ticker.png") });
  });

  test("a newly opened ticker shows every symbol's latest price at once", async () => {
    // The first test's page kept the feed running, so the channel has history.
    const page = await open("/ticker");
    const latest = await waitFor("latest prices with the subscription", async () => {
      const symbols = await page.evaluate(() => [...globalThis.duplexTicker.latest]);
      return symbols.length >= 5 && symbols;
    });
    // Every symbol came with the subscription, before any live tick, and is on screen.
    const shown = await page.$$eval(".quote", (els) =>
      els.map((e) => [e.dataset.symbol, e.querySelector(".price").textContent]),
    );
    for (const symbol of latest) {
      const card = shown.find(([s]) => s === symbol);
      assert.ok(card, `${symbol} has a card`);
      assert.match(card[1], /^\d[\d,]*\.\d{2}$/, `${symbol} price ${card[1]}`);
    }
  });

  test("the stats page shows live server figures", async () => {
    const page = await open("/stats");
    await waitFor("live", async () => (await page.getAttribute("#status", "data-state")) === "connected");
    const value = (key) => page.textContent(`.stat[data-key="${key}"] .value`);
    await waitFor("the ticker's connection counted", async () => Number(await value("connections")) >= 1);
    await waitFor("channels listed", async () =>
      (await page.$$eval("#channels td:first-child", (els) => els.map((e) => e.textContent))).includes(
        "ticker:prices",
      ),
    );
    const pubs = Number((await value("publications")).replace(/\D/g, ""));
    await waitFor("publications grow", async () => Number((await value("publications")).replace(/\D/g, "")) > pubs, {
      timeout: 10000,
    });
    assert.match(await page.textContent("#uptime"), /^\d+[smhd]/);
    await page.screenshot({ path: outPath("stats.png") });
  });
});
