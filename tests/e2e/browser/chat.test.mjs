// The chat demo in headless Chromium against the real server: two people in a
// room, a server restart, and a page that was offline while others talked.
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import {
  TcpProxy,
  apiPublish,
  launchBrowser,
  newPage,
  outPath,
  sleep,
  startServer,
  waitFor,
} from "../lib/harness.mjs";

const API_KEY = "e2e-chat-key";
const CONFIG = `
[api]
key = "${API_KEY}"
`;

describe("chat demo", () => {
  let server;
  let browser;
  const pages = [];

  before(async () => {
    server = await startServer({ config: CONFIG });
    browser = await launchBrowser();
  });

  after(async () => {
    for (const p of pages) assert.deepEqual(p.errors.map(String), [], "no uncaught page errors");
    await browser?.close();
    await server?.cleanup();
  });

  // Opens the chat as a returning visitor whose name the page remembers.
  async function openChat(origin, nick, room, contextOptions) {
    const page = await newPage(browser, contextOptions);
    pages.push(page);
    await page.addInitScript((n) => localStorage.setItem("duplex.chat.nick", JSON.stringify(n)), nick);
    await page.goto(`${origin}/#${room}`);
    await waitForStatus(page, "connected");
    assert.equal(await page.inputValue("#nick"), nick);
    await waitFor(`${nick} in the user list`, async () => (await users(page)).includes(nick));
    return page;
  }

  const status = (page) => page.getAttribute("#status", "data-state");
  const waitForStatus = (page, state, timeout = 15000) =>
    waitFor(`status ${state}`, async () => (await status(page)) === state, { timeout });
  const users = (page) => page.$$eval("#users .name", (els) => els.map((e) => e.textContent));
  const texts = (page) => page.$$eval("#messages .msg .text", (els) => els.map((e) => e.textContent));
  const count = (list, text) => list.filter((t) => t === text).length;

  async function send(page, text) {
    await page.fill("#text", text);
    await page.press("#text", "Enter");
    await waitFor(`"${text}" shown to its sender`, async () => (await texts(page)).includes(text));
  }

  test("two people in a room see each other and each other's messages", async () => {
    const ada = await openChat(server.origin, "Ada", "lobby");
    const bob = await openChat(server.origin, "Bob", "lobby");

    await waitFor("Bob in Ada's list", async () => (await users(ada)).includes("Bob"));
    await waitFor("Ada in Bob's list", async () => (await users(bob)).includes("Ada"));
    assert.equal(await ada.textContent("#user-count"), "2");
    assert.equal(await ada.textContent("#status"), "Connected");

    await send(ada, "Hi Bob! The hub is up.");
    await waitFor("Ada's message at Bob", async () => (await texts(bob)).includes("Hi Bob! The hub is up."));
    await send(bob, "Hello Ada, I can see you in the user list.");
    await send(ada, "Messages carry a time and a sender.");
    await waitFor("Bob's message at Ada", async () =>
      (await texts(ada)).includes("Hello Ada, I can see you in the user list."),
    );

    const last = await bob.$$eval("#messages .msg", (els) =>
      els.map((e) => ({
        from: e.querySelector(".from").textContent,
        time: e.querySelector("time").textContent,
        mine: e.classList.contains("mine"),
      })),
    );
    assert.deepEqual(
      last.map((m) => [m.from, m.mine]),
      [
        ["Ada", false],
        ["Bob", true],
        ["Ada", false],
      ],
    );
    assert.ok(last.every((m) => /\d{1,2}[:.]\d{2}/.test(m.time)), "times are shown");

    // A third person arrives later and gets the recent history.
    const cy = await openChat(server.origin, "Cy", "lobby");
    await waitFor("history at Cy", async () => (await texts(cy)).length === 3);
    assert.deepEqual(await texts(cy), await texts(ada));
    await waitFor("Cy in Ada's list", async () => (await users(ada)).includes("Cy"));
    await cy.close();
    await waitFor("Cy gone from Ada's list", async () => !(await users(ada)).includes("Cy"));

    await ada.screenshot({ path: outPath("chat.png") });

    const phone = await openChat(server.origin, "Dee", "lobby", {
      viewport: { width: 390, height: 780 },
      deviceScaleFactor: 2,
      isMobile: true,
      hasTouch: true,
    });
    await waitFor("history on the phone", async () => (await texts(phone)).length === 3);
    await phone.screenshot({ path: outPath("chat-mobile.png") });
    assert.equal(await phone.isVisible("#users"), false, "the sidebar is a drawer on phones");
    await phone.click("#drawer-toggle");
    await waitFor("drawer open", () => phone.isVisible("#users"));
    assert.ok((await users(phone)).includes("Ada"));
    await phone.close();
    await ada.close();
    await bob.close();
  });

  test("rooms are separate and renaming updates the user list", async () => {
    const ada = await openChat(server.origin, "Ada", "room-a");
    const bob = await openChat(server.origin, "Bob", "room-b");
    await send(ada, "only in room-a");
    await send(bob, "only in room-b");
    await sleep(300);
    assert.deepEqual(await texts(ada), ["only in room-a"]);
    assert.deepEqual(await users(ada), ["Ada"]);

    await bob.fill("#room-input", "room-a");
    await bob.press("#room-input", "Enter");
    await waitFor("room-a history at Bob", async () => (await texts(bob)).includes("only in room-a"));
    assert.ok(!(await texts(bob)).includes("only in room-b"));
    assert.equal(new URL(bob.url()).hash, "#room-a");
    await waitFor("Bob in room-a", async () => (await users(ada)).includes("Bob"));

    await bob.fill("#nick", "Robert");
    await bob.press("#nick", "Enter");
    await waitFor("renamed in Ada's list", async () => {
      const u = await users(ada);
      return u.includes("Robert") && !u.includes("Bob");
    });
    await waitFor("rename announced", async () =>
      (await ada.$$eval("#messages .sys", (els) => els.map((e) => e.textContent))).includes("Bob is now Robert"),
    );
    await send(bob, "new name, same stream");
    await waitFor("at Ada", async () => (await texts(ada)).includes("new name, same stream"));
    assert.deepEqual(await texts(bob), ["only in room-a", "new name, same stream"], "renaming lost or repeated nothing");
    await ada.close();
    await bob.close();
  });

  test("after a server restart the page reconnects by itself and chat works again", async (t) => {
    const ada = await openChat(server.origin, "Ada", "restart");
    const bob = await openChat(server.origin, "Bob", "restart");
    await send(ada, "before the restart");
    await waitFor("at Bob", async () => (await texts(bob)).includes("before the restart"));

    await server.stop();
    await waitForStatus(ada, "disconnected");
    await waitForStatus(bob, "disconnected");
    assert.match(await ada.textContent("#status"), /Offline/);
    await sleep(500);
    await server.start();
    const up = Date.now();

    await waitForStatus(ada, "connected", 30000);
    await waitForStatus(bob, "connected", 30000);
    t.diagnostic(`both pages reconnected ${Date.now() - up} ms after the server was healthy again`);
    await waitFor("both back in the user list", async () => {
      const u = await users(ada);
      return u.includes("Ada") && u.includes("Bob") && u.length === 2;
    });

    await send(bob, "after the restart");
    await waitFor("at Ada", async () => (await texts(ada)).includes("after the restart"));
    await send(ada, "still chatting");
    await waitFor("at Bob", async () => (await texts(bob)).includes("still chatting"));
    const shown = await texts(ada);
    assert.deepEqual(shown, ["before the restart", "after the restart", "still chatting"]);
    // The server lost its history, so the page says messages may be missing.
    assert.equal(await ada.locator("#messages .divider").count(), 1);
    await ada.close();
    await bob.close();
  });

  test("messages sent while a page was offline show up there exactly once", async () => {
    const proxy = new TcpProxy(server.port);
    await proxy.listen();
    try {
      const ada = await openChat(proxy.origin, "Ada", "recovery");
      const bob = await openChat(server.origin, "Bob", "recovery");
      await send(bob, "one");
      await waitFor("one at Ada", async () => (await texts(ada)).includes("one"));

      proxy.cut();
      await waitForStatus(ada, "disconnected");
      await waitFor("Ada gone from Bob's list", async () => !(await users(bob)).includes("Ada"));
      await send(bob, "two (Ada is away)");
      await send(bob, "three (Ada is away)");
      await apiPublish(server.origin, API_KEY, "recovery", {
        text: "four, from a backend",
        nick: "backend",
        ts: Date.now(),
      });
      await waitFor("four at Bob", async () => (await texts(bob)).includes("four, from a backend"));
      await sleep(800);
      proxy.restore();

      await waitForStatus(ada, "connected", 30000);
      await waitFor("all at Ada", async () => (await texts(ada)).includes("four, from a backend"));
      await send(ada, "five, I am back");
      await waitFor("five at Bob", async () => (await texts(bob)).includes("five, I am back"));
      await sleep(300);
      const expected = ["one", "two (Ada is away)", "three (Ada is away)", "four, from a backend", "five, I am back"];
      const seen = await texts(ada);
      assert.deepEqual(seen, expected, "each once, in order");
      for (const text of expected) assert.equal(count(seen, text), 1);
      assert.equal(await ada.locator("#messages .divider").count(), 0, "recovered: nothing missing");
      assert.deepEqual(await texts(bob), expected);
      const senders = await ada.$$eval("#messages .msg .from", (els) => els.map((e) => e.textContent));
      assert.deepEqual(senders, ["Bob", "Bob", "Bob", "backend", "Ada"]);
      await ada.close();
      await bob.close();
    } finally {
      await proxy.close();
    }
  });
});
