"""Hypercorn peer for the duplex WebSocket-over-HTTP/2 (RFC 8441) interop tests.

Usage:
    h2_peer.py    listen on 127.0.0.1 (a free port), print "listening PORT", serve HTTP/2
                  with prior knowledge (h2c) and HTTP/1.1 until killed or TIMEOUT passes

Hypercorn answers an HTTP/2 extended CONNECT with :protocol websocket (it announces
SETTINGS_ENABLE_CONNECT_PROTOCOL) and hands the stream to this ASGI app as a WebSocket. The
request path is the scenario:

    /echo               send every message back unchanged until the connection closes
    /whoami             answer each message with "PORT VERSION": the client's TCP port and
                        the HTTP version, so the test can see several WebSockets share one
                        HTTP/2 connection
    /close/CODE         on the first message, close with CODE and the reason "bye CODE"

The app prints what it observed as lines on stdout ("open /echo 2", "closed /echo 1000"),
flushed at once, for the Rust test to check.
"""

import asyncio
import socket
import sys

import h2.events
from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.protocol.h2 import H2Protocol

# The whole run is bounded, so a forgotten peer never outlives the test suite.
TIMEOUT = 120
# Large enough for the 16 MiB messages of the tests (hypercorn's default is exactly 16 MiB).
MAX_SIZE = 64 * 1024 * 1024


# hypercorn 0.18 forgets a WebSocket's stream as soon as the close handshake is done, without
# ending its half of the stream, and a DATA frame that arrives on it afterwards (the client's
# END_STREAM, RFC 8441 section 5) raises KeyError, which ends the whole HTTP/2 connection with
# every other WebSocket on it. It already ignores END_STREAM on such a stream when it comes as
# its own event; the same is done here for DATA, whose flow-control credit is still returned.
# Without this, only one WebSocket per connection could ever be closed cleanly.
_handle_events = H2Protocol._handle_events


async def _handle_known_streams(self, events):
    kept = []
    for event in events:
        if isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
            if event.flow_controlled_length:
                self.connection.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
            continue
        kept.append(event)
    await _handle_events(self, kept)


H2Protocol._handle_events = _handle_known_streams


def report(line: str) -> None:
    print(line, flush=True)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"not a websocket"})
        return
    path = scope["path"]
    message = await receive()
    assert message["type"] == "websocket.connect", message
    await send({"type": "websocket.accept"})
    report(f"open {path} {scope['http_version']}")
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            report(f"closed {path} {message.get('code')}")
            return
        if path.startswith("/close/"):
            code = int(path.rsplit("/", 1)[1])
            await send({"type": "websocket.close", "code": code, "reason": f"bye {code}"})
            report(f"sent close {code}")
            return
        if path == "/whoami":
            port = scope["client"][1] if scope.get("client") else 0
            await send({"type": "websocket.send", "text": f"{port} {scope['http_version']}"})
            continue
        if message.get("bytes") is not None:
            await send({"type": "websocket.send", "bytes": message["bytes"]})
        else:
            await send({"type": "websocket.send", "text": message.get("text", "")})


async def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    sock.set_inheritable(True)
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.websocket_max_message_size = MAX_SIZE
    config.accesslog = None
    config.errorlog = "-"
    config.loglevel = "WARNING"
    report(f"listening {sock.getsockname()[1]}")
    shutdown = asyncio.Event()
    try:
        await asyncio.wait_for(serve(app, config, shutdown_trigger=shutdown.wait), TIMEOUT)
    except asyncio.TimeoutError:
        print("error: timed out", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main())
