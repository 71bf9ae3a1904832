// The part of the duplex.v1 hub protocol (docs/protocol.md) that `duplex bench fanout`,
// `idle` and `connect` use, shared by the Bun hub and the Node `ws` hub so that the two
// differ only in their WebSocket server.
//
// Served: `welcome` on open; `subscribe`, `unsubscribe`, `publish` (per-channel offsets, one
// `message` frame built per publication) and `ping`. Everything else (`presence`, `history`,
// `refresh`, recovery with `since`, tokens) is answered with an `error`: these hubs exist to
// measure fan-out, not to stand in for `duplex serve`.

import { randomBytes } from 'node:crypto';

export const SUBPROTOCOL = 'duplex.v1';

// The interval `welcome` recommends for client pings, as `duplex serve` sends it.
const PING_INTERVAL_MS = 25000;

// Longest channel name (docs/protocol.md, 'Channels and namespaces').
const MAX_CHANNEL = 255;

const CHANNEL = /^[A-Za-z0-9_\-.:@/=+]+$/;

function randomId(bytes) {
  return randomBytes(bytes).toString('hex');
}

// Whether the handshake's `Sec-WebSocket-Protocol` header offers duplex.v1.
export function offersSubprotocol(header) {
  return (header ?? '').split(',').some((p) => p.trim() === SUBPROTOCOL);
}

// One connection's state: its client id and the channels it is subscribed to.
export function newClient() {
  return { id: randomId(8), channels: new Set() };
}

function frame(type, id, body) {
  return JSON.stringify(id === undefined ? { type, ...body } : { type, id, ...body });
}

function error(id, code, message) {
  return frame('error', id, { code, message });
}

// A hub over `transport`, which delivers: `subscribe(client, channel)`,
// `unsubscribe(client, channel)` and `publish(channel, text)`, the last sending the
// `message` frame `text` to every connection subscribed to `channel`.
export function createHub(transport) {
  const node = randomId(6);
  // channel -> { epoch, offset }: the stream position, kept for the process's life (the
  // benchmark uses a handful of channels).
  const positions = new Map();
  const position = (channel) => {
    let p = positions.get(channel);
    if (p === undefined) {
      p = { epoch: randomId(8), offset: 0 };
      positions.set(channel, p);
    }
    return p;
  };

  return {
    welcome(client) {
      return frame('welcome', undefined, {
        client: client.id,
        user: null,
        node,
        version: SUBPROTOCOL,
        ping_interval_ms: PING_INTERVAL_MS,
      });
    },

    // The answer to one text frame from `client`.
    command(client, text) {
      let cmd;
      try {
        cmd = JSON.parse(text);
      } catch {
        return error(undefined, 'bad_json', 'not JSON');
      }
      if (cmd === null || typeof cmd !== 'object' || Array.isArray(cmd)) {
        return error(undefined, 'bad_request', 'a command is a JSON object');
      }
      const id = Number.isSafeInteger(cmd.id) && cmd.id >= 0 ? cmd.id : undefined;
      const needsChannel = ['subscribe', 'unsubscribe', 'publish'].includes(cmd.type);
      const channel = cmd.channel;
      if (
        needsChannel &&
        (typeof channel !== 'string' ||
          channel.length > MAX_CHANNEL ||
          !CHANNEL.test(channel) ||
          channel.startsWith(':') ||
          channel.endsWith(':'))
      ) {
        return error(id, 'bad_channel', 'channel name is not valid');
      }
      switch (cmd.type) {
        case 'subscribe': {
          if (cmd.since !== undefined) {
            return error(id, 'bad_request', 'recovery is not served by this hub');
          }
          if (client.channels.has(channel)) {
            return error(id, 'already_subscribed', 'already subscribed');
          }
          client.channels.add(channel);
          transport.subscribe(client, channel);
          const { epoch, offset } = position(channel);
          return frame('reply', id, { channel, epoch, offset, recovered: false });
        }
        case 'unsubscribe': {
          if (!client.channels.delete(channel)) {
            return error(id, 'not_subscribed', 'not subscribed');
          }
          transport.unsubscribe(client, channel);
          return frame('reply', id, { channel });
        }
        case 'publish': {
          if (!('data' in cmd)) {
            return error(id, 'bad_request', 'publish needs data');
          }
          const p = position(channel);
          p.offset += 1;
          transport.publish(
            channel,
            frame('message', undefined, {
              channel,
              offset: p.offset,
              data: cmd.data,
              from: client.id,
            }),
          );
          return frame('reply', id, { channel, epoch: p.epoch, offset: p.offset });
        }
        case 'ping':
          return frame('pong', id, {});
        default:
          return error(id, 'bad_request', `${JSON.stringify(cmd.type)} is not served by this hub`);
      }
    },
  };
}

// `[host, port]` from an `ADDR` argument such as `127.0.0.1:9002`.
export function parseAddr(addr, fallback) {
  const text = addr ?? fallback;
  const colon = text.lastIndexOf(':');
  const port = Number(text.slice(colon + 1));
  if (colon < 0 || !Number.isInteger(port) || port < 0 || port > 65535) {
    throw new Error(`bad listen address ${JSON.stringify(text)}: expected HOST:PORT`);
  }
  return [text.slice(0, colon), port];
}
