// Unit tests for the parts of web/duplex.js that need no server: the reconnect
// backoff, the exactly-once stream position filter and URL derivation.
import { test } from "node:test";
import assert from "node:assert/strict";

import {
  backoffDelay,
  Client,
  DEFAULTS,
  DuplexError,
  joinPages,
  StreamPosition,
  wsUrl,
} from "../../../web/duplex.js";

test("backoff stays within [0, min(cap, base * 2^attempt))", () => {
  const opts = { minReconnectDelay: 100, maxReconnectDelay: 5000 };
  for (let attempt = 0; attempt < 40; attempt++) {
    const ceiling = Math.min(5000, 100 * 2 ** attempt);
    for (const r of [0, 0.25, 0.5, 0.999999]) {
      const d = backoffDelay(attempt, opts, () => r);
      assert.ok(Number.isInteger(d), `integer delay, got ${d}`);
      assert.ok(d >= 0 && d < ceiling, `attempt ${attempt}, r=${r}: ${d} not in [0, ${ceiling})`);
    }
    assert.equal(backoffDelay(attempt, opts, () => 0), 0, "full jitter reaches 0");
  }
});

test("backoff ceiling doubles per attempt until the cap", () => {
  const opts = { minReconnectDelay: 250, maxReconnectDelay: 8000 };
  const top = (a) => backoffDelay(a, opts, () => 0.999999999);
  assert.equal(top(0), 249);
  assert.equal(top(1), 499);
  assert.equal(top(2), 999);
  assert.equal(top(4), 3999);
  assert.equal(top(5), 7999);
  assert.equal(top(6), 7999, "capped");
  assert.equal(top(10_000), 7999, "huge attempt counts neither overflow nor exceed the cap");
});

test("backoff treats bad attempt counts as the first attempt", () => {
  const opts = { minReconnectDelay: 1000, maxReconnectDelay: 30000 };
  for (const a of [-3, NaN, undefined, "x"]) {
    assert.equal(backoffDelay(a, opts, () => 0.999999), 999);
  }
  assert.equal(backoffDelay(2.9, opts, () => 0.5), 2000, "fractional attempts round down");
});

test("backoff uses the library defaults when no options are given", () => {
  const d = backoffDelay(100);
  assert.ok(d >= 0 && d < DEFAULTS.maxReconnectDelay);
});

test("backoff delays are spread over the window (full jitter)", () => {
  let seed = 42;
  const rand = () => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed / 2 ** 31;
  };
  const opts = { minReconnectDelay: 1000, maxReconnectDelay: 1000 };
  const buckets = new Array(10).fill(0);
  for (let i = 0; i < 10_000; i++) buckets[Math.floor(backoffDelay(3, opts, rand) / 100)]++;
  for (const n of buckets) assert.ok(n > 800 && n < 1200, `uneven spread: ${buckets}`);
});

test("a fresh position asks for no recovery and accepts everything", () => {
  const p = new StreamPosition();
  assert.equal(p.since(), null);
  assert.equal(p.subscribed({ epoch: "e1", offset: 7, recovered: false }), false);
  assert.deepEqual(p.since(), { epoch: "e1", offset: 7 });
  assert.equal(p.accept(8), true);
  assert.equal(p.accept(9), true);
  assert.deepEqual(p.since(), { epoch: "e1", offset: 9 });
});

test("after a recovering resubscribe, replayed offsets already seen are dropped", () => {
  const p = new StreamPosition();
  p.subscribed({ epoch: "e1", offset: 0, recovered: false });
  for (const o of [1, 2, 3]) assert.equal(p.accept(o), true);
  // Reconnect: the server recovers from offset 3.
  assert.deepEqual(p.since(), { epoch: "e1", offset: 3 });
  assert.equal(p.subscribed({ epoch: "e1", offset: 6, recovered: true }), true);
  const delivered = [2, 3, 4, 5, 5, 4, 6, 7].filter((o) => p.accept(o));
  assert.deepEqual(delivered, [4, 5, 6, 7], "each offset once, nothing at or below the old position");
  assert.deepEqual(p.since(), { epoch: "e1", offset: 7 });
});

test("a new epoch resets the position: old offsets are not compared with new ones", () => {
  const p = new StreamPosition();
  p.subscribed({ epoch: "old", offset: 0, recovered: false });
  for (let o = 1; o <= 50; o++) p.accept(o);
  // The server restarted: new epoch, offsets start over.
  assert.equal(p.subscribed({ epoch: "new", offset: 0, recovered: false }), false);
  assert.equal(p.accept(1), true, "offset 1 of the new epoch is new even though 1 < 50");
  assert.deepEqual(p.since(), { epoch: "new", offset: 1 });
});

test("recovered:true for a different epoch is not trusted as a replay", () => {
  const p = new StreamPosition();
  p.subscribed({ epoch: "a", offset: 10, recovered: false });
  assert.equal(p.subscribed({ epoch: "b", offset: 3, recovered: true }), false);
  assert.deepEqual(p.since(), { epoch: "b", offset: 3 });
});

test("a window that passed (recovered:false, same epoch) jumps to the reply position", () => {
  const p = new StreamPosition();
  p.subscribed({ epoch: "e", offset: 0, recovered: false });
  p.accept(1);
  assert.equal(p.subscribed({ epoch: "e", offset: 500, recovered: false }), false);
  assert.deepEqual(p.since(), { epoch: "e", offset: 500 });
  assert.equal(p.accept(501), true);
  assert.equal(p.accept(501), false);
});

test("publications without an offset are passed through", () => {
  const p = new StreamPosition();
  assert.equal(p.accept(undefined), true);
  assert.equal(p.since(), null);
});

test("wsUrl follows the page scheme and host", () => {
  assert.equal(wsUrl("/ws", { protocol: "http:", host: "127.0.0.1:8080" }), "ws://127.0.0.1:8080/ws");
  assert.equal(wsUrl("/ws", { protocol: "https:", host: "chat.example.com" }), "wss://chat.example.com/ws");
  assert.equal(wsUrl("/hub", { protocol: "https:", host: "[::1]:9443" }), "wss://[::1]:9443/hub");
  assert.throws(() => wsUrl("/ws", null), /no location/);
});

test("the client refuses URLs that are not ws:// or wss://", () => {
  assert.throws(() => new Client("http://127.0.0.1/ws"), TypeError);
  assert.throws(() => new Client(undefined), TypeError);
});

test("requests on a closed client are rejected with code closed", async () => {
  const c = new Client("ws://127.0.0.1:9/ws");
  c.close();
  assert.equal(c.state, "closed");
  await assert.rejects(c.publish("lobby", 1), (e) => e instanceof DuplexError && e.code === "closed");
});

test("a request waiting for a connection times out with code timeout", async () => {
  const c = new Client("ws://127.0.0.1:9/ws"); // never connected
  const t0 = Date.now();
  await assert.rejects(
    c.presence("lobby", { timeout: 50 }),
    (e) => e instanceof DuplexError && e.code === "timeout",
  );
  assert.ok(Date.now() - t0 >= 45);
});

test("subscribing twice to one channel is refused", () => {
  const c = new Client("ws://127.0.0.1:9/ws");
  c.subscribe("lobby");
  assert.throws(() => c.subscribe("lobby"), /already subscribed/);
  assert.throws(() => c.subscribe(""), TypeError);
});

test("joinPages concatenates the paged array and drops more", () => {
  const joined = joinPages([
    { type: "reply", id: 1, epoch: "e", offset: 9, publications: [{ offset: 1 }], more: true },
    { type: "reply", id: 1, epoch: "e", offset: 9, publications: [{ offset: 2 }, { offset: 3 }], more: true },
    { type: "reply", id: 1, epoch: "e", offset: 9, publications: [{ offset: 4 }], complete: true },
  ]);
  assert.deepEqual(joined, {
    type: "reply",
    id: 1,
    epoch: "e",
    offset: 9,
    publications: [{ offset: 1 }, { offset: 2 }, { offset: 3 }, { offset: 4 }],
    complete: true,
  });
  const one = { type: "reply", id: 2, channel: "c", clients: [{ client: "a" }] };
  assert.deepEqual(joinPages([one]), one);
});

/** A WebSocket stand-in: `server` answers each sent command with a list of frames. */
function fakeSocket(server, gap = 5) {
  return class FakeWebSocket {
    constructor() {
      this.readyState = 0;
      setTimeout(() => {
        this.readyState = 1;
        this.onmessage?.({ data: JSON.stringify({ type: "welcome", client: "k1", user: null }) });
      }, 0);
    }
    send(text) {
      const frames = server(JSON.parse(text));
      frames.forEach((f, i) => setTimeout(() => this.onmessage?.({ data: JSON.stringify(f) }), gap * i));
    }
    close() {
      this.readyState = 3;
    }
  };
}

test("history and presence resolve with every page of a paged reply", async () => {
  const WebSocket = fakeSocket((cmd) => {
    if (cmd.type === "history") {
      return [
        { type: "reply", id: cmd.id, channel: "c", epoch: "e", offset: 3, publications: [{ offset: 1 }], more: true },
        { type: "message", channel: "c", offset: 4, data: 1 },
        { type: "reply", id: cmd.id, channel: "c", epoch: "e", offset: 3, publications: [{ offset: 2 }], more: true },
        { type: "reply", id: cmd.id, channel: "c", epoch: "e", offset: 3, publications: [{ offset: 3 }] },
      ];
    }
    const page = (n, more) => ({ type: "reply", id: cmd.id, channel: "c", clients: [{ client: n }], ...more });
    return [page("a", { more: true }), page("b", {})];
  });
  const c = new Client("ws://127.0.0.1:9/ws", { WebSocket, pingInterval: 60000 }).connect();
  await c.ready(1000);
  const h = await c.history("c", { limit: 100, timeout: 1000 });
  assert.deepEqual(h.publications.map((p) => p.offset), [1, 2, 3]);
  assert.equal(h.more, undefined);
  const p = await c.presence("c", { timeout: 1000 });
  assert.deepEqual(p.clients.map((e) => e.client), ["a", "b"]);
  c.close();
});

test("each page of a paged reply restarts the request timeout", async () => {
  const WebSocket = fakeSocket(
    (cmd) =>
      [1, 2, 3, 4, 5].map((n) => ({
        type: "reply",
        id: cmd.id,
        channel: "c",
        clients: [{ client: String(n) }],
        ...(n < 5 ? { more: true } : {}),
      })),
    120,
  );
  const c = new Client("ws://127.0.0.1:9/ws", { WebSocket, pingInterval: 60000 }).connect();
  await c.ready(1000);
  // Pages arrive 120 ms apart: 480 ms in all, more than the 300 ms timeout of one page.
  const p = await c.presence("c", { timeout: 300 });
  assert.equal(p.clients.length, 5);
  c.close();
});

test("rpc resolves with the application's result and rejects with the server's code", async () => {
  const sent = [];
  const WebSocket = fakeSocket((cmd) => {
    sent.push(cmd);
    if (cmd.method === "add") return [{ type: "reply", id: cmd.id, result: cmd.data.a + cmd.data.b }];
    if (cmd.method === "nothing") return [{ type: "reply", id: cmd.id, result: null }];
    return [{ type: "error", id: cmd.id, code: "backend_timeout", message: "the application did not answer in time" }];
  });
  const c = new Client("ws://127.0.0.1:9/ws", { WebSocket, pingInterval: 60000 }).connect();
  await c.ready(1000);
  assert.equal(await c.rpc("add", { a: 2, b: 3 }, { timeout: 1000 }), 5);
  assert.equal(await c.rpc("nothing"), null);
  await assert.rejects(c.rpc("slow"), (e) => e instanceof DuplexError && e.code === "backend_timeout");
  assert.deepEqual(
    sent.map(({ type, method, data }) => ({ type, method, data })),
    [
      { type: "rpc", method: "add", data: { a: 2, b: 3 } },
      { type: "rpc", method: "nothing", data: null },
      { type: "rpc", method: "slow", data: null },
    ],
  );
  c.close();
});

test("latest values after a fresh subscribe are marked latest; skipped offsets are no loss", async () => {
  const sent = [];
  const WebSocket = fakeSocket((cmd) => {
    sent.push(cmd);
    if (cmd.type === "subscribe") {
      return [
        { type: "reply", id: cmd.id, channel: "px", epoch: "e", offset: 9 },
        { type: "message", channel: "px", offset: 7, data: 1, key: "A" },
        { type: "message", channel: "px", offset: 9, data: 2, key: "B" },
        // Live, after a conflated gap.
        { type: "message", channel: "px", offset: 12, data: 3, key: "A" },
      ];
    }
    return [{ type: "reply", id: cmd.id, channel: "px", epoch: "e", offset: 13 }];
  });
  const c = new Client("ws://127.0.0.1:9/ws", { WebSocket, pingInterval: 60000 }).connect();
  await c.ready(1000);
  const got = [];
  const sub = c.subscribe("px", { message: (m) => got.push([m.offset, m.key, m.latest === true]) });
  const until = Date.now() + 2000;
  while (got.length < 3 && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(got, [
    [7, "A", true],
    [9, "B", true],
    [12, "A", false],
  ]);
  assert.deepEqual(sub.position.since(), { epoch: "e", offset: 12 });
  await sub.publish(5, { key: "B", timeout: 1000 });
  assert.deepEqual(sent.at(-1), { type: "publish", id: sent.at(-1).id, channel: "px", data: 5, key: "B" });
  c.close();
});

test("server-side subscriptions are events; their publications reach the client, once", async () => {
  const WebSocket = fakeSocket((cmd) => {
    if (cmd.type === "ping") {
      // The server subscribes this connection on its own, publishes, then ends it.
      return [
        { type: "subscribed", channel: "user:#k1", epoch: "e", offset: 4 },
        { type: "message", channel: "user:#k1", offset: 5, data: "a" },
        { type: "message", channel: "user:#k1", offset: 5, data: "a" },
        { type: "message", channel: "user:#k1", offset: 6, data: "b" },
        { type: "unsubscribed", channel: "user:#k1" },
        { type: "message", channel: "user:#k1", offset: 7, data: "late" },
        { type: "pong", id: cmd.id },
      ];
    }
    return [];
  });
  const c = new Client("ws://127.0.0.1:9/ws", { WebSocket, pingInterval: 60000 }).connect();
  await c.ready(1000);
  const events = [];
  c.on("subscribed", (e) => events.push(["subscribed", e.channel, e.offset, e.server]));
  c.on("unsubscribed", (e) => events.push(["unsubscribed", e.channel, e.server]));
  c.on("message", (m) => events.push(["message", m.offset, m.data]));
  await c.request({ type: "ping" }, { timeout: 1000 });
  assert.deepEqual(events, [
    ["subscribed", "user:#k1", 4, true],
    ["message", 5, "a"],
    ["message", 6, "b"],
    ["unsubscribed", "user:#k1", true],
  ]);
  c.close();
});
