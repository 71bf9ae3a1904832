// Node `ws` peer for the duplex interop tests.
//
// Usage:
//   node peer.mjs server        listen on 127.0.0.1 (a free port), print "listening PORT",
//                               serve one connection, then exit
//   node peer.mjs client URL [--subprotocol NAME]...
//                               connect to URL (offering these subprotocols, and
//                               permessage-deflate as ws does by default), report the
//                               handshake as "subprotocol NAME|none" and "extensions VALUE|none"
//                               when a subprotocol is offered, run the scenario, then exit
//
// The scenario is the request path, e.g. ws://127.0.0.1:9001/echo. The peer prints what it
// observed as lines on stdout ("closed 1000 done", "pong peer-ping", ...) for the Rust test to
// check, and exits 0; on any unexpected event it prints "error: ..." on stderr and exits 1.
// The whole run is bounded by a timeout, so a stuck peer never hangs the test suite.
//
// Scenarios (mirrored by tests/peers/python/peer.py, driven by crates/duplex/tests/it/peers.rs):
//   echo                   send every message back unchanged until the connection closes
//   fragmented             send fragmented text and binary messages (with a ping between two
//                          fragments), then echo until closed
//   ping                   ping and await the pong; report the pings received
//   close-from-peer/CODE   close with CODE and a reason, report the echoed close
//   close-from-duplex      wait for the other side to close, report its code and reason

import { WebSocket, WebSocketServer } from 'ws';

// Everything the peer does must finish within this many milliseconds.
const TIMEOUT_MS = 60_000;
// Large enough for the 16 MiB messages of the tests.
const MAX_PAYLOAD = 64 * 1024 * 1024;

// What the fragmented scenario sends: each array is one message, each item one frame. The text
// is split inside multi-byte characters on purpose: only the whole message must be valid UTF-8
// (RFC 6455 section 5.6), so the receiver has to validate across fragments.
const TEXT_FRAGMENTS = [
  Buffer.from('fragmented '),
  Buffer.from([0x74, 0xc3]),
  Buffer.from([0xa9, 0x78]),
  Buffer.from([0x74, 0x20, 0xe2, 0x82]),
  Buffer.from([0xac]),
];
const BINARY_FRAGMENTS = [0, 1, 2].map((n) => {
  const fragment = Buffer.alloc(65537);
  for (let i = 0; i < fragment.length; i++) fragment[i] = (i * 7 + n) % 256;
  return fragment;
});

class PeerError extends Error {}

function report(line) {
  process.stdout.write(`${line}\n`);
}

function fail(message) {
  process.stderr.write(`error: ${message}\n`);
  process.exit(1);
}

// Turns the socket's events into an ordered queue the scenarios can await one by one.
function events(ws) {
  const queue = [];
  const waiters = [];
  const pings = [];
  const push = (event) => {
    const waiter = waiters.shift();
    if (waiter) waiter(event);
    else queue.push(event);
  };
  ws.on('message', (data, isBinary) => push({ type: 'message', data, isBinary }));
  ws.on('ping', (data) => pings.push(data));
  ws.on('pong', (data) => push({ type: 'pong', data }));
  ws.on('close', (code, reason) => push({ type: 'close', code, reason: reason.toString() }));
  ws.on('error', (error) => push({ type: 'error', error }));
  return {
    pings,
    next: () =>
      queue.length > 0 ? Promise.resolve(queue.shift()) : new Promise((r) => waiters.push(r)),
  };
}

async function expectMessage(ev) {
  const event = await ev.next();
  if (event.type !== 'message') throw new PeerError(`expected a message, got ${describe(event)}`);
  return event;
}

function describe(event) {
  switch (event.type) {
    case 'close':
      return `close ${event.code} ${event.reason}`;
    case 'error':
      return `error ${event.error.message}`;
    case 'message':
      return `${event.isBinary ? 'binary' : 'text'} message of ${event.data.length} bytes`;
    default:
      return event.type;
  }
}

function closed(event) {
  report(`closed ${event.code} ${event.reason}`);
}

async function echo(ws, ev) {
  for (;;) {
    const event = await ev.next();
    if (event.type === 'message') {
      ws.send(event.data, { binary: event.isBinary });
    } else if (event.type === 'close') {
      closed(event);
      return;
    } else if (event.type === 'error') {
      throw new PeerError(describe(event));
    }
  }
}

async function fragmented(ws, ev) {
  TEXT_FRAGMENTS.forEach((fragment, i) => {
    ws.send(fragment, { binary: false, fin: i === TEXT_FRAGMENTS.length - 1 });
    // A control frame in the middle of a fragmented message (RFC 6455 section 5.4).
    if (i === 1) ws.ping('between-fragments');
  });
  BINARY_FRAGMENTS.forEach((fragment, i) => {
    ws.send(fragment, { binary: true, fin: i === BINARY_FRAGMENTS.length - 1 });
  });
  report('sent fragmented');
  await echo(ws, ev);
}

async function ping(ws, ev) {
  ws.ping('peer-ping');
  const event = await ev.next();
  if (event.type !== 'pong' || event.data.toString() !== 'peer-ping') {
    throw new PeerError(`expected the pong for 'peer-ping', got ${describe(event)}`);
  }
  report('pong peer-ping');
  ws.send('pinged');
  // The other side now pings us and then sends "after-ping"; frames arrive in order, so the
  // ping has been seen by the time the text message is.
  const message = await expectMessage(ev);
  if (message.isBinary || message.data.toString() !== 'after-ping') {
    throw new PeerError(`expected 'after-ping', got ${describe(message)}`);
  }
  for (const payload of ev.pings) report(`ping ${payload.toString()}`);
  await echo(ws, ev);
}

async function closeFromPeer(ws, ev, code) {
  ws.close(code, `peer closes with ${code} \u2713`);
  for (;;) {
    const event = await ev.next();
    if (event.type === 'close') return closed(event);
    if (event.type === 'error') throw new PeerError(describe(event));
  }
}

async function closeFromDuplex(ws, ev) {
  const event = await ev.next();
  if (event.type !== 'close') throw new PeerError(`expected a close, got ${describe(event)}`);
  closed(event);
}

async function scenario(ws, ev, path) {
  const [name, arg] = path.replace(/^\/+/, '').split('/');
  switch (name) {
    case 'echo':
      return echo(ws, ev);
    case 'fragmented':
      return fragmented(ws, ev);
    case 'ping':
      return ping(ws, ev);
    case 'close-from-peer':
      return closeFromPeer(ws, ev, Number(arg));
    case 'close-from-duplex':
      return closeFromDuplex(ws, ev);
    default:
      ws.close(1008, `unknown scenario ${name}`);
      throw new PeerError(`unknown scenario ${path}`);
  }
}

function runServer() {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0, maxPayload: MAX_PAYLOAD });
  server.on('listening', () => report(`listening ${server.address().port}`));
  server.on('error', (error) => fail(error.message));
  server.once('connection', (ws, request) => {
    const ev = events(ws);
    scenario(ws, ev, new URL(request.url, 'ws://peer').pathname).then(
      () => process.exit(0),
      (error) => fail(error.message),
    );
  });
}

function runClient(url, protocols) {
  const ws = new WebSocket(url, protocols, {
    maxPayload: MAX_PAYLOAD,
    handshakeTimeout: TIMEOUT_MS,
  });
  const ev = events(ws);
  ws.once('open', () => {
    if (protocols.length > 0) {
      report(`subprotocol ${ws.protocol || 'none'}`);
      report(`extensions ${ws.extensions || 'none'}`);
    }
    scenario(ws, ev, new URL(url).pathname).then(
      () => process.exit(0),
      (error) => fail(error.message),
    );
  });
  ws.once('error', (error) => fail(error.message));
}

const [mode, url, ...options] = process.argv.slice(2);
const protocols = [];
for (let i = 0; i < options.length; i += 2) {
  if (options[i] !== '--subprotocol' || options[i + 1] === undefined) {
    fail(`unknown option ${options[i]}`);
  }
  protocols.push(options[i + 1]);
}
setTimeout(() => fail(`the peer did not finish within ${TIMEOUT_MS / 1000} s`), TIMEOUT_MS).unref();
if (mode === 'server' && url === undefined && protocols.length === 0) runServer();
else if (mode === 'client' && url !== undefined) runClient(url, protocols);
else fail('usage: node peer.mjs server | node peer.mjs client URL [--subprotocol NAME]...');
