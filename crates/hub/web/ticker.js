// The live ticker demo: subscribes to `ticker:prices`, where the server's demo
// feed publishes `{symbol, price, change, ts}` per symbol, and shows each symbol
// with its price, its change since the page opened and a sparkline. The namespace
// has `latest_on_subscribe`, so every symbol's latest price (ticks are keyed by
// symbol) arrives right after the subscribe reply, marked `latest`: a new page
// shows prices at once; history then fills the sparklines.
import { Client, wsUrl } from "/duplex.js";

const CHANNEL = "ticker:prices";
const POINTS = 60; // sparkline length
const $ = (id) => document.getElementById(id);
const el = { status: $("status"), grid: $("grid"), empty: $("empty"), rate: $("rate"), updated: $("updated") };

/** symbol -> {points: [{offset, price, ts}], open, card, ...} */
const quotes = new Map();
const arrivals = []; // arrival times of the last few seconds, for the rate
const money = new Intl.NumberFormat(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });

const client = new Client(wsUrl(), { onstate: renderStatus });
/** symbols whose latest price came with the subscription (before any live tick) */
const latest = new Set();
globalThis.duplexTicker = { client, quotes, latest };

client.subscribe(CHANNEL, {
  subscribed: async (ctx, sub) => {
    if (ctx.recovered) return;
    // Seed the sparklines with what the server still has.
    try {
      const h = await sub.history();
      for (const p of h.publications || []) addTick(p, false);
      for (const q of quotes.values()) render(q, false);
    } catch (err) {
      console.warn("history:", err.message);
    }
  },
  message: (m) => {
    if (m.latest) {
      if (typeof m.data?.symbol === "string") latest.add(m.data.symbol);
    } else {
      arrivals.push(performance.now());
    }
    if (addTick(m, true)) el.updated.textContent = new Date().toLocaleTimeString();
  },
  error: (err) => {
    el.empty.textContent = `Cannot subscribe to ${CHANNEL}: ${err.message}`;
  },
});
client.connect();

function addTick(m, live) {
  const d = m.data;
  if (!d || typeof d.symbol !== "string" || !Number.isFinite(d.price)) return false;
  let q = quotes.get(d.symbol);
  if (!q) {
    q = { symbol: d.symbol, points: [], open: d.price, openOffset: m.offset, card: card(d.symbol), lastChange: 0 };
    quotes.set(d.symbol, q);
    placeCard(q);
  }
  const point = { offset: m.offset, price: d.price, ts: Number.isFinite(d.ts) ? d.ts : Date.now() };
  const pts = q.points;
  if (pts.some((p) => p.offset === point.offset)) return false;
  pts.push(point);
  // History can land after live ticks: keep the series in stream order.
  if (pts.length > 1 && pts[pts.length - 2].offset > point.offset) {
    pts.sort((a, b) => a.offset - b.offset);
  }
  if (pts.length > POINTS) pts.splice(0, pts.length - POINTS);
  // The reference price is the oldest one seen, so a late history backfill moves it back.
  if (point.offset < q.openOffset) {
    q.open = point.price;
    q.openOffset = point.offset;
  }
  if (live) {
    q.lastChange = Number.isFinite(d.change) ? d.change : 0;
    render(q, true);
  }
  return true;
}

function card(symbol) {
  const c = document.createElement("article");
  c.className = "card quote";
  c.dataset.symbol = symbol;
  c.innerHTML = `
    <span class="symbol"></span>
    <span class="change">–</span>
    <span class="price num">–</span>
    <svg class="spark" viewBox="0 0 100 40" preserveAspectRatio="none" aria-hidden="true">
      <polygon class="area" points=""></polygon><polyline points=""></polyline>
    </svg>
    <div class="foot"><span class="tick"></span><span class="time"></span></div>`;
  c.querySelector(".symbol").textContent = symbol;
  return c;
}

function placeCard(q) {
  el.empty.remove();
  const after = [...el.grid.children].find((c) => c.dataset.symbol > q.symbol);
  el.grid.insertBefore(q.card, after || null);
}

function render(q, flash) {
  const last = q.points[q.points.length - 1];
  if (!last) return;
  const c = q.card;
  const price = c.querySelector(".price");
  const prev = Number(price.dataset.value);
  price.textContent = money.format(last.price);
  price.dataset.value = String(last.price);
  if (flash && Number.isFinite(prev) && prev !== last.price) {
    price.classList.remove("flash-up", "flash-down");
    void price.offsetWidth; // restart the colour fade
    price.classList.add(last.price > prev ? "flash-up" : "flash-down");
    setTimeout(() => price.classList.remove("flash-up", "flash-down"), 200);
  }

  const diff = last.price - q.open;
  const pct = q.open ? (diff / q.open) * 100 : 0;
  const dir = diff > 0 ? "up" : diff < 0 ? "down" : "";
  const change = c.querySelector(".change");
  change.className = `change ${dir}`;
  const arrow = dir === "up" ? "▲ " : dir === "down" ? "▼ " : "";
  change.textContent = `${arrow}${money.format(Math.abs(diff))} (${pct > 0 ? "+" : ""}${pct.toFixed(2)}%)`;
  change.title = "change since this page opened";
  c.classList.toggle("trend-up", dir === "up");
  c.classList.toggle("trend-down", dir === "down");

  const tick = c.querySelector(".tick");
  tick.textContent = `last tick ${q.lastChange >= 0 ? "+" : ""}${money.format(q.lastChange)}`;
  c.querySelector(".time").textContent = new Date(last.ts).toLocaleTimeString();

  drawSpark(c.querySelector(".spark"), q.points.map((p) => p.price));
}

function drawSpark(svg, values) {
  if (values.length < 2) return;
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (hi - lo < 1e-9) {
    hi += 0.5;
    lo -= 0.5;
  }
  const step = 100 / (values.length - 1);
  const pts = values.map((v, i) => {
    const x = i * step;
    const y = 38 - ((v - lo) / (hi - lo)) * 36;
    return `${x.toFixed(2)},${y.toFixed(2)}`;
  });
  svg.querySelector("polyline").setAttribute("points", pts.join(" "));
  svg.querySelector(".area").setAttribute("points", `0,40 ${pts.join(" ")} 100,40`);
}

const RATE_WINDOW_MS = 5000;
const openedAt = performance.now();
setInterval(() => {
  const now = performance.now();
  while (arrivals.length && now - arrivals[0] > RATE_WINDOW_MS) arrivals.shift();
  // Until the page has been open for a whole window, divide by the time it has.
  const secs = Math.min(RATE_WINDOW_MS, now - openedAt) / 1000;
  el.rate.textContent = (arrivals.length / secs).toFixed(1);
}, 1000);

function renderStatus(e) {
  el.status.dataset.state = e.state;
  el.status.textContent =
    e.state === "connected"
      ? "Live"
      : e.state === "connecting"
        ? "Connecting…"
        : e.state === "disconnected"
          ? `Offline · retry in ${Math.ceil((e.delay || 0) / 1000)}s`
          : "Disconnected";
}

addEventListener("pagehide", () => client.close());
addEventListener("pageshow", (e) => {
  if (e.persisted) client.connect();
});
