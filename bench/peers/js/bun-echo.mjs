// Bun echo server (Bun.serve, whose WebSockets are uWebSockets), for `cargo xtask
// bench-peers` to compare with `duplex echo`.
//
//   bun bun-echo.mjs [ADDR] [--deflate]      # ADDR defaults to 127.0.0.1:9002
//
// Every text and binary message goes back as it came (a string as text, a buffer as binary).
// With --deflate, permessage-deflate (RFC 7692) is accepted when offered and every echo is
// sent compressed; without it the offer is declined. No idle timeout: the idle point holds
// connections that send nothing.

import { parseAddr } from './hub-protocol.mjs';

const args = process.argv.slice(2);
const deflate = args.includes('--deflate');
const [hostname, port] = parseAddr(args.find((a) => !a.startsWith('--')), '127.0.0.1:9002');

const server = Bun.serve({
  hostname,
  port,
  fetch(req, server) {
    if (server.upgrade(req)) {
      return undefined;
    }
    return new Response('expected a WebSocket upgrade\n', { status: 400 });
  },
  websocket: {
    // 'dedicated': a compressor per connection that keeps its context between messages, as
    // duplex does (Bun's `true` is uWebSockets' shared compressor: no context takeover).
    perMessageDeflate: deflate ? { compress: 'dedicated', decompress: 'dedicated' } : false,
    // As large as the other servers' message limit (duplex's default is 64 MiB).
    maxPayloadLength: 64 * 1024 * 1024,
    // 0: never close a quiet connection, and send no pings of our own.
    idleTimeout: 0,
    sendPings: false,
    message(ws, message) {
      ws.send(message, deflate);
    },
  },
});

console.error(`bun echo server listening on ${server.hostname}:${server.port} (Bun ${Bun.version})`);
