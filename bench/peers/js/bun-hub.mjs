// A hub on Bun.serve (uWebSockets inside) speaking the duplex.v1 subset of hub-protocol.mjs,
// with Bun's own pub/sub: `ws.subscribe(channel)`, and one `server.publish(channel, frame)`
// per publication, which uWebSockets sends to every subscriber.
//
//   bun bun-hub.mjs [ADDR] [--deflate]   # ADDR defaults to 127.0.0.1:9003; any path
//
// Settings as close to `duplex serve`'s defaults as Bun has them: 64 KiB messages, no
// compression (with --deflate, permessage-deflate with uWebSockets' shared compressor, which
// compresses a publication once for all its subscribers, as duplex serve does), a 1 MiB outbound buffer past which a subscriber is closed (duplex closes a slow
// consumer with 1013), and the duplex.v1 subprotocol selected when it is offered.

import { createHub, newClient, offersSubprotocol, parseAddr, SUBPROTOCOL } from './hub-protocol.mjs';

const args = process.argv.slice(2);
const deflate = args.includes('--deflate');
const [hostname, port] = parseAddr(args.find((a) => !a.startsWith('--')), '127.0.0.1:9003');

let server;
const hub = createHub({
  subscribe: (client, channel) => client.ws.subscribe(channel),
  unsubscribe: (client, channel) => client.ws.unsubscribe(channel),
  // With --deflate a publication is sent compressed (Bun's third argument), once.
  publish: (channel, text) => server.publish(channel, text, deflate),
});

server = Bun.serve({
  hostname,
  port,
  fetch(req, server) {
    // Bun answers with the first subprotocol offered unless the upgrade names one, even when
    // the server wants none of them (duplex serve then sends no header): name duplex.v1 when
    // it is offered. A client offering only others gets its first one back, which the
    // benchmark never does.
    const headers = new Headers();
    if (offersSubprotocol(req.headers.get('sec-websocket-protocol'))) {
      headers.set('Sec-WebSocket-Protocol', SUBPROTOCOL);
    }
    if (server.upgrade(req, { headers, data: newClient() })) {
      return undefined;
    }
    return new Response('expected a WebSocket upgrade\n', { status: 400 });
  },
  websocket: {
    perMessageDeflate: deflate ? { compress: 'shared', decompress: true } : false,
    maxPayloadLength: 64 * 1024,
    backpressureLimit: 1024 * 1024,
    closeOnBackpressureLimit: true,
    // Bun pings a quiet connection and closes it if no pong comes back, as duplex serve does
    // (every 25 s there; 120 s, Bun's default, here).
    idleTimeout: 120,
    open(ws) {
      ws.data.ws = ws;
      ws.send(hub.welcome(ws.data));
    },
    message(ws, message) {
      const reply =
        typeof message === 'string'
          ? hub.command(ws.data, message)
          : JSON.stringify({ type: 'error', code: 'bad_json', message: 'binary frames are not commands' });
      ws.send(reply);
    },
    close(ws) {
      // Bun drops a closed socket's subscriptions itself.
      ws.data.ws = undefined;
    },
  },
});

console.error(`bun hub listening on ${server.hostname}:${server.port} (Bun ${Bun.version})`);
