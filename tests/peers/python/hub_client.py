"""Python `websockets` as a client of `duplex serve` (the duplex.v1 protocol).

Usage:
    hub_client.py URL CHANNEL SIZE

Connects to URL offering the `duplex.v1` subprotocol and permessage-deflate (the library's
defaults), subscribes to CHANNEL, publishes a compressible JSON value of about SIZE bytes
and waits for its own publication to come back. Prints what it observed, one line each:

    subprotocol NAME          the subprotocol the server chose (or "none")
    extensions VALUE          the Sec-WebSocket-Extensions response header (or "none")
    publication BYTES         the publication came back intact; BYTES is its data's size

and exits 0; anything unexpected goes to stderr with exit code 1. The whole run is bounded
by a timeout, so a stuck peer never hangs the test suite.
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect

TIMEOUT = 30


async def main(url: str, channel: str, size: int) -> None:
    data = {"rows": "price 101.25 volume 3000; " * (size // 26)}
    async with connect(url, subprotocols=["duplex.v1"], max_size=None) as ws:
        print("subprotocol", ws.subprotocol or "none", flush=True)
        print("extensions", ws.response.headers.get("Sec-WebSocket-Extensions", "none"), flush=True)
        welcome = json.loads(await ws.recv())
        if welcome.get("type") != "welcome":
            raise RuntimeError(f"expected welcome, got {welcome}")
        await ws.send(json.dumps({"type": "subscribe", "channel": channel, "id": 1}))
        await ws.send(json.dumps({"type": "publish", "channel": channel, "data": data, "id": 2}))
        replies = set()
        while True:
            frame = json.loads(await ws.recv())
            kind = frame.get("type")
            if kind == "reply":
                replies.add(frame.get("id"))
            elif kind == "error":
                raise RuntimeError(f"error reply: {frame}")
            elif kind == "message" and frame.get("channel") == channel:
                if frame.get("data") != data:
                    raise RuntimeError("the publication came back changed")
                # The publish reply may come before or after its own publication; the
                # subscription's reply is first.
                if 1 not in replies:
                    raise RuntimeError(f"publication before the subscribe reply: {replies}")
                print("publication", len(json.dumps(data)), flush=True)
                return


if __name__ == "__main__":
    try:
        asyncio.run(asyncio.wait_for(main(sys.argv[1], sys.argv[2], int(sys.argv[3])), TIMEOUT))
    except Exception as e:  # noqa: BLE001 - every failure is reported the same way
        print(f"error: {e!r}", file=sys.stderr)
        sys.exit(1)
