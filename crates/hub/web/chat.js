// The chat demo: rooms are channels of the default namespace, the user list is
// the channel's presence (kept current with join/leave events), and messages
// are publications `{text, nick, ts}`. Everything network-related is duplex.js;
// this file is only the page.
import { Client, wsUrl } from "/duplex.js";

const DEFAULT_ROOMS = ["lobby", "random", "dev"];
const ROOM_RE = /^[A-Za-z0-9_.@/=+-]{1,40}$/;
const HISTORY_LIMIT = 50;
const $ = (id) => document.getElementById(id);

const el = {
  chat: $("chat"),
  status: $("status"),
  nick: $("nick"),
  rooms: $("rooms"),
  roomForm: $("room-form"),
  roomInput: $("room-input"),
  users: $("users"),
  userCount: $("user-count"),
  roomTitle: $("room-title"),
  roomCount: $("room-count"),
  messages: $("messages"),
  empty: $("empty"),
  composer: $("composer"),
  text: $("text"),
  error: $("composer-error"),
  drawer: $("drawer-toggle"),
};

const store = {
  get(key, fallback) {
    try {
      const v = localStorage.getItem(`duplex.chat.${key}`);
      return v === null ? fallback : JSON.parse(v);
    } catch {
      return fallback;
    }
  },
  set(key, value) {
    try {
      localStorage.setItem(`duplex.chat.${key}`, JSON.stringify(value));
    } catch {
      // Private mode or storage full: the page still works, it just forgets.
    }
  },
};

const state = {
  nick: cleanNick(store.get("nick", "")) || randomNick(),
  rooms: mergeRooms(store.get("rooms", [])),
  room: "lobby",
  sub: null,
  users: new Map(), // client id -> presence entry
  seen: new Set(), // "epoch:offset" of every rendered message
  segment: null, // the element holding messages of the current stream epoch
  epoch: null,
  myClients: new Set(), // this page's client ids, one per connection
};

const client = new Client(wsUrl(), { onstate: renderStatus });
client.on("welcome", (w) => state.myClients.add(w.client));
client.on("error", (err) => console.warn("duplex:", err.code, err.message));
// Handy in the browser console.
globalThis.duplexChat = { client, state };

// ---- connection status -----------------------------------------------------------

let countdown = null;

function renderStatus(e) {
  clearInterval(countdown);
  el.status.dataset.state = e.state;
  if (e.state === "connected") {
    el.status.textContent = "Connected";
  } else if (e.state === "connecting") {
    el.status.textContent = e.attempt ? "Reconnecting…" : "Connecting…";
  } else if (e.state === "disconnected") {
    const until = Date.now() + (e.delay || 0);
    const tick = () => {
      const s = Math.ceil((until - Date.now()) / 1000);
      el.status.textContent = s > 0 ? `Offline · retry in ${s}s` : "Offline · retrying…";
    };
    tick();
    countdown = setInterval(tick, 500);
  } else {
    el.status.textContent = "Disconnected";
  }
}

// ---- rooms -------------------------------------------------------------------------

function mergeRooms(saved) {
  const rooms = [...DEFAULT_ROOMS];
  for (const r of Array.isArray(saved) ? saved : []) {
    if (typeof r === "string" && ROOM_RE.test(r) && !rooms.includes(r)) rooms.push(r);
  }
  return rooms;
}

function roomFromHash() {
  const r = decodeURIComponent(location.hash.slice(1));
  return ROOM_RE.test(r) ? r : null;
}

function renderRooms() {
  el.rooms.replaceChildren(
    ...state.rooms.map((room) => {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = room;
      b.dataset.room = room;
      if (room === state.room) b.setAttribute("aria-current", "true");
      b.addEventListener("click", () => {
        joinRoom(room);
        el.chat.classList.remove("drawer-open");
      });
      li.append(b);
      return li;
    }),
  );
}

function joinRoom(room, since) {
  if (state.sub) {
    state.sub.unsubscribe().catch((err) => console.warn("unsubscribe:", err.message));
  }
  if (room !== state.room || !since) {
    state.seen.clear();
    state.segment = null;
    state.epoch = null;
    el.messages.replaceChildren(el.empty);
  }
  state.room = room;
  state.users.clear();
  for (const p of pendingLeaves.values()) clearTimeout(p.timer);
  pendingLeaves.clear();
  renderUsers();
  if (!state.rooms.includes(room)) {
    state.rooms.push(room);
    store.set("rooms", state.rooms.filter((r) => !DEFAULT_ROOMS.includes(r)));
  }
  if (location.hash.slice(1) !== room) history.replaceState(null, "", `#${room}`);
  document.title = `#${room} · duplex chat`;
  el.roomTitle.textContent = `# ${room}`;
  el.text.placeholder = `Message #${room}`;
  el.error.textContent = "";
  renderRooms();

  state.sub = client.subscribe(
    room,
    {
      subscribed: onSubscribed,
      message: (m) => addMessage(m),
      join: onJoin,
      leave: onLeave,
      presenceDiff: onPresenceDiff,
      error: (err) => {
        el.error.textContent = `Cannot join #${room}: ${err.message}`;
      },
    },
    { info: { name: state.nick }, since },
  );
}

async function onSubscribed(ctx, sub) {
  if (!ctx.recovered) {
    // A new stream (first join, server restart, or we were away too long):
    // show what the server still has, after a marker if messages may be missing.
    if (ctx.resubscribed && state.seen.size > 0) {
      addDivider("Reconnected · messages sent while you were away may be missing");
    }
    state.epoch = ctx.epoch;
    state.segment = null;
    try {
      const h = await sub.history({ limit: HISTORY_LIMIT });
      if (state.sub !== sub) return;
      for (const p of h.publications || []) {
        addMessage({ ...p, channel: sub.channel }, h.epoch);
      }
    } catch (err) {
      console.warn("history:", err.message);
    }
  }
  try {
    const p = await sub.presence();
    if (state.sub !== sub) return;
    state.users = new Map((p.clients || []).map((c) => [c.client, c]));
    renderUsers();
  } catch (err) {
    console.warn("presence:", err.message);
  }
}

// ---- presence ------------------------------------------------------------------------

function displayName(entry) {
  const n = entry?.info && typeof entry.info.name === "string" ? cleanNick(entry.info.name) : "";
  return n || entry?.user || "anonymous";
}

// A rename is a leave and a join of the same connection (presence info is set
// when subscribing), so a leave is announced only if no join follows shortly.
// The server batches joins and leaves (join_leave_interval), and when both fall
// into one batch it sends only the join, with the new name: a known client
// joining again is a rename too.
const pendingLeaves = new Map(); // client id -> timer
const RENAME_WINDOW_MS = 1500;

function onJoin(e) {
  const before = state.users.get(e.client);
  state.users.set(e.client, e);
  renderUsers();
  if (e.client === client.clientId) return;
  const pending = pendingLeaves.get(e.client);
  if (pending) {
    clearTimeout(pending.timer);
    pendingLeaves.delete(e.client);
    if (pending.name !== displayName(e)) addSystem(`${pending.name} is now ${displayName(e)}`);
  } else if (before) {
    if (displayName(before) !== displayName(e)) {
      addSystem(`${displayName(before)} is now ${displayName(e)}`);
    }
  } else {
    addSystem(`${displayName(e)} joined`);
  }
}

// Too many changes at once (a crowd): the server sent only counts, so reload
// the list, at most every few seconds.
let rosterReload = null;
const ROSTER_RELOAD_MS = 3000;

function onPresenceDiff(diff, sub) {
  if (diff.joins || rosterReload) return;
  rosterReload = setTimeout(async () => {
    rosterReload = null;
    if (state.sub !== sub) return;
    try {
      const p = await sub.presence();
      if (state.sub !== sub) return;
      state.users = new Map((p.clients || []).map((c) => [c.client, c]));
      renderUsers();
    } catch (err) {
      console.warn("presence:", err.message);
    }
  }, ROSTER_RELOAD_MS);
}

function onLeave(e) {
  const known = state.users.delete(e.client);
  renderUsers();
  if (!known || e.client === client.clientId) return;
  const name = displayName(e);
  const timer = setTimeout(() => {
    pendingLeaves.delete(e.client);
    addSystem(`${name} left`);
  }, RENAME_WINDOW_MS);
  pendingLeaves.set(e.client, { timer, name });
}

function renderUsers() {
  const me = client.clientId;
  const list = [...state.users.values()].sort((a, b) => {
    if ((a.client === me) !== (b.client === me)) return a.client === me ? -1 : 1;
    return displayName(a).localeCompare(displayName(b));
  });
  el.users.replaceChildren(
    ...list.map((u) => {
      const li = document.createElement("li");
      li.dataset.client = u.client;
      const name = displayName(u);
      const span = document.createElement("span");
      span.className = "name";
      span.textContent = name;
      li.append(avatar(name), span);
      if (u.client === me) {
        const you = document.createElement("span");
        you.className = "you";
        you.textContent = "(you)";
        li.append(you);
      }
      return li;
    }),
  );
  el.userCount.textContent = String(list.length);
  el.roomCount.textContent = list.length === 1 ? "1 online" : `${list.length} online`;
}

// ---- messages --------------------------------------------------------------------------

function currentSegment() {
  if (!state.segment) {
    state.segment = document.createElement("div");
    state.segment.className = "segment";
    state.segment.dataset.epoch = state.epoch ?? "";
    el.messages.append(state.segment);
  }
  return state.segment;
}

function addMessage(m, epoch = state.epoch) {
  const key = `${epoch}:${m.offset}`;
  if (state.seen.has(key)) return;
  state.seen.add(key);

  const data = m.data;
  const isObj = data !== null && typeof data === "object";
  const text = isObj && typeof data.text === "string" ? data.text : JSON.stringify(data);
  const nick = isObj && typeof data.nick === "string" ? cleanNick(data.nick) : "";
  const name = nick || m.from || "server";
  const ts = isObj && Number.isFinite(data.ts) ? data.ts : Date.now();
  const mine = m.from !== null && (state.myClients.has(m.from) || m.from === client.user);

  const row = document.createElement("article");
  row.className = mine ? "msg mine" : "msg";
  row.dataset.offset = String(m.offset);
  const body = document.createElement("div");
  body.className = "body";
  const meta = document.createElement("div");
  meta.className = "meta";
  const from = document.createElement("span");
  from.className = "from";
  from.textContent = name;
  const time = document.createElement("time");
  const date = new Date(ts);
  time.dateTime = date.toISOString();
  time.textContent = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  time.title = date.toLocaleString();
  meta.append(from, time);
  const p = document.createElement("p");
  p.className = "text";
  p.textContent = text;
  body.append(meta, p);
  row.append(avatar(name), body);

  insertSorted(currentSegment(), row, m.offset);
}

// Live messages arrive in offset order and are appended; history fills in
// before them, so a message is placed before the first one with a higher offset.
function insertSorted(segment, row, offset) {
  const stick = nearBottom();
  let before = null;
  for (const other of segment.querySelectorAll(".msg")) {
    if (Number(other.dataset.offset) > offset) {
      before = other;
      break;
    }
  }
  segment.insertBefore(row, before);
  el.empty.remove();
  if (stick || before === null) scrollToBottom();
}

function addSystem(text) {
  const p = document.createElement("p");
  p.className = "sys";
  p.textContent = text;
  appendNote(p);
}

function addDivider(text) {
  const d = document.createElement("div");
  d.className = "divider";
  d.textContent = text;
  appendNote(d);
  state.segment = null;
}

function appendNote(node) {
  const stick = nearBottom();
  (state.segment || el.messages).append(node);
  if (stick) scrollToBottom();
}

function nearBottom() {
  const m = el.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

function scrollToBottom() {
  el.messages.scrollTop = el.messages.scrollHeight;
}

// ---- utilities -----------------------------------------------------------------------------

function avatar(name) {
  const a = document.createElement("span");
  a.className = "avatar";
  a.textContent = [...name][0] || "?";
  a.style.setProperty("--hue", String(hue(name)));
  a.setAttribute("aria-hidden", "true");
  return a;
}

function hue(s) {
  let h = 0;
  for (const ch of s) h = (h * 31 + ch.codePointAt(0)) % 360;
  return h;
}

function cleanNick(s) {
  return typeof s === "string" ? s.replace(/\s+/g, " ").trim().slice(0, 32) : "";
}

function randomNick() {
  const names = ["otter", "heron", "lynx", "panda", "koala", "falcon", "gecko", "ibis"];
  const n = names[Math.floor(Math.random() * names.length)];
  return `${n}-${Math.floor(100 + Math.random() * 900)}`;
}

// ---- wiring ----------------------------------------------------------------------------------

el.nick.value = state.nick;
store.set("nick", state.nick);

function commitNick() {
  const nick = cleanNick(el.nick.value);
  if (!nick) {
    el.nick.value = state.nick;
    return;
  }
  el.nick.value = nick;
  if (nick === state.nick) return;
  state.nick = nick;
  store.set("nick", nick);
  // Presence info is set when subscribing, so renew the subscription; `since`
  // keeps the message stream seamless.
  joinRoom(state.room, state.sub?.position.since() ?? undefined);
}

el.nick.addEventListener("change", commitNick);
el.nick.addEventListener("keydown", (e) => {
  if (e.key === "Enter") {
    e.preventDefault();
    commitNick();
    el.chat.classList.remove("drawer-open");
    el.text.focus();
  }
});

el.roomForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const room = el.roomInput.value.trim().replace(/^#/, "");
  if (!ROOM_RE.test(room)) {
    el.error.textContent = "Room names use letters, digits and _ . - @ / = + (up to 40).";
    return;
  }
  el.roomInput.value = "";
  joinRoom(room);
});

el.composer.addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = el.text.value.trim();
  if (!text || !state.sub) return;
  el.text.value = "";
  el.error.textContent = "";
  try {
    await state.sub.publish({ text, nick: state.nick, ts: Date.now() });
  } catch (err) {
    if (!el.text.value) el.text.value = text;
    el.error.textContent =
      err.code === "disconnected" || err.code === "timeout"
        ? "Not sent: the connection dropped. Press Enter to retry."
        : `Not sent: ${err.message}`;
  }
});

el.drawer.addEventListener("click", () => el.chat.classList.toggle("drawer-open"));

addEventListener("hashchange", () => {
  const room = roomFromHash();
  if (room && room !== state.room) joinRoom(room);
});

// Leaving the page: say goodbye so others see us leave at once.
addEventListener("pagehide", () => client.close());
addEventListener("pageshow", (e) => {
  if (e.persisted) client.connect();
});

joinRoom(roomFromHash() || "lobby");
client.connect();
el.text.focus();
