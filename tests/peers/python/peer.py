"""Python `websockets` peer for the duplex interop tests.

Usage:
    peer.py server [OPTIONS]      listen on 127.0.0.1 (a free port), print "listening PORT",
                                  serve one connection, then exit
    peer.py client URL [OPTIONS]  connect to URL, run the scenario, then exit

Options:
    --tls CERT KEY      (server) serve wss:// with this PEM certificate chain and key
    --cafile CA         (client) trust this PEM CA for wss:// URLs
    --deflate MODE      permessage-deflate: "default" (the library's own settings: offered by
                        a client, accepted by a server with 12-bit windows), "no-takeover"
                        (server: require client_no_context_takeover and use
                        server_no_context_takeover; client: request server_no_context_takeover
                        and offer client_no_context_takeover), or "off". Without this option
                        the library's defaults apply as well, but nothing extra is reported.
    --subprotocol NAME  (client) offer this subprotocol (repeatable, in order of preference)
                        and report the one the server chose as "subprotocol NAME" (or "none")

With --deflate, the peer first reports the negotiated extension as "extensions VALUE" (the
Sec-WebSocket-Extensions response header, or "none").

The scenario is the request path, e.g. ws://127.0.0.1:9001/echo. The peer prints what it
observed as lines on stdout ("closed 1000 done", "pong peer-ping", ...) for the Rust test to
check, and exits 0; on any unexpected event it prints "error: ..." on stderr and exits 1.
The whole run is bounded by a timeout, so a stuck peer never hangs the test suite.

Scenarios (mirrored by tests/peers/node/peer.mjs and driven by crates/duplex/tests/it/peers.rs):
    echo                   send every message back unchanged until the connection closes
    fragmented             send fragmented text and binary messages, then echo until closed
    ping                   ping and await the pong; report the pings received
    close-from-peer/CODE   close with CODE and a reason, report the echoed close
    close-from-duplex      wait for the other side to close, report its code and reason
"""

import argparse
import asyncio
import ssl
import sys
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Frame, Opcode

# Everything the peer does must finish within this many seconds.
TIMEOUT = 60
# Large enough for the 16 MiB messages of the tests (the library's default is 1 MiB).
MAX_SIZE = 64 * 1024 * 1024

# What the fragmented scenario sends: each list is one message, each item one frame.
# The text is split inside multi-byte characters on purpose: only the whole message must be
# valid UTF-8 (RFC 6455 section 5.6), so the receiver has to validate across fragments.
TEXT_FRAGMENTS = [b"fragmented ", "t\u00e9x".encode()[:2], "t\u00e9x".encode()[2:], b"t \xe2\x82", b"\xac"]
BINARY_FRAGMENTS = [bytes((i * 7 + n) % 256 for i in range(65537)) for n in range(3)]


class PeerError(Exception):
    pass


def report(line):
    print(line, flush=True)


def record_pings(base):
    """A connection class that also keeps the payload of every ping it receives."""

    class Recording(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.pings = []

        def process_event(self, event):
            if isinstance(event, Frame) and event.opcode is Opcode.PING:
                self.pings.append(bytes(event.data))
            super().process_event(event)

    return Recording


def closed(ws):
    report(f"closed {ws.close_code} {ws.close_reason}")


async def messages(ws):
    """Yields messages until the connection closes, whatever the close code: the code is
    reported by `closed` and checked by the test, so an unusual one is not an error here."""
    while True:
        try:
            yield await ws.recv()
        except ConnectionClosed:
            return


async def echo(ws):
    async for message in messages(ws):
        await ws.send(message)
    closed(ws)


async def fragmented(ws):
    await ws.send(TEXT_FRAGMENTS, text=True)
    await ws.send(BINARY_FRAGMENTS)
    report("sent fragmented")
    await echo(ws)


async def ping(ws):
    pong = await ws.ping(b"peer-ping")
    await asyncio.wait_for(pong, TIMEOUT)
    report("pong peer-ping")
    await ws.send("pinged")
    # The other side now pings us and then sends "after-ping"; frames arrive in order, so the
    # ping has been seen by the time the text message is.
    message = await ws.recv()
    if message != "after-ping":
        raise PeerError(f"expected 'after-ping', got {message!r}")
    for payload in ws.pings:
        report(f"ping {payload.decode(errors='replace')}")
    await echo(ws)


async def close_from_peer(ws, code):
    await ws.close(code, f"peer closes with {code} \u2713")
    closed(ws)


async def close_from_duplex(ws):
    async for message in messages(ws):
        raise PeerError(f"expected a close, got a message of {len(message)} bytes")
    closed(ws)


async def scenario(ws, path):
    name, _, arg = path.strip("/").partition("/")
    if name == "echo":
        await echo(ws)
    elif name == "fragmented":
        await fragmented(ws)
    elif name == "ping":
        await ping(ws)
    elif name == "close-from-peer":
        await close_from_peer(ws, int(arg))
    elif name == "close-from-duplex":
        await close_from_duplex(ws)
    else:
        await ws.close(1008, f"unknown scenario {name!r}")
        raise PeerError(f"unknown scenario {path!r}")


def compression(args, server):
    """The `compression` and `extensions` arguments of serve()/connect() for --deflate."""
    if args.deflate == "off":
        return {"compression": None}
    if args.deflate in (None, "default"):
        return {"compression": "deflate"}
    if server:
        factory = ServerPerMessageDeflateFactory(
            server_no_context_takeover=True,
            client_no_context_takeover=True,
            require_client_max_window_bits=False,
        )
    else:
        factory = ClientPerMessageDeflateFactory(
            server_no_context_takeover=True,
            client_no_context_takeover=True,
        )
    return {"compression": None, "extensions": [factory]}


def report_extensions(args, ws):
    if args.deflate is not None:
        value = ws.response.headers.get("Sec-WebSocket-Extensions")
        report(f"extensions {value or 'none'}")
    if args.subprotocol:
        report(f"subprotocol {ws.subprotocol or 'none'}")


async def run_server(args):
    done = asyncio.get_running_loop().create_future()

    async def handler(ws):
        try:
            report_extensions(args, ws)
            await scenario(ws, ws.request.path)
        except BaseException as error:  # handed to the main task, which reports it
            if not done.done():
                done.set_exception(error)
            return
        if not done.done():
            done.set_result(None)

    tls = None
    if args.tls:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(*args.tls)

    async with serve(
        handler,
        "127.0.0.1",
        0,
        max_size=MAX_SIZE,
        ping_interval=None,
        ssl=tls,
        create_connection=record_pings(ServerConnection),
        **compression(args, server=True),
    ) as server:
        port = server.sockets[0].getsockname()[1]
        report(f"listening {port}")
        await done


async def run_client(args):
    tls = None
    if args.url.startswith("wss:"):
        tls = ssl.create_default_context(cafile=args.cafile)
    async with connect(
        args.url,
        max_size=MAX_SIZE,
        ping_interval=None,
        open_timeout=TIMEOUT,
        ssl=tls,
        create_connection=record_pings(ClientConnection),
        subprotocols=args.subprotocol or None,
        **compression(args, server=False),
    ) as ws:
        report_extensions(args, ws)
        await scenario(ws, urlsplit(args.url).path)


def parse(argv):
    parser = argparse.ArgumentParser(usage=__doc__)
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("url", nargs="?")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("--cafile")
    parser.add_argument("--deflate", choices=["off", "default", "no-takeover"])
    parser.add_argument("--subprotocol", action="append", default=[])
    args = parser.parse_args(argv[1:])
    if (args.role == "client") != (args.url is not None):
        parser.error("a client needs a URL, a server takes none")
    if args.subprotocol and args.role != "client":
        parser.error("--subprotocol is a client option")
    return args


def main(argv):
    # Close reasons carry non-ASCII text; print it the same way whatever the locale.
    sys.stdout.reconfigure(encoding="utf-8")
    args = parse(argv)
    job = run_server(args) if args.role == "server" else run_client(args)
    try:
        asyncio.run(asyncio.wait_for(job, TIMEOUT))
    except asyncio.TimeoutError:
        print(f"error: the peer did not finish within {TIMEOUT} s", file=sys.stderr)
        return 1
    except (PeerError, ConnectionClosed, OSError) as error:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
