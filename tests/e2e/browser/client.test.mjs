// duplex.js in headless Chromium against the real server: every command, the
// error replies, presence events, recovery across dropped and stalled
// connections, token refresh and close().
import { after, before, describe, test } from "node:test";
import assert from "node:assert/strict";

import {
  TcpProxy,
  apiPublish,
  launchBrowser,
  newPage,
  signJwt,
  sleep,
  startServer,
  waitFor,
} from "../lib/harness.mjs";

const API_KEY = "e2e-api-key";
const JWT_SECRET = "e2e-jwt-secret-0123456789abcdef";
const CONFIG = `
[api]
key = "${API_KEY}"

[auth]
anonymous = true
jwt_secret = "${JWT_SECRET}"

[websocket.compression]
enabled = true

[namespaces.private]
subscription_token = true
`;

// Installed in every test page: `probe(name, url, options)` makes a Client that
// records everything it sees in `client.rec`, readable from the test.
function installProbe() {
  window.clients = {};
  window.probe = (name, url, opts = {}) => {
    const { Client } = window.duplex;
    const rec = { states: [], welcomes: [], messages: {}, joins: [], leaves: [], subscribed: [], errors: [] };
    const c = new Client(url, { ...opts, onstate: (e) => rec.states.push(e.state) });
    c.on("welcome", (w) => rec.welcomes.push(w));
    c.on("error", (e) => rec.errors.push({ code: e.code, message: e.message }));
    c.rec = rec;
    c.sub = (channel, info, extra = {}) =>
      c.subscribe(
        channel,
        {
          message: (m) => (rec.messages[channel] ||= []).push(m),
          join: (j) => rec.joins.push(j),
          leave: (l) => rec.leaves.push(l),
          subscribed: (ctx) =>
            rec.subscribed.push({
              channel,
              epoch: ctx.epoch,
              offset: ctx.offset,
              recovered: ctx.recovered,
              resubscribed: ctx.resubscribed,
            }),
          error: (e) => rec.errors.push({ channel, code: e.code, message: e.message }),
        },
        { info, ...extra },
      );
    window.clients[name] = c;
    return c;
  };
}

describe("duplex.js against duplex serve", () => {
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

  /** A blank page of `origin` with duplex.js imported and the probe installed. */
  async function libPage(origin = server.origin) {
    const page = await newPage(browser);
    pages.push(page);
    await page.goto(`${origin}/healthz`);
    await page.evaluate(async () => {
      window.duplex = await import("/duplex.js");
    });
    await page.evaluate(installProbe);
    return page;
  }

  const rec = (page, name) => page.evaluate((n) => window.clients[n].rec, name);
  const offsets = (r, channel) => (r.messages[channel] || []).map((m) => m.offset);

  test("connects with the duplex.v1 subprotocol and reports its states", async () => {
    const page = await libPage();
    const out = await page.evaluate(async () => {
      const c = window.probe("a", window.duplex.wsUrl());
      c.connect();
      await c.ready(5000);
      return { protocol: c.protocol, clientId: c.clientId, user: c.user, rec: c.rec };
    });
    assert.equal(out.protocol, "duplex.v1");
    assert.equal(typeof out.clientId, "string");
    assert.ok(out.clientId.length > 0);
    assert.equal(out.user, null, "anonymous");
    assert.deepEqual(out.rec.states, ["connecting", "connected"]);
    assert.equal(out.rec.welcomes[0].client, out.clientId);
    const rtt = await page.evaluate(() => window.clients.a.ping());
    assert.ok(rtt >= 0 && rtt < 2000, `ping round trip ${rtt} ms`);
    await page.close();
  });

  test("Chromium negotiates permessage-deflate and duplex.v1; large publications arrive intact", async () => {
    const page = await libPage();
    const out = await page.evaluate(async () => {
      // A bare WebSocket, to see what the browser itself negotiated.
      const ws = new WebSocket(window.duplex.wsUrl(), "duplex.v1");
      await new Promise((resolve, reject) => {
        ws.onopen = resolve;
        ws.onerror = () => reject(new Error("WebSocket failed"));
      });
      const seen = { protocol: ws.protocol, extensions: ws.extensions };
      ws.close();
      // Through duplex.js: 20 KB out (compressed by Chromium) and back (by the server).
      const url = window.duplex.wsUrl();
      const a = window.probe("a", url).connect();
      a.sub("lib-deflate");
      await a.ready(5000);
      const start = Date.now();
      while (!a.rec.subscribed.length && Date.now() - start < 5000) await new Promise((r) => setTimeout(r, 20));
      const rows = "price 101.25 volume 3000; ".repeat(800);
      await a.publish("lib-deflate", { rows });
      while (!(a.rec.messages["lib-deflate"] || []).length && Date.now() - start < 5000) {
        await new Promise((r) => setTimeout(r, 20));
      }
      const got = (a.rec.messages["lib-deflate"] || [])[0];
      return { ...seen, same: got?.data?.rows === rows };
    });
    assert.equal(out.protocol, "duplex.v1");
    assert.match(out.extensions, /^permessage-deflate/);
    assert.ok(out.same, "the 20 KB publication came back unchanged");
    await page.close();
  });

  test("publish resolves with the offset and subscribers get each publication once", async () => {
    const page = await libPage();
    const out = await page.evaluate(async () => {
      const url = window.duplex.wsUrl();
      const a = window.probe("a", url).connect();
      const b = window.probe("b", url).connect();
      a.sub("lib-publish");
      await a.ready(5000);
      await b.ready(5000);
      const start = Date.now();
      while (!a.rec.subscribed.length && Date.now() - start < 5000) await new Promise((r) => setTimeout(r, 20));
      const replies = [];
      for (let i = 1; i <= 5; i++) replies.push(await b.publish("lib-publish", { n: i }));
      return { replies, subscribed: a.rec.subscribed };
    });
    assert.equal(out.subscribed.length, 1);
    assert.equal(out.subscribed[0].recovered, false);
    const base = out.subscribed[0].offset;
    assert.deepEqual(
      out.replies.map((r) => r.offset),
      [1, 2, 3, 4, 5].map((i) => base + i),
      "offsets grow by one per publication",
    );
    assert.ok(out.replies.every((r) => r.type === "reply" && r.epoch === out.subscribed[0].epoch));
    const a = await waitFor("5 messages at a", async () => {
      const r = await rec(page, "a");
      return offsets(r, "lib-publish").length >= 5 && r;
    });
    await sleep(200);
    const msgs = (await rec(page, "a")).messages["lib-publish"];
    assert.deepEqual(
      msgs.map((m) => m.data.n),
      [1, 2, 3, 4, 5],
      "each once, in order",
    );
    const bId = await page.evaluate(() => window.clients.b.clientId);
    assert.ok(msgs.every((m) => m.from === bId && m.channel === "lib-publish"));
    assert.ok(a);
    await page.close();
  });

  test("error replies reject with the server's code and the connection stays usable", async () => {
    const page = await libPage();
    const out = await page.evaluate(async () => {
      const c = window.probe("a", window.duplex.wsUrl()).connect();
      await c.ready(5000);
      const codeOf = (p) => p.then(() => "resolved", (e) => `${e.name}:${e.code}`);
      const bad = await codeOf(c.publish("bad channel!", 1));
      const forbidden = await codeOf(c.publish("ticker:prices", { symbol: "X", price: 1 }));
      const ns = await codeOf(c.publish("nosuchns:room", 1));
      const notSub = await codeOf(c.request({ type: "unsubscribe", channel: "never-joined" }));
      const unknown = await codeOf(c.request({ type: "frobnicate" }));
      const big = await codeOf(c.publish("lib-errors", "x".repeat(40000)));
      c.sub("bad channel!");
      const start = Date.now();
      while (!c.rec.errors.length && Date.now() - start < 5000) await new Promise((r) => setTimeout(r, 20));
      const ok = await c.publish("lib-errors", { still: "works" });
      return {
        bad,
        forbidden,
        ns,
        notSub,
        unknown,
        big,
        subErrors: c.rec.errors,
        subState: c.subscription("bad channel!") ?? "removed",
        ok: ok.type,
        state: c.state,
      };
    });
    assert.equal(out.bad, "DuplexError:bad_channel");
    assert.equal(out.forbidden, "DuplexError:forbidden");
    assert.equal(out.ns, "DuplexError:unknown_namespace");
    assert.equal(out.notSub, "DuplexError:not_subscribed");
    assert.equal(out.unknown, "DuplexError:unknown_type");
    assert.equal(out.big, "DuplexError:too_large");
    assert.equal(out.subErrors.length, 1);
    assert.equal(out.subErrors[0].channel, "bad channel!");
    assert.equal(out.subErrors[0].code, "bad_channel");
    assert.equal(out.subState, "removed", "a refused subscription is dropped, not retried");
    assert.equal(out.ok, "reply");
    assert.equal(out.state, "connected");
    await page.close();
  });

  test("presence lists subscribers with their info; join and leave are delivered", async () => {
    const page = await libPage();
    await page.evaluate(async () => {
      const url = window.duplex.wsUrl();
      const a = window.probe("a", url).connect();
      a.sub("lib-presence", { name: "ada" });
      await a.ready(5000);
    });
    await waitFor("a subscribed", async () => (await rec(page, "a")).subscribed.length === 1);
    await page.evaluate(async () => {
      const b = window.probe("b", window.duplex.wsUrl()).connect();
      b.sub("lib-presence", { name: "bob" });
      await b.ready(5000);
    });
    const ids = await page.evaluate(() => ({ a: window.clients.a.clientId, b: window.clients.b.clientId }));
    const join = await waitFor("join of bob at a", async () =>
      (await rec(page, "a")).joins.find((j) => j.client === ids.b),
    );
    assert.equal(join.channel, "lib-presence");
    assert.deepEqual(join.info, { name: "bob" });
    assert.equal(join.user, null);

    const presence = await page.evaluate(() => window.clients.a.presence("lib-presence"));
    const byClient = Object.fromEntries(presence.clients.map((c) => [c.client, c]));
    assert.equal(presence.clients.length, 2);
    assert.deepEqual(byClient[ids.a].info, { name: "ada" });
    assert.deepEqual(byClient[ids.b].info, { name: "bob" });
    // The counts alone, from the client and from the subscription: anonymous, so no users.
    const stats = await page.evaluate(async () => ({
      client: await window.clients.a.presenceStats("lib-presence"),
      sub: await window.clients.b.subscription("lib-presence").presenceStats(),
    }));
    for (const s of [stats.client, stats.sub]) {
      assert.equal(s.channel, "lib-presence");
      assert.equal(s.clients, 2);
      assert.equal(s.users, 0);
    }

    await page.evaluate(() => window.clients.b.subscription("lib-presence").unsubscribe());
    const leave = await waitFor("leave of bob at a", async () =>
      (await rec(page, "a")).leaves.find((l) => l.client === ids.b),
    );
    assert.deepEqual(leave.info, { name: "bob" });
    const after = await page.evaluate(() => window.clients.a.presence("lib-presence"));
    assert.deepEqual(
      after.clients.map((c) => c.client),
      [ids.a],
    );
    await page.close();
  });

  test("history is oldest first; after unsubscribe nothing more is delivered", async () => {
    const page = await libPage();
    const out = await page.evaluate(async () => {
      const c = window.probe("a", window.duplex.wsUrl()).connect();
      const sub = c.sub("lib-history");
      await c.ready(5000);
      for (let i = 1; i <= 6; i++) await c.publish("lib-history", { n: i });
      const h = await sub.history({ limit: 3 });
      await new Promise((r) => setTimeout(r, 200));
      const before = c.rec.messages["lib-history"].length;
      await sub.unsubscribe();
      await c.publish("lib-history", { n: 7 });
      await new Promise((r) => setTimeout(r, 300));
      return { h, before, afterCount: c.rec.messages["lib-history"].length, state: sub.state };
    });
    assert.deepEqual(
      out.h.publications.map((p) => p.data.n),
      [4, 5, 6],
    );
    const offs = out.h.publications.map((p) => p.offset);
    assert.deepEqual(offs, [...offs].sort((x, y) => x - y), "oldest first");
    assert.equal(out.h.offset, offs[2]);
    assert.equal(out.before, 6);
    assert.equal(out.afterCount, 6, "no message after unsubscribe");
    assert.equal(out.state, "unsubscribed");
    await page.close();
  });

  test("a history larger than the outbound queue resolves with every page joined", async () => {
    const page = await libPage();
    const out = await page.evaluate(async () => {
      const c = window.probe("a", window.duplex.wsUrl()).connect();
      await c.ready(5000);
      // 40 publications of 32 KB: 1.3 MB, more than the server's 1 MiB queue.
      const big = "x".repeat(32000);
      for (let i = 1; i <= 40; i++) await c.publish("lib-paged", { n: i, big });
      const h = await c.history("lib-paged", { limit: 100 });
      return { n: h.publications.map((p) => p.data.n), more: h.more, state: c.state };
    });
    assert.deepEqual(out.n, Array.from({ length: 40 }, (_, i) => i + 1));
    assert.equal(out.more, undefined);
    assert.equal(out.state, "connected");
    await page.close();
  });

  test("a dropped link: reconnect with backoff, recover the missed publications exactly once", async () => {
    const proxy = new TcpProxy(server.port);
    await proxy.listen();
    const page = await libPage(proxy.origin);
    try {
      await page.evaluate(async () => {
        const c = window.probe("a", window.duplex.wsUrl(), { minReconnectDelay: 100, maxReconnectDelay: 400 });
        c.sub("lib-drop");
        c.connect();
        await c.ready(5000);
      });
      await waitFor("subscribed", async () => (await rec(page, "a")).subscribed.length === 1);
      for (let i = 1; i <= 3; i++) await apiPublish(server.origin, API_KEY, "lib-drop", { n: i });
      await waitFor("first 3", async () => offsets(await rec(page, "a"), "lib-drop").length === 3);

      proxy.cut();
      await waitFor("disconnected", async () => (await page.evaluate(() => window.clients.a.state)) !== "connected");
      // Published while the client is away.
      for (let i = 4; i <= 10; i++) await apiPublish(server.origin, API_KEY, "lib-drop", { n: i });
      // A publish issued while disconnected waits for the connection.
      const queued = page.evaluate(() => window.clients.a.publish("lib-drop", { n: 11 }, { timeout: 10000 }));
      await sleep(700); // a few refused attempts
      proxy.restore();
      const reply = await queued;
      assert.equal(reply.type, "reply");

      const r = await waitFor("11 messages", async () => {
        const x = await rec(page, "a");
        return offsets(x, "lib-drop").length >= 11 && x;
      });
      await sleep(300);
      const final = await rec(page, "a");
      assert.deepEqual(
        final.messages["lib-drop"].map((m) => m.data.n),
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
        "no gap, no duplicate, in order",
      );
      assert.equal(r.subscribed.length, 2);
      assert.equal(r.subscribed[1].recovered, true);
      assert.equal(r.subscribed[1].resubscribed, true);
      assert.ok(proxy.accepted >= 2);
      const states = final.states.join(",");
      assert.match(states, /^connecting,connected,disconnected,(connecting,disconnected,)*connecting,connected$/);
      assert.ok(final.states.filter((s) => s === "connecting").length >= 3, `retried: ${states}`);
    } finally {
      await page.close();
      await proxy.close();
    }
  });

  test("a stalled link is detected by the heartbeat and recovered", async (t) => {
    const proxy = new TcpProxy(server.port);
    await proxy.listen();
    const page = await libPage(proxy.origin);
    try {
      await page.evaluate(async () => {
        const c = window.probe("a", window.duplex.wsUrl(), {
          pingInterval: 400,
          pongTimeout: 600,
          minReconnectDelay: 100,
          maxReconnectDelay: 300,
        });
        c.sub("lib-stall");
        c.connect();
        await c.ready(5000);
      });
      await waitFor("subscribed", async () => (await rec(page, "a")).subscribed.length === 1);
      await apiPublish(server.origin, API_KEY, "lib-stall", { n: 1 });
      await waitFor("first", async () => offsets(await rec(page, "a"), "lib-stall").length === 1);

      // Idle pings keep a healthy connection up.
      await sleep(1500);
      assert.equal(await page.evaluate(() => window.clients.a.state), "connected");

      proxy.stall();
      const t0 = Date.now();
      for (let i = 2; i <= 5; i++) await apiPublish(server.origin, API_KEY, "lib-stall", { n: i });
      await waitFor(
        "heartbeat timeout",
        async () => (await page.evaluate(() => window.clients.a.state)) !== "connected",
        { timeout: 5000, interval: 25 },
      );
      const detected = Date.now() - t0;
      assert.ok(detected < 2500, `dead link detected after ${detected} ms`);
      t.diagnostic(`stalled link detected after ${detected} ms (ping interval 400 ms, pong timeout 600 ms)`);
      proxy.restore();
      await waitFor("5 messages", async () => offsets(await rec(page, "a"), "lib-stall").length >= 5);
      await sleep(300);
      const r = await rec(page, "a");
      assert.deepEqual(
        r.messages["lib-stall"].map((m) => m.data.n),
        [1, 2, 3, 4, 5],
      );
      assert.equal(r.subscribed.at(-1).recovered, true);
    } finally {
      await page.close();
      await proxy.close();
    }
  });

  test("a request times out when no reply comes", async () => {
    const proxy = new TcpProxy(server.port);
    await proxy.listen();
    const page = await libPage(proxy.origin);
    try {
      await page.evaluate(async () => {
        const c = window.probe("a", window.duplex.wsUrl());
        c.connect();
        await c.ready(5000);
      });
      proxy.stall();
      const out = await page.evaluate(async () => {
        const t0 = performance.now();
        const code = await window.clients.a.presence("lobby", { timeout: 300 }).then(
          () => "resolved",
          (e) => e.code,
        );
        return { code, ms: performance.now() - t0 };
      });
      assert.equal(out.code, "timeout");
      assert.ok(out.ms >= 290 && out.ms < 2000, `${out.ms} ms`);
    } finally {
      await page.close();
      await proxy.close();
    }
  });

  test("getToken is asked again for every connection", async () => {
    const proxy = new TcpProxy(server.port);
    await proxy.listen();
    const page = await libPage(proxy.origin);
    const exp = Math.floor(Date.now() / 1000) + 3600;
    const tokens = [
      signJwt({ sub: "mallory", exp }, "not-the-secret"), // refused with 401
      signJwt({ sub: "alice", exp }, JWT_SECRET),
      signJwt({ sub: "bob", exp }, JWT_SECRET),
    ];
    try {
      await page.evaluate(async (tokens) => {
        window.tokenCalls = 0;
        const c = window.probe("a", window.duplex.wsUrl(), {
          minReconnectDelay: 100,
          maxReconnectDelay: 300,
          getToken: async () => tokens[Math.min(window.tokenCalls++, tokens.length - 1)],
        });
        c.connect();
        await c.ready(10000);
      }, tokens);
      let r = await rec(page, "a");
      assert.equal(r.welcomes.length, 1);
      assert.equal(r.welcomes[0].user, "alice", "the refused token was replaced on retry");
      assert.equal(await page.evaluate(() => window.tokenCalls), 2);

      proxy.cut();
      await sleep(200);
      proxy.restore();
      r = await waitFor("second welcome", async () => {
        const x = await rec(page, "a");
        return x.welcomes.length === 2 && x;
      });
      assert.equal(r.welcomes[1].user, "bob");
      assert.equal(await page.evaluate(() => window.clients.a.user), "bob");
    } finally {
      await page.close();
      await proxy.close();
    }
  });

  test("an open connection refreshes its token before it expires and stays open", async () => {
    const page = await libPage();
    const nowS = Math.floor(Date.now() / 1000);
    const tokens = [
      signJwt({ sub: "alice", exp: nowS + 3 }, JWT_SECRET),
      signJwt({ sub: "alice", exp: nowS + 3600 }, JWT_SECRET),
    ];
    try {
      await page.evaluate(async (tokens) => {
        window.tokenCalls = 0;
        const c = window.probe("r", window.duplex.wsUrl(), {
          getToken: async () => tokens[Math.min(window.tokenCalls++, tokens.length - 1)],
        });
        c.connect();
        await c.ready(10000);
      }, tokens);
      let r = await rec(page, "r");
      assert.ok(r.welcomes[0].expires_in <= 3, JSON.stringify(r.welcomes[0]));
      // Past the first token's exp: refreshed in place, no close, no second welcome.
      await sleep(4500);
      r = await rec(page, "r");
      assert.equal(await page.evaluate(() => window.tokenCalls), 2);
      assert.equal(r.welcomes.length, 1, JSON.stringify(r.states));
      assert.deepEqual(r.errors, []);
      assert.equal(await page.evaluate(() => window.clients.r.state), "connected");
      const pong = await page.evaluate(() => window.clients.r.request({ type: "ping" }));
      assert.equal(pong.type, "pong");
    } finally {
      await page.close();
    }
  });

  test("getSubscriptionToken is asked before every subscribe and resubscribe", async () => {
    const proxy = new TcpProxy(server.port);
    await proxy.listen();
    const page = await libPage(proxy.origin);
    const exp = Math.floor(Date.now() / 1000) + 3600;
    // An anonymous connection's subscription tokens name the user "".
    const token = signJwt({ sub: "", channel: "private:room", exp }, JWT_SECRET);
    try {
      await page.evaluate(async (token) => {
        window.asked = [];
        const c = window.probe("p", window.duplex.wsUrl(), {
          minReconnectDelay: 100,
          maxReconnectDelay: 300,
          getSubscriptionToken: async (channel) => {
            window.asked.push(channel);
            return channel === "private:room" ? token : null;
          },
        });
        c.connect();
        await c.ready(10000);
        c.sub("private:room");
        c.sub("private:nope");
      }, token);
      let r = await waitFor("subscribed and refused", async () => {
        const x = await rec(page, "p");
        return x.subscribed.length === 1 && x.errors.some((e) => e.channel === "private:nope") && x;
      });
      assert.equal(r.subscribed[0].channel, "private:room");
      const refusal = r.errors.find((e) => e.channel === "private:nope");
      assert.equal(refusal.code, "forbidden", JSON.stringify(refusal));
      await apiPublish(server.origin, API_KEY, "private:room", { n: 1 });
      await waitFor("publication", async () => offsets(await rec(page, "p"), "private:room").length === 1);

      proxy.cut();
      await sleep(200);
      proxy.restore();
      r = await waitFor("resubscribed", async () => {
        const x = await rec(page, "p");
        return x.subscribed.length === 2 && x;
      });
      assert.equal(r.subscribed[1].resubscribed, true);
      const asked = await page.evaluate(() => window.asked);
      assert.deepEqual(asked.filter((c) => c === "private:room").length, 2, JSON.stringify(asked));
    } finally {
      await page.close();
      await proxy.close();
    }
  });

  test("close() ends the connection for good and rejects pending commands", async () => {
    const page = await libPage();
    const out = await page.evaluate(async () => {
      const url = window.duplex.wsUrl();
      const a = window.probe("a", url).connect();
      const b = window.probe("b", url).connect();
      a.sub("lib-close");
      await a.ready(5000);
      await b.ready(5000);
      await new Promise((r) => setTimeout(r, 200));
      const before = (await b.presence("lib-close")).clients.length;
      const pending = a.presence("lib-close").then(
        () => "resolved",
        (e) => e.code,
      );
      a.close();
      const pendingCode = await pending;
      const later = await a.publish("lib-close", 1).then(
        () => "resolved",
        (e) => e.code,
      );
      await new Promise((r) => setTimeout(r, 800));
      const afterCount = (await b.presence("lib-close")).clients.length;
      return { before, pendingCode, later, afterCount, states: a.rec.states };
    });
    assert.equal(out.before, 1);
    assert.equal(out.pendingCode, "closed");
    assert.equal(out.later, "closed");
    assert.equal(out.afterCount, 0, "the server saw the connection end");
    assert.deepEqual(out.states, ["connecting", "connected", "closed"], "no reconnect after close()");
    await page.close();
  });
});
