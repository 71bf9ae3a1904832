// An application backend for the hook tests, on Node's built-in `http` module only.
//
// It listens on 127.0.0.1 on a free port and prints `{"port":N}` on its first line of
// output. Every request is recorded (method, path, headers, body) and `GET /records`
// returns them all, so a test can check what the hub sent. The hooks:
//
//   POST /connect    cookie `session=alice` -> user "alice", info, channel "news";
//                    `session=anon` -> allowed as it is; `session=banned` -> disconnect
//                    4001; `session=brief` -> user "alice", info, expiring in 2 s;
//                    `session=brief-carol` -> user "carol", expiring in 2 s; no session ->
//                    error "log in first" (close 4403).
//   POST /subscribe  channels starting with `secret` are refused; `vip*` get presence
//                    info {"vip":true}; `norecover*` get recover: false.
//   POST /publish    "darn" in data.text becomes "****" (and checked: true is added);
//                    channel `readonly` is refused.
//   POST /rpc        add {a,b} -> a+b; whoami -> {user, client}; echo -> data.
//   POST /ns-rpc     any method -> "from the namespace hook".
//   POST /refresh    user "alice": the first call for a client extends it by 2 s, the next
//                    ones answer expired; user "carol": 500, always.
//   POST /events     backend events: 200. /events-flaky answers 503 to its first two
//                    calls, then 200.
//
// And the broken ones, for any hook: /hang never answers, /garbage answers 200 with HTML,
// /huge answers 200 with 1 MiB of JSON, /status500 answers 500, /slow answers after 50 ms.

import http from 'node:http';

const records = [];
let flaky = 0;
// Refresh calls per client id.
const refreshes = new Map();

const inSeconds = (s) => Math.floor(Date.now() / 1000) + s;

function reply(res, status, body) {
  const text = typeof body === 'string' ? body : JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
  });
  res.end(text);
}

function cookie(req, name) {
  for (const part of (req.headers.cookie || '').split(';')) {
    const [k, v] = part.trim().split('=');
    if (k === name) return v;
  }
  return undefined;
}

const hooks = {
  '/connect': (req, body) => {
    switch (cookie(req, 'session')) {
      case 'alice':
        return { result: { user: 'alice', info: { name: 'Alice' }, channels: ['news'] } };
      case 'anon':
        return { result: {} };
      case 'brief':
        return { result: { user: 'alice', info: { name: 'Alice' }, expire_at: inSeconds(2) } };
      case 'brief-carol':
        return { result: { user: 'carol', expire_at: inSeconds(2) } };
      case 'banned':
        return { disconnect: { code: 4001, reason: 'banned' } };
      default:
        return { error: { message: 'log in first' } };
    }
  },
  '/subscribe': (req, body) => {
    if (body.channel.startsWith('secret')) return { error: { message: 'not for you' } };
    if (body.channel.startsWith('vip')) return { result: { info: { vip: true } } };
    if (body.channel.startsWith('norecover')) return { result: { recover: false } };
    return { result: {} };
  },
  '/publish': (req, body) => {
    if (body.channel === 'readonly') return { error: { message: 'read only' } };
    const data = body.data;
    if (data && typeof data.text === 'string' && data.text.includes('darn')) {
      return { result: { data: { ...data, text: data.text.replaceAll('darn', '****'), checked: true } } };
    }
    return { result: {} };
  },
  '/rpc': (req, body) => {
    switch (body.method) {
      case 'add':
        return { result: body.data.a + body.data.b };
      case 'whoami':
        return { result: { user: body.user, client: body.client } };
      case 'echo':
        return { result: body.data };
      default:
        return { error: { message: `no method ${body.method}` } };
    }
  },
  '/ns-rpc': () => ({ result: 'from the namespace hook' }),
  '/refresh': (req, body) => {
    const n = (refreshes.get(body.client) || 0) + 1;
    refreshes.set(body.client, n);
    return n === 1 ? { result: { expire_at: inSeconds(2) } } : { result: { expired: true } };
  },
};

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const text = Buffer.concat(chunks).toString('utf8');
    if (req.method === 'GET' && req.url === '/records') {
      return reply(res, 200, records);
    }
    let body = null;
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
    records.push({ method: req.method, path: req.url, headers: req.headers, body });
    switch (req.url) {
      case '/hang':
        return; // never answered; the hub's timeout must end the call
      case '/garbage':
        res.writeHead(200, { 'content-type': 'text/html' });
        return res.end('<html>not a hook reply</html>');
      case '/huge':
        return reply(res, 200, { result: { data: 'x'.repeat(1 << 20) } });
      case '/status500':
        return reply(res, 500, { error: { message: 'internal' } });
      case '/slow':
        return setTimeout(() => reply(res, 200, { result: {} }), 50);
      case '/events':
        return reply(res, 200, {});
      case '/refresh':
        if (body.user === 'carol') return reply(res, 500, { error: { message: 'internal' } });
        break;
      case '/events-flaky':
        flaky += 1;
        return reply(res, flaky <= 2 ? 503 : 200, {});
    }
    const hook = hooks[req.url];
    if (!hook || req.method !== 'POST') return reply(res, 404, { error: { message: 'no such hook' } });
    reply(res, 200, hook(req, body));
  });
});

// Keep-alive connections from the hub's pool stay open between calls.
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n');
});
// The test kills this process; if its stdin closes first (the test process died), go too.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
