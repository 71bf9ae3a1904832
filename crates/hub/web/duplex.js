// duplex.js: the browser client for a `duplex serve` hub.
//
// An ES module with no dependencies and no build step. It speaks the `duplex.v1`
// JSON protocol over one WebSocket (see docs/protocol.md) and adds what
// hand-rolled WebSocket code usually lacks: request ids with timeouts, automatic
// reconnection with capped exponential backoff and full jitter, resubscription
// with recovery from the last seen stream position (no gap, no duplicate),
// heartbeat-based detection of dead connections, and state events.
//
//     import { Client, wsUrl } from "/duplex.js";
//
//     const client = new Client(wsUrl(), { onstate: (e) => console.log(e.state) });
//     const room = client.subscribe("chat:lobby", {
//       message: (m) => console.log(m.from, m.data),
//       join: (p) => console.log("joined", p),
//     });
//     client.connect();
//     await room.publish({ text: "hello" });

/** Error codes after which a subscribe is retried rather than given up. */
const TRANSIENT = new Set(["timeout", "rate_limited", "unavailable", "internal"]);

/** The WebSocket subprotocol this client speaks. */
export const SUBPROTOCOL = "duplex.v1";

/**
 * Connection states, in the order a connection usually goes through them.
 *
 * - `disconnected`: not connected; a reconnect may be scheduled (see the
 *   `delay` field of the state event).
 * - `connecting`: a WebSocket is being opened and the server's `welcome` is awaited.
 * - `connected`: the server said `welcome`; commands flow.
 * - `closed`: {@link Client#close} was called; nothing happens until
 *   {@link Client#connect} is called again.
 */
export const State = Object.freeze({
  DISCONNECTED: "disconnected",
  CONNECTING: "connecting",
  CONNECTED: "connected",
  CLOSED: "closed",
});

/** Default options of {@link Client}; each can be overridden per client. */
export const DEFAULTS = Object.freeze({
  /** First reconnect delay ceiling in ms; the ceiling doubles per failed attempt. */
  minReconnectDelay: 500,
  /** Cap of the reconnect delay ceiling in ms. */
  maxReconnectDelay: 20000,
  /** A connection that stayed up this long (ms) resets the backoff when it drops. */
  stableAfter: 5000,
  /** How long (ms) a command waits for its reply before it is rejected with `timeout`. */
  requestTimeout: 10000,
  /** How long (ms) opening the socket and receiving `welcome` may take. */
  connectTimeout: 10000,
  /**
   * After this long (ms) with nothing received, the client sends an app-level
   * ping. When not set, the server's `ping_interval_ms` from `welcome` is used,
   * or 25000 if the server gives none.
   */
  pingInterval: undefined,
  /** If nothing at all arrives this long (ms) after that ping, the connection is dead. */
  pongTimeout: 10000,
});

/**
 * The error type of every rejected promise and every `error` callback.
 *
 * `code` is the server's snake_case error code (for example `bad_channel`) or
 * one of the client's own: `timeout`, `disconnected`, `closed`, `not_connected`.
 */
export class DuplexError extends Error {
  /**
   * @param {string} code machine-readable snake_case code
   * @param {string} message human-readable text
   * @param {object} [reply] the server's full error reply, when there is one
   */
  constructor(code, message, reply) {
    super(message || code);
    this.name = "DuplexError";
    /** @type {string} */
    this.code = code;
    /** @type {object|undefined} */
    this.reply = reply;
  }
}

/**
 * Returns the WebSocket URL of the hub that served the current page:
 * `ws://host/ws` for http pages and `wss://host/ws` for https pages, so the same
 * page works directly and behind a TLS-terminating proxy.
 *
 * @param {string} [path="/ws"] the WebSocket endpoint path
 * @param {{protocol: string, host: string}} [loc=globalThis.location] the page location
 * @returns {string}
 */
export function wsUrl(path = "/ws", loc = globalThis.location) {
  if (!loc) throw new Error("wsUrl: no location; pass the WebSocket URL explicitly");
  const scheme = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${loc.host}${path}`;
}

/**
 * The delay before reconnect attempt `attempt` (0-based): exponential backoff
 * with full jitter, a random value in `[0, min(max, min * 2^attempt))`. Full
 * jitter spreads a crowd of clients that lost the same server over the whole
 * window instead of having them return in waves.
 *
 * @param {number} attempt failed attempts so far (0 for the first retry)
 * @param {{minReconnectDelay?: number, maxReconnectDelay?: number}} [opts]
 * @param {() => number} [random=Math.random] a source of values in [0, 1)
 * @returns {number} delay in whole milliseconds
 */
export function backoffDelay(attempt, opts = {}, random = Math.random) {
  const base = opts.minReconnectDelay ?? DEFAULTS.minReconnectDelay;
  const cap = opts.maxReconnectDelay ?? DEFAULTS.maxReconnectDelay;
  const n = Math.max(0, Math.floor(Number(attempt) || 0));
  const ceiling = Math.min(cap, base * 2 ** Math.min(n, 52));
  return Math.floor(random() * ceiling);
}

/** The array fields that paged replies split across pages. */
const PAGED_ARRAYS = ["publications", "clients"];

/**
 * Joins the pages of a paged reply (`history`, `presence`; see docs/protocol.md,
 * "Paged replies") into one: the last page's fields, its `publications` or
 * `clients` being the concatenation of every page's, in order, and no `more`.
 *
 * @param {object[]} pages the reply's pages, in arrival order (at least one)
 * @returns {object} the complete reply
 */
export function joinPages(pages) {
  const last = pages[pages.length - 1];
  const joined = { ...last };
  delete joined.more;
  for (const key of PAGED_ARRAYS) {
    if (Array.isArray(last[key])) {
      joined[key] = pages.flatMap((p) => (Array.isArray(p[key]) ? p[key] : []));
    }
  }
  return joined;
}

/**
 * The stream position of one channel subscription and the filter that keeps
 * deliveries exactly-once across reconnects.
 *
 * A channel's position is `{epoch, offset}`: the offset grows by one per
 * publication and the epoch changes when the server loses the history (for
 * example on restart). After a recovering resubscribe the server replays what
 * was missed; anything at or below the last delivered offset of the same epoch
 * is a duplicate and is dropped.
 */
export class StreamPosition {
  /** An unknown position: the first subscribe asks for no replay. */
  constructor() {
    /** @type {string|null} epoch of the stream, null before the first subscribe */
    this.epoch = null;
    /** @type {number|null} last offset known to this client, null when unknown */
    this.offset = null;
    /** @type {number|null} highest offset delivered since the last reset */
    this._floor = null;
  }

  /**
   * The `since` value to send when resubscribing, or null when nothing is known yet.
   * @returns {{epoch: string, offset: number}|null}
   */
  since() {
    if (this.epoch === null || this.offset === null) return null;
    return { epoch: this.epoch, offset: this.offset };
  }

  /**
   * Applies a subscribe reply. With `recovered: true` the server is about to
   * replay publications after our offset, so the duplicate filter stays at our
   * offset. Otherwise the stream starts fresh at the reply's position: nothing
   * older is delivered, so nothing can be a duplicate yet.
   *
   * @param {{epoch: string, offset: number, recovered?: boolean}} reply
   * @returns {boolean} whether the missed publications are being recovered
   */
  subscribed(reply) {
    const recovered =
      reply.recovered === true && this.epoch !== null && reply.epoch === this.epoch;
    if (recovered) {
      this._floor = this.offset;
    } else {
      this.epoch = reply.epoch ?? null;
      this.offset = typeof reply.offset === "number" ? reply.offset : null;
      this._floor = null;
    }
    return recovered;
  }

  /**
   * Decides whether a publication at `offset` is new, and records it if so.
   * Publications without an offset cannot be checked and are accepted.
   *
   * @param {number} offset
   * @returns {boolean} true to deliver, false for a duplicate
   */
  accept(offset) {
    if (typeof offset !== "number") return true;
    if (this._floor !== null && offset <= this._floor) return false;
    this._floor = offset;
    if (this.offset === null || offset > this.offset) this.offset = offset;
    return true;
  }
}

/**
 * One channel subscription. Created by {@link Client#subscribe}; it lives until
 * {@link Subscription#unsubscribe}, across any number of reconnects.
 */
export class Subscription {
  /**
   * Use {@link Client#subscribe} rather than this constructor.
   *
   * @param {Client} client
   * @param {string} channel
   * @param {SubscriptionHandlers} handlers
   * @param {SubscribeOptions} options
   */
  constructor(client, channel, handlers, options) {
    /** @type {Client} */
    this.client = client;
    /** @type {string} */
    this.channel = channel;
    /** @type {"subscribing"|"subscribed"|"unsubscribed"} */
    this.state = "subscribing";
    /** @type {StreamPosition} */
    this.position = new StreamPosition();
    this._handlers = handlers || {};
    this._recover = options.recover !== false;
    this._info = options.info;
    this._pending = null; // messages that arrived before the subscribe reply
    this._retry = null;
    this._latestUpTo = null; // the reply offset up to which latest values may come
    if (options.since) {
      this.position.epoch = String(options.since.epoch);
      this.position.offset = Number(options.since.offset);
    }
  }

  /**
   * Publishes `data` to this channel (see {@link Client#publish}).
   * @param {*} data any JSON value
   * @param {RequestOptions} [opts]
   * @returns {Promise<object>} the server's reply, carrying the publication's `offset`
   */
  publish(data, opts) {
    return this.client.publish(this.channel, data, opts);
  }

  /**
   * Asks who is subscribed to this channel (see {@link Client#presence}).
   * @param {RequestOptions} [opts]
   * @returns {Promise<object>}
   */
  presence(opts) {
    return this.client.presence(this.channel, opts);
  }

  /**
   * Counts this channel's subscribers and distinct users (see
   * {@link Client#presenceStats}).
   * @param {RequestOptions} [opts]
   * @returns {Promise<{clients: number, users: number}>}
   */
  presenceStats(opts) {
    return this.client.presenceStats(this.channel, opts);
  }

  /**
   * Fetches recent publications of this channel (see {@link Client#history}).
   * @param {HistoryOptions} [opts]
   * @returns {Promise<object>}
   */
  history(opts) {
    return this.client.history(this.channel, opts);
  }

  /**
   * Stops the subscription: no handler is called afterwards. Resolves once the
   * server confirmed, or at once when the client is not connected.
   * @returns {Promise<void>}
   */
  unsubscribe() {
    return this.client._unsubscribe(this);
  }

  _call(name, arg) {
    const fn = this._handlers[name];
    if (typeof fn !== "function") return;
    try {
      fn.call(this, arg, this);
    } catch (err) {
      // A throwing handler must not break delivery to the others.
      setTimeout(() => {
        throw err;
      });
    }
  }
}

/**
 * @typedef {object} SubscriptionHandlers
 * @property {(msg: {channel: string, offset: number, data: *, from: string, key?: string, latest?: boolean}) => void} [message]
 *   a publication, delivered once and in offset order. `key` is the publication's
 *   key. In a namespace with `latest_on_subscribe`, the channel's latest values
 *   (the newest publication of each key) come first after a fresh subscribe,
 *   marked `latest: true`. Offsets may skip (latest values, `conflate`): the
 *   skipped ones were older values of the same keys, not a loss
 * @property {(entry: {channel: string, client: string, user: ?string, info: ?object}) => void} [join]
 *   someone subscribed, or changed its info (presence-enabled channels); apply as
 *   "add or replace" by `client`. The server batches joins and leaves per
 *   `join_leave_interval` (200 ms by default), so this comes a little after the fact
 * @property {(entry: {channel: string, client: string, user: ?string, info: ?object}) => void} [leave]
 *   someone left; may name a client never seen joining (it came and went within one
 *   interval): ignore those
 * @property {(diff: {channel: string, joined: number, left: number, joins?: object[], leaves?: object[]}) => void} [presenceDiff]
 *   the whole batch, before its `join`/`leave` calls; without `joins`/`leaves` when
 *   too many changed at once (then only the counts are known: ask `presence()`)
 * @property {(ctx: {epoch: string, offset: number, recovered: boolean, resubscribed: boolean, reply: object}) => void} [subscribed]
 *   the server confirmed the subscription; after a reconnect, `recovered` says
 *   whether everything missed in between is being replayed
 * @property {(err: DuplexError) => void} [error] the subscription failed
 */

/**
 * @typedef {object} SubscribeOptions
 * @property {{epoch: string, offset: number}} [since] start from a known
 *   position: publications after it are replayed if the server still has them
 * @property {boolean} [recover=true] renew the subscription with `since` after a
 *   reconnect; false only ever receives live publications
 * @property {object} [info] public, unverified details shown to others in
 *   presence and join/leave events (for example `{name: "ada"}`); at most 1 KiB
 */

/**
 * @typedef {object} RequestOptions
 * @property {number} [timeout] ms to wait for the reply (default: the client's `requestTimeout`)
 * @property {string} [key] `publish` only: what the publication is the latest value of
 *   (a symbol, a sensor id); sent back in its messages as `key`
 */

/**
 * @typedef {object} HistoryOptions
 * @property {number} [limit] how many of the most recent publications
 * @property {{epoch: string, offset: number}} [since] only publications after this position
 * @property {number} [timeout] ms to wait for the reply
 */

/**
 * A connection to a duplex hub, kept alive across network failures.
 *
 * Commands may be issued in any state except `closed`: while the client is not
 * connected they wait (up to their timeout) and are sent once it is.
 */
export class Client {
  /**
   * @param {string} url the WebSocket URL, for example {@link wsUrl}()
   * @param {object} [options]
   * @param {string} [options.token] a static token, sent as `?token=`
   * @param {() => (string|null|Promise<string|null>)} [options.getToken] called
   *   before every connection attempt, and ahead of the token's expiry on an open
   *   connection (the `refresh` command), which then stays open
   * @param {(channel: string) => (string|null|Promise<string|null>)} [options.getSubscriptionToken]
   *   called before every subscribe and resubscribe (after a reconnect), for
   *   namespaces whose channels need a subscription token; return `null` for a
   *   channel that needs none. A rejection is reported to the subscription's
   *   `error` handler and the subscribe is retried with backoff.
   * @param {(event: StateEvent) => void} [options.onstate] state change callback
   * @param {number} [options.minReconnectDelay]
   * @param {number} [options.maxReconnectDelay]
   * @param {number} [options.stableAfter]
   * @param {number} [options.requestTimeout]
   * @param {number} [options.connectTimeout]
   * @param {number} [options.pingInterval]
   * @param {number} [options.pongTimeout]
   * @param {typeof WebSocket} [options.WebSocket] a WebSocket implementation
   *   (defaults to the global one)
   */
  constructor(url, options = {}) {
    if (typeof url !== "string" || !/^wss?:\/\//.test(url)) {
      throw new TypeError(`duplex: expected a ws:// or wss:// URL, got ${url}`);
    }
    /** @type {string} */
    this.url = url;
    this.options = { ...DEFAULTS, ...options };
    /** @type {"disconnected"|"connecting"|"connected"|"closed"} */
    this.state = State.DISCONNECTED;
    /** @type {string|null} the client id the server assigned to this connection */
    this.clientId = null;
    /** @type {string|null} the authenticated user, or null when anonymous */
    this.user = null;
    /** @type {((event: StateEvent) => void)|null} */
    this.onstate = options.onstate || null;

    this._WebSocket = options.WebSocket || globalThis.WebSocket;
    this._listeners = new Map();
    this._subs = new Map();
    this._serverSubs = new Map(); // channel -> Subscription made by the server
    this._requests = new Map(); // id -> pending request
    this._queue = []; // requests waiting for a connection
    this._nextId = 1;
    this._ws = null;
    this._attempt = 0;
    this._reconnectTimer = null;
    this._connectTimer = null;
    this._heartbeatTimer = null;
    this._refreshTimer = null;
    this._lastRx = 0;
    this._pingSentAt = 0;
    this._pingInterval = 25000;
    this._connectedAt = 0;
    this._wanted = false; // connect() called and close() not
    this._generation = 0; // bumps per socket, so late events of old sockets are ignored
    this._onOnline = () => this._reconnectNow();
  }

  /**
   * The subprotocol the server selected for the current connection
   * (`duplex.v1`), or null when not connected.
   * @returns {string|null}
   */
  get protocol() {
    return this.state === State.CONNECTED && this._ws ? this._ws.protocol : null;
  }

  /**
   * Starts connecting, and keeps the connection up until {@link Client#close}.
   * Calling it while already connecting or connected does nothing.
   * @returns {Client} this client, for chaining
   */
  connect() {
    if (this._wanted) return this;
    this._wanted = true;
    this._attempt = 0;
    if (typeof globalThis.addEventListener === "function") {
      globalThis.addEventListener("online", this._onOnline);
    }
    this._open();
    return this;
  }

  /**
   * Resolves when the client is connected (at once if it already is); rejects
   * with `closed` if {@link Client#close} is called first, or with `timeout`.
   * @param {number} [timeout] ms, unlimited when omitted
   * @returns {Promise<void>}
   */
  ready(timeout) {
    if (this.state === State.CONNECTED) return Promise.resolve();
    return new Promise((resolve, reject) => {
      let timer = null;
      const off = this.on("state", (e) => {
        if (e.state === State.CONNECTED) {
          done();
          resolve();
        } else if (e.state === State.CLOSED) {
          done();
          reject(new DuplexError("closed", "client closed"));
        }
      });
      const done = () => {
        off();
        if (timer) clearTimeout(timer);
      };
      if (timeout !== undefined) {
        timer = setTimeout(() => {
          done();
          reject(new DuplexError("timeout", `not connected after ${timeout} ms`));
        }, timeout);
      }
    });
  }

  /**
   * Closes the connection for good (code 1000) and stops reconnecting. Pending
   * and queued commands are rejected with `closed`; subscriptions are kept and
   * resume on the next {@link Client#connect}.
   */
  close() {
    this._wanted = false;
    if (typeof globalThis.removeEventListener === "function") {
      globalThis.removeEventListener("online", this._onOnline);
    }
    clearTimeout(this._reconnectTimer);
    this._reconnectTimer = null;
    this._dropSocket(1000, "client closed");
    this._failAll(new DuplexError("closed", "client closed"), true);
    this._resetSubscriptions();
    this._setState(State.CLOSED, { code: 1000, reason: "client closed" });
  }

  /**
   * Registers a listener. Events: `state` ({@link StateEvent}), `welcome` (the
   * server's welcome), `message` (every publication of every subscription,
   * after deduplication, server-side ones included), `error` (a
   * {@link DuplexError} not tied to a command), `subscribed` and `unsubscribed`
   * (`{channel, epoch?, offset?, server: true, subscription?}`: the server subscribed this
   * connection to a channel, or ended a subscription, on its own: the
   * application's connect hook or its server API). Server-side subscriptions are
   * the server's to renew: after a reconnect it subscribes again, and this
   * client does not resubscribe them.
   *
   * @param {"state"|"welcome"|"message"|"error"|"subscribed"|"unsubscribed"} event
   * @param {Function} fn
   * @returns {() => void} a function that removes the listener
   */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  /**
   * Removes a listener added with {@link Client#on}.
   * @param {string} event
   * @param {Function} fn
   */
  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  /**
   * Subscribes to a channel. The subscription survives reconnects: after each
   * one it is renewed with `since` set to the last seen position, so missed
   * publications are replayed in order and none is delivered twice.
   *
   * @param {string} channel
   * @param {SubscriptionHandlers} [handlers]
   * @param {SubscribeOptions} [options]
   * @returns {Subscription}
   * @throws {Error} if this client already has a subscription to `channel`
   */
  subscribe(channel, handlers = {}, options = {}) {
    if (typeof channel !== "string" || channel === "") {
      throw new TypeError("duplex: channel must be a non-empty string");
    }
    if (this._subs.has(channel)) {
      throw new Error(`duplex: already subscribed to ${channel}; unsubscribe first`);
    }
    const sub = new Subscription(this, channel, handlers, options);
    this._subs.set(channel, sub);
    if (this.state === State.CONNECTED) this._sendSubscribe(sub, false);
    return sub;
  }

  /**
   * The current subscription to `channel`, if any.
   * @param {string} channel
   * @returns {Subscription|undefined}
   */
  subscription(channel) {
    return this._subs.get(channel);
  }

  /**
   * Publishes `data` to `channel`. Resolves with the server's reply (which
   * carries the publication's `offset`); rejects with a {@link DuplexError}
   * whose `code` is the server's error code, or `timeout`, or `disconnected`
   * when the connection dropped before the reply (the publication may or may
   * not have happened; it is not retried, to never publish twice).
   *
   * @param {string} channel
   * @param {*} data any JSON value
   * @param {RequestOptions} [opts]
   * @returns {Promise<object>}
   */
  publish(channel, data, opts) {
    const cmd = { type: "publish", channel, data };
    if (opts?.key !== undefined && opts.key !== null) cmd.key = String(opts.key);
    return this.request(cmd, opts);
  }

  /**
   * Asks the server who is subscribed to `channel`. A crowded channel's reply
   * arrives in several pages; this resolves once all are in, with every entry
   * in `clients` (the timeout applies to each page).
   * @param {string} channel
   * @param {RequestOptions} [opts]
   * @returns {Promise<object>} the reply (see docs/protocol.md for its fields)
   */
  presence(channel, opts) {
    return this.request({ type: "presence", channel }, opts);
  }

  /**
   * Asks the server how many connections are subscribed to `channel` and how
   * many distinct users they belong to, without the list (one small reply
   * however crowded the channel).
   * @param {string} channel
   * @param {RequestOptions} [opts]
   * @returns {Promise<{clients: number, users: number}>} the reply, with
   *   `channel`, `clients` and `users`
   */
  presenceStats(channel, opts) {
    return this.request({ type: "presence_stats", channel }, opts);
  }

  /**
   * Fetches recent publications of `channel`, oldest first. A reply larger
   * than a page arrives in several; this resolves once all are in, with every
   * publication in `publications` (the timeout applies to each page).
   * @param {string} channel
   * @param {HistoryOptions} [opts]
   * @returns {Promise<object>} the reply (see docs/protocol.md for its fields)
   */
  history(channel, opts = {}) {
    const cmd = { type: "history", channel };
    if (opts.limit !== undefined) cmd.limit = opts.limit;
    if (opts.since !== undefined) cmd.since = opts.since;
    return this.request(cmd, opts);
  }

  /**
   * Calls `method` on the application behind the server (its `rpc` hook, see
   * docs/hooks.md) and resolves with the application's `result`. Rejects with a
   * `DuplexError` whose `code` is the server's: `forbidden` (the application
   * refused), `not_available` (no rpc hook), `backend_unavailable`,
   * `backend_timeout` or `backend_busy` (retry later), `timeout`, `closed`.
   * @param {string} method 1-128 bytes of letters, digits and `_ - . : /`
   * @param {*} [data] any JSON value (sent as `null` when left out)
   * @param {RequestOptions} [opts]
   * @returns {Promise<*>}
   */
  async rpc(method, data = null, opts) {
    const reply = await this.request({ type: "rpc", method, data }, opts);
    return reply.result;
  }

  /**
   * Sends an app-level ping and resolves with the round-trip time in ms.
   * @param {RequestOptions} [opts]
   * @returns {Promise<number>}
   */
  async ping(opts) {
    const start = now();
    await this.request({ type: "ping" }, opts);
    return now() - start;
  }

  /**
   * Sends any command with a fresh `id` and resolves with its reply. The
   * building block of the other commands; useful for commands this version
   * does not wrap.
   *
   * @param {object} command a command object with a `type`
   * @param {RequestOptions} [opts]
   * @returns {Promise<object>}
   */
  request(command, opts = {}) {
    if (this.state === State.CLOSED && !this._wanted) {
      return Promise.reject(new DuplexError("closed", "client closed"));
    }
    return new Promise((resolve, reject) => {
      const id = this._nextId++;
      const timeout = opts.timeout ?? this.options.requestTimeout;
      const req = { id, command: { ...command, id }, resolve, reject, timer: null, sent: false };
      req.timeout = timeout;
      req.expire = () => {
        this._requests.delete(id);
        const i = this._queue.indexOf(req);
        if (i >= 0) this._queue.splice(i, 1);
        reject(new DuplexError("timeout", `no reply to ${command.type} within ${timeout} ms`));
      };
      req.timer = setTimeout(req.expire, timeout);
      if (this.state === State.CONNECTED) this._sendRequest(req);
      else this._queue.push(req);
    });
  }

  // ---- connection lifecycle ------------------------------------------------

  async _open() {
    const generation = ++this._generation;
    this._setState(State.CONNECTING, { attempt: this._attempt });
    let url = this.url;
    try {
      const token = this.options.getToken ? await this.options.getToken() : this.options.token;
      if (generation !== this._generation || !this._wanted) return;
      if (token) {
        url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);
      }
    } catch (err) {
      if (generation !== this._generation || !this._wanted) return;
      this._emit("error", new DuplexError("token", `getToken failed: ${err?.message || err}`));
      this._scheduleReconnect({ code: 0, reason: "getToken failed" });
      return;
    }

    let ws;
    try {
      ws = new this._WebSocket(url, [SUBPROTOCOL]);
    } catch (err) {
      // A malformed URL throws synchronously; retrying cannot fix it.
      this._emit("error", new DuplexError("bad_url", String(err?.message || err)));
      this.close();
      return;
    }
    this._ws = ws;
    this._connectTimer = setTimeout(() => {
      if (generation === this._generation) this._lost(4000, "connect timeout");
    }, this.options.connectTimeout);
    ws.onmessage = (ev) => {
      if (generation === this._generation) this._onFrame(ev.data);
    };
    ws.onclose = (ev) => {
      if (generation === this._generation) this._lost(ev.code, ev.reason || "connection closed");
    };
    ws.onerror = () => {
      // The close event that always follows carries the details.
    };
  }

  _onWelcome(msg) {
    clearTimeout(this._connectTimer);
    this._connectTimer = null;
    this.clientId = msg.client ?? null;
    this.user = msg.user ?? null;
    this._connectedAt = now();
    this._setState(State.CONNECTED, { client: this.clientId, user: this.user });
    this._emit("welcome", msg);
    this._pingInterval =
      this.options.pingInterval ??
      (Number.isFinite(msg.ping_interval_ms) && msg.ping_interval_ms > 0
        ? msg.ping_interval_ms
        : 25000);
    this._armHeartbeat();
    this._armRefresh(msg.expires_in);
    for (const sub of this._subs.values()) this._sendSubscribe(sub, true);
    const queued = this._queue;
    this._queue = [];
    for (const req of queued) this._sendRequest(req);
  }

  /**
   * With `getToken`, refreshes the connection token ahead of its expiry: when a
   * fifth of its lifetime is left (at most 30 s before), asks `getToken()` and
   * sends `refresh`, so the server does not close the connection with 1008. A
   * failed attempt is reported as an `error` event (code `refresh`) and retried
   * with backoff until the token expires; the reconnect that follows an expiry
   * asks `getToken()` again anyway.
   * @param {number|undefined} expiresIn seconds left, from `welcome` or the reply
   */
  _armRefresh(expiresIn, attempt = 0) {
    clearTimeout(this._refreshTimer);
    this._refreshTimer = null;
    if (!this.options.getToken || !Number.isFinite(expiresIn) || expiresIn <= 0) return;
    const lifetime = expiresIn * 1000;
    const delay =
      attempt === 0
        ? Math.max(0, lifetime - Math.min(30000, lifetime / 5))
        : backoffDelay(attempt, this.options);
    const deadline = now() + lifetime;
    const generation = this._generation;
    this._refreshTimer = setTimeout(async () => {
      this._refreshTimer = null;
      if (generation !== this._generation || this.state !== State.CONNECTED) return;
      try {
        const token = await this.options.getToken();
        if (generation !== this._generation) return;
        if (!token) throw new Error("getToken returned no token");
        const reply = await this.request({ type: "refresh", token });
        if (generation === this._generation) this._armRefresh(reply.expires_in);
      } catch (err) {
        if (generation !== this._generation) return;
        this._emit("error", new DuplexError("refresh", `token refresh failed: ${err?.message || err}`));
        const left = (deadline - now()) / 1000;
        if (left > 0) this._armRefresh(left, attempt + 1);
      }
    }, delay);
  }

  /** The socket is gone (closed, errored, or declared dead): clean up and retry. */
  _lost(code, reason) {
    this._dropSocket(4000, reason);
    this._failAll(new DuplexError("disconnected", `connection lost: ${reason}`), false);
    this._resetSubscriptions();
    if (this._connectedAt && now() - this._connectedAt >= this.options.stableAfter) {
      this._attempt = 0;
    }
    this._connectedAt = 0;
    if (this._wanted) this._scheduleReconnect({ code, reason });
  }

  _dropSocket(code, reason) {
    this._generation++;
    clearTimeout(this._connectTimer);
    clearTimeout(this._heartbeatTimer);
    clearTimeout(this._refreshTimer);
    this._connectTimer = this._heartbeatTimer = this._refreshTimer = null;
    const ws = this._ws;
    this._ws = null;
    if (!ws) return;
    ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      // A dead socket may never finish its closing handshake, so nothing waits for it.
      ws.close(code === 1000 ? 1000 : 4000, reason.slice(0, 120));
    } catch {
      // Already closing or closed.
    }
  }

  _scheduleReconnect({ code, reason }) {
    clearTimeout(this._reconnectTimer);
    const delay = backoffDelay(this._attempt, this.options);
    this._attempt++;
    this._setState(State.DISCONNECTED, { code, reason, delay, attempt: this._attempt });
    this._reconnectTimer = setTimeout(() => {
      this._reconnectTimer = null;
      if (this._wanted) this._open();
    }, delay);
  }

  _reconnectNow() {
    if (this._wanted && this.state === State.DISCONNECTED && this._reconnectTimer) {
      clearTimeout(this._reconnectTimer);
      this._reconnectTimer = null;
      this._open();
    }
  }

  /** Marks every subscription as waiting to be renewed on the next connection. */
  _resetSubscriptions() {
    // The server renews its own subscriptions on the next connection.
    this._serverSubs.clear();
    for (const sub of this._subs.values()) {
      clearTimeout(sub._retry);
      sub._pending = null;
      sub.state = "subscribing";
    }
  }

  /** Rejects requests in flight (and, when `queued`, those waiting to be sent). */
  _failAll(err, queued) {
    for (const req of this._requests.values()) {
      clearTimeout(req.timer);
      req.reject(err);
    }
    this._requests.clear();
    if (queued) {
      for (const req of this._queue) {
        clearTimeout(req.timer);
        req.reject(err);
      }
      this._queue = [];
    }
  }

  // ---- heartbeat -------------------------------------------------------------

  // One timer, re-armed lazily: a busy connection (a ticker) never touches it per
  // message; the timer compares against the time of the last frame when it fires.
  _armHeartbeat() {
    clearTimeout(this._heartbeatTimer);
    this._lastRx = now();
    this._pingSentAt = 0;
    this._heartbeatTimer = setTimeout(() => this._heartbeat(), this._pingInterval);
  }

  _heartbeat() {
    if (this.state !== State.CONNECTED) return;
    const t = now();
    if (this._pingSentAt) {
      if (this._lastRx >= this._pingSentAt) {
        this._pingSentAt = 0;
      } else if (t - this._pingSentAt >= this.options.pongTimeout) {
        this._lost(4000, `no data for ${Math.round(t - this._lastRx)} ms (heartbeat timeout)`);
        return;
      } else {
        this._heartbeatTimer = setTimeout(
          () => this._heartbeat(),
          this._pingSentAt + this.options.pongTimeout - t,
        );
        return;
      }
    }
    const idle = t - this._lastRx;
    if (idle >= this._pingInterval) {
      this._pingSentAt = t;
      this._sendRaw({ type: "ping", id: this._nextId++ });
      this._heartbeatTimer = setTimeout(() => this._heartbeat(), this.options.pongTimeout);
    } else {
      this._heartbeatTimer = setTimeout(
        () => this._heartbeat(),
        this._pingInterval - idle,
      );
    }
  }

  // ---- frames ------------------------------------------------------------------

  _onFrame(raw) {
    this._lastRx = now();
    if (typeof raw !== "string") return; // the protocol is text frames only
    let msg;
    try {
      msg = JSON.parse(raw);
    } catch {
      this._emit("error", new DuplexError("bad_frame", "server sent invalid JSON"));
      return;
    }
    this._dispatch(msg);
  }

  _dispatch(msg) {
    if (!msg || typeof msg !== "object") return;
    switch (msg.type) {
      case "welcome":
        this._onWelcome(msg);
        return;
      case "reply":
      case "pong":
      case "error": {
        const req = typeof msg.id === "number" ? this._requests.get(msg.id) : undefined;
        if (req && msg.type === "reply" && msg.more === true) {
          // One page of a paged reply (history, presence): keep it, wait for the rest.
          // Every page restarts the request's timeout, so a long reply over a slow link
          // is not cut short while it is still arriving.
          if (!req.pages) req.pages = [];
          req.pages.push(msg);
          clearTimeout(req.timer);
          req.timer = setTimeout(req.expire, req.timeout);
          return;
        }
        if (req && req.pages && msg.type === "reply") msg = joinPages([...req.pages, msg]);
        if (req) {
          this._requests.delete(msg.id);
          clearTimeout(req.timer);
          if (msg.type === "error") {
            req.reject(new DuplexError(msg.code || "error", msg.message || msg.code, msg));
          } else {
            req.resolve(msg);
          }
        } else if (msg.type === "error") {
          this._emit("error", new DuplexError(msg.code || "error", msg.message || msg.code, msg));
        }
        return;
      }
      case "message":
        this._onMessage(msg);
        return;
      case "subscribed": {
        // Pushed (no `id`): a subscription the server made for this connection.
        if (typeof msg.channel !== "string" || this._subs.has(msg.channel)) return;
        const sub = new Subscription(this, msg.channel, {}, {});
        sub.state = "subscribed";
        sub.server = true;
        sub.position.subscribed({ ...msg, recovered: false });
        this._serverSubs.set(msg.channel, sub);
        this._emit("subscribed", {
          channel: msg.channel,
          epoch: msg.epoch,
          offset: msg.offset,
          server: true,
          subscription: sub,
        });
        return;
      }
      case "unsubscribed": {
        // Pushed: the server ended a subscription (its API, or a revoked grant).
        if (typeof msg.channel !== "string") return;
        const sub = this._serverSubs.get(msg.channel) || this._subs.get(msg.channel);
        if (!sub) return;
        this._serverSubs.delete(msg.channel);
        if (this._subs.get(msg.channel) === sub) this._subs.delete(msg.channel);
        clearTimeout(sub._retry);
        sub.state = "unsubscribed";
        sub._call("unsubscribed", { channel: msg.channel, server: true });
        this._emit("unsubscribed", { channel: msg.channel, server: true });
        return;
      }
      case "presence_diff": {
        // One frame per join_leave_interval: every join and leave of the channel since
        // the last one, each client at most once (its last change). Above the server's
        // join_leave_max_entries only the counts come, without `joins`/`leaves`.
        const sub = this._subs.get(msg.channel);
        if (!sub || sub.state === "unsubscribed") return;
        sub._call("presenceDiff", msg);
        for (const e of Array.isArray(msg.joins) ? msg.joins : []) {
          sub._call("join", { ...e, type: "join", channel: msg.channel });
        }
        for (const e of Array.isArray(msg.leaves) ? msg.leaves : []) {
          sub._call("leave", { ...e, type: "leave", channel: msg.channel });
        }
        return;
      }
      case "join":
      case "leave": {
        // Hubs before presence_diff sent each change on its own.
        const sub = this._subs.get(msg.channel);
        if (sub && sub.state !== "unsubscribed") sub._call(msg.type, msg);
        return;
      }
      default:
      // Unknown types are ignored so that newer servers can add events.
    }
  }

  _onMessage(msg) {
    const sub = this._subs.get(msg.channel) || this._serverSubs.get(msg.channel);
    if (!sub || sub.state === "unsubscribed") return;
    if (sub._pending) {
      // The position is only known once the subscribe reply is in.
      sub._pending.push(msg);
      return;
    }
    this._deliver(sub, msg);
  }

  _deliver(sub, msg) {
    if (!sub.position.accept(msg.offset)) return;
    // The latest values sent after a fresh subscribe are at or below the reply's offset;
    // live publications come after it.
    if (sub._latestUpTo !== null && typeof msg.offset === "number") {
      if (msg.offset <= sub._latestUpTo) msg.latest = true;
      if (msg.offset >= sub._latestUpTo) sub._latestUpTo = null;
    }
    sub._call("message", msg);
    this._emit("message", msg);
  }

  // ---- sending -------------------------------------------------------------------

  _sendRaw(obj) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(obj));
    return true;
  }

  _sendRequest(req) {
    this._requests.set(req.id, req);
    if (!this._sendRaw(req.command)) {
      this._requests.delete(req.id);
      this._queue.push(req);
    }
  }

  _sendSubscribe(sub, resubscribed) {
    clearTimeout(sub._retry);
    sub.state = "subscribing";
    sub._pending = [];
    const getToken = this.options.getSubscriptionToken;
    if (!getToken) {
      this._requestSubscribe(sub, resubscribed, null);
      return;
    }
    // A newer attempt (after a reconnect, or a retry) makes this one stale.
    const attempt = {};
    sub._attempt = attempt;
    const current = () =>
      sub._attempt === attempt &&
      this._subs.get(sub.channel) === sub &&
      sub.state === "subscribing";
    Promise.resolve()
      .then(() => getToken(sub.channel))
      .then(
        (token) => {
          if (current()) this._requestSubscribe(sub, resubscribed, token);
        },
        (err) => {
          if (!current()) return;
          sub._call(
            "error",
            new DuplexError("token", `getSubscriptionToken failed: ${err?.message || err}`),
          );
          sub._retry = setTimeout(() => {
            if (this.state === State.CONNECTED && current()) this._sendSubscribe(sub, resubscribed);
          }, backoffDelay(1, this.options));
        },
      );
  }

  _requestSubscribe(sub, resubscribed, token) {
    const cmd = { type: "subscribe", channel: sub.channel };
    if (token) cmd.token = token;
    const since = sub._recover ? sub.position.since() : null;
    if (since) cmd.since = since;
    if (sub._info !== undefined) cmd.info = sub._info;
    this.request(cmd).then(
      (reply) => {
        if (this._subs.get(sub.channel) !== sub || sub.state === "unsubscribed") return;
        const recovered = sub.position.subscribed(reply);
        sub._latestUpTo = !recovered && typeof reply.offset === "number" ? reply.offset : null;
        sub.state = "subscribed";
        const pending = sub._pending || [];
        sub._pending = null;
        sub._call("subscribed", {
          epoch: reply.epoch,
          offset: reply.offset,
          recovered,
          resubscribed,
          reply,
        });
        pending.sort((a, b) => (a.offset ?? 0) - (b.offset ?? 0));
        for (const msg of pending) this._deliver(sub, msg);
      },
      (err) => {
        if (this._subs.get(sub.channel) !== sub || sub.state === "unsubscribed") return;
        sub._pending = null;
        if (err.code === "disconnected" || err.code === "closed") return; // renewed on reconnect
        if (TRANSIENT.has(err.code)) {
          sub._call("error", err);
          const delay = backoffDelay(1, this.options);
          sub._retry = setTimeout(() => {
            if (this.state === State.CONNECTED && this._subs.get(sub.channel) === sub) {
              this._sendSubscribe(sub, resubscribed);
            }
          }, delay);
          return;
        }
        // The server refused (bad name, permission, limit): retrying cannot help.
        sub.state = "unsubscribed";
        this._subs.delete(sub.channel);
        sub._call("error", err);
      },
    );
  }

  async _unsubscribe(sub) {
    const mine = this._subs.get(sub.channel) === sub;
    if (!mine && this._serverSubs.get(sub.channel) !== sub) return;
    const wasActive = sub.state !== "unsubscribed";
    sub.state = "unsubscribed";
    sub._pending = null;
    clearTimeout(sub._retry);
    if (mine) this._subs.delete(sub.channel);
    else this._serverSubs.delete(sub.channel);
    if (!wasActive || this.state !== State.CONNECTED) return;
    try {
      await this.request({ type: "unsubscribe", channel: sub.channel });
    } catch (err) {
      // The server has forgotten it already (not subscribed) or the connection
      // dropped, which ends every subscription on the server side anyway.
      if (err.code !== "disconnected" && err.code !== "closed" && err.code !== "not_subscribed") {
        throw err;
      }
    }
  }

  // ---- events --------------------------------------------------------------------

  _setState(state, detail = {}) {
    const previous = this.state;
    if (previous === state && state !== State.DISCONNECTED) return;
    this.state = state;
    /** @type {StateEvent} */
    const event = { state, previous, ...detail };
    if (typeof this.onstate === "function") {
      try {
        this.onstate(event);
      } catch (err) {
        setTimeout(() => {
          throw err;
        });
      }
    }
    this._emit("state", event);
  }

  _emit(event, arg) {
    const set = this._listeners.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        fn(arg);
      } catch (err) {
        setTimeout(() => {
          throw err;
        });
      }
    }
  }
}

/**
 * @typedef {object} StateEvent
 * @property {"disconnected"|"connecting"|"connected"|"closed"} state the new state
 * @property {string} previous the state before
 * @property {number} [code] close code, when a connection ended
 * @property {string} [reason] why the connection ended
 * @property {number} [delay] ms until the next attempt, in `disconnected`
 * @property {number} [attempt] reconnect attempts so far
 * @property {string|null} [client] the client id, in `connected`
 * @property {string|null} [user] the user, in `connected`
 */

function now() {
  return globalThis.performance?.now ? globalThis.performance.now() : Date.now();
}
