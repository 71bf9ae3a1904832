// A hub on Node and `ws`, speaking the duplex.v1 subset of hub-protocol.mjs: the everyday
// baseline of a JavaScript pub/sub server. Channels are sets of sockets; a publication's
// `message` frame is encoded once into a Buffer and sent to each subscriber.
//
//   node node-hub.mjs [ADDR]      # ADDR defaults to 127.0.0.1:9004; WebSockets on any path
//
// Settings as close to `duplex serve`'s defaults as `ws` has them: 64 KiB messages, no
// compression (also `ws`'s server default), the duplex.v1 subprotocol selected when it is
// offered, and a subscriber with more than 1 MiB unsent closed with 1013.

import { WebSocketServer } from 'ws';

import { createHub, newClient, parseAddr, SUBPROTOCOL } from './hub-protocol.mjs';

const [host, port] = parseAddr(process.argv[2], '127.0.0.1:9004');
const MAX_BUFFERED = 1024 * 1024;

// channel -> Set of sockets subscribed to it.
const subscribers = new Map();

function leave(ws, channel) {
  const set = subscribers.get(channel);
  set?.delete(ws);
  if (set?.size === 0) {
    subscribers.delete(channel);
  }
}

const hub = createHub({
  subscribe(client, channel) {
    let set = subscribers.get(channel);
    if (set === undefined) {
      set = new Set();
      subscribers.set(channel, set);
    }
    set.add(client.ws);
  },
  unsubscribe: (client, channel) => leave(client.ws, channel),
  publish(channel, text) {
    const set = subscribers.get(channel);
    if (set === undefined) {
      return;
    }
    const frame = Buffer.from(text);
    for (const ws of set) {
      if (ws.bufferedAmount > MAX_BUFFERED) {
        ws.close(1013, 'slow consumer');
        continue;
      }
      ws.send(frame, { binary: false });
    }
  },
});

const wss = new WebSocketServer({
  host,
  port,
  perMessageDeflate: false,
  maxPayload: 64 * 1024,
  clientTracking: false,
  handleProtocols: (protocols) => (protocols.has(SUBPROTOCOL) ? SUBPROTOCOL : false),
});

wss.on('connection', (ws) => {
  const client = newClient();
  client.ws = ws;
  ws.send(hub.welcome(client));
  ws.on('message', (data, isBinary) => {
    const reply = isBinary
      ? JSON.stringify({ type: 'error', code: 'bad_json', message: 'binary frames are not commands' })
      : hub.command(client, data.toString());
    ws.send(reply);
  });
  ws.on('close', () => {
    for (const channel of client.channels) {
      leave(ws, channel);
    }
  });
  ws.on('error', () => ws.terminate());
});

wss.on('listening', () => {
  const { address, port } = wss.address();
  console.error(`node ws hub listening on ${address}:${port} (Node ${process.version})`);
});
