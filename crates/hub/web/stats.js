// The live stats page: polls `GET /api/stats` and `GET /api/channels` (see
// docs/protocol.md) and shows the figures, per-second rates and short trends.
const POLL_MS = 1000;
const SAMPLES = 60;
const $ = (id) => document.getElementById(id);

/**
 * Cards: key in /api/stats, label, group, whether the card shows a per-second
 * rate (counters) and whether it draws a trend line (of the value or the rate).
 */
const GROUPS = ["Now", "Traffic", "Health"];
const CARDS = [
  { key: "connections", label: "Connections", group: "Now", spark: true },
  { key: "subscriptions", label: "Subscriptions", group: "Now", spark: true },
  { key: "channels", label: "Channels", group: "Now", spark: true },
  { key: "publications", label: "Publications", group: "Traffic", rate: true, spark: true },
  { key: "messages_in", label: "Messages in", group: "Traffic", rate: true, spark: true },
  { key: "messages_out", label: "Messages out", group: "Traffic", rate: true, spark: true },
  { key: "bytes_in", label: "Bytes in", group: "Traffic", rate: true, bytes: true, spark: true },
  { key: "bytes_out", label: "Bytes out", group: "Traffic", rate: true, bytes: true, spark: true },
  { key: "slow_consumer_disconnects", label: "Slow consumers closed", group: "Health" },
  { key: "slow_consumer_drops", label: "Slow consumer drops", group: "Health" },
  { key: "handshake_failures", label: "Handshake failures", group: "Health" },
];

const int = new Intl.NumberFormat();
const dec = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
const trends = new Map(CARDS.map((c) => [c.key, []]));
let previous = null; // {at, stats}

const cards = new Map();
const grids = new Map();
for (const g of GROUPS) {
  const title = document.createElement("h2");
  title.className = "section-title";
  title.textContent = g;
  const grid = document.createElement("div");
  grid.className = "stat-grid";
  $("cards").append(title, grid);
  grids.set(g, grid);
}
for (const c of CARDS) {
  const node = document.createElement("article");
  node.className = "card stat";
  node.dataset.key = c.key;
  node.innerHTML = `<div class="label"></div><div class="value num">–</div><div class="sub"></div>`;
  node.querySelector(".label").textContent = c.label;
  if (c.spark) {
    node.insertAdjacentHTML(
      "beforeend",
      `<svg class="spark" viewBox="0 0 100 32" preserveAspectRatio="none" aria-hidden="true"><polyline points=""></polyline></svg>`,
    );
  }
  grids.get(c.group).append(node);
  cards.set(c.key, node);
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i ? dec.format(n) : int.format(n)} ${units[i]}`;
}

function duration(s) {
  s = Math.max(0, Math.floor(s));
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status").textContent = text;
}

async function getJson(path) {
  const res = await fetch(path, { cache: "no-store", headers: { accept: "application/json" } });
  let body = null;
  try {
    body = await res.json();
  } catch {
    // A non-JSON body (a proxy's error page) is reported by status below.
  }
  if (!res.ok) {
    const why = body && body.message ? body.message : res.statusText;
    const err = new Error(`${path}: ${res.status} ${why}`);
    err.status = res.status;
    throw err;
  }
  return body;
}

function render(stats, at) {
  $("node").textContent = String(stats.node ?? "–");
  $("version").textContent = String(stats.version ?? "–");
  $("uptime").textContent = duration(stats.uptime_seconds ?? 0);
  const dt = previous ? (at - previous.at) / 1000 : 0;
  for (const c of CARDS) {
    const node = cards.get(c.key);
    const v = Number(stats[c.key]);
    if (!Number.isFinite(v)) {
      node.querySelector(".value").textContent = "–";
      continue;
    }
    node.querySelector(".value").textContent = c.bytes ? bytes(v) : int.format(v);
    let trend = v;
    if (c.rate) {
      const before = previous ? Number(previous.stats[c.key]) : NaN;
      // A counter that went down means the server restarted: no rate for that gap.
      const rate = dt > 0 && Number.isFinite(before) && v >= before ? (v - before) / dt : null;
      node.querySelector(".sub").textContent =
        rate === null ? "" : c.bytes ? `${bytes(rate)}/s` : `${dec.format(rate)}/s`;
      trend = rate;
    }
    const h = trends.get(c.key);
    if (trend === null) continue; // no rate before the second sample
    h.push(trend);
    if (h.length > SAMPLES) h.shift();
    if (c.spark) drawSpark(node.querySelector("polyline"), h);
  }
  previous = { at, stats };
}

function drawSpark(line, values) {
  if (values.length < 2) return;
  // Headroom above the peak, so a steady value does not read as "at the limit".
  const hi = Math.max(...values, 1) * 1.2;
  const step = 100 / (values.length - 1);
  line.setAttribute(
    "points",
    values.map((v, i) => `${(i * step).toFixed(2)},${(30 - (v / hi) * 28).toFixed(2)}`).join(" "),
  );
}

function renderChannels(list) {
  const body = $("channels");
  if (!list.length) {
    body.innerHTML = `<tr><td colspan="2" class="muted">No channel has subscribers.</td></tr>`;
    return;
  }
  body.replaceChildren(
    ...list.map((c) => {
      const tr = document.createElement("tr");
      const name = document.createElement("td");
      name.textContent = c.channel;
      const n = document.createElement("td");
      n.className = "num";
      n.textContent = int.format(c.subscribers);
      tr.append(name, n);
      return tr;
    }),
  );
}

let polls = 0;
async function poll() {
  try {
    const stats = await getJson("/api/stats");
    render(stats, performance.now());
    if (polls++ % 2 === 0) renderChannels((await getJson("/api/channels")).channels || []);
    setStatus("connected", "Live");
    $("error").textContent = "";
  } catch (err) {
    setStatus("disconnected", "Unreachable");
    $("error").textContent =
      err.status === 401
        ? "The server protects its stats (api.protect_reads); they need the API key."
        : `Cannot load stats: ${err.message}`;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
