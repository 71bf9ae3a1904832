"""The hub's server API from an independent HTTP client (the standard library's urllib).

Usage: api_client.py BASE_URL API_KEY CHANNEL. Prints one JSON line per call:
{"method", "status", "body"}; the Rust test checks them against docs/openapi.json.
"""

import json
import sys
import urllib.error
import urllib.request


def call(base, key, method, body):
    data = json.dumps(body).encode()
    req = urllib.request.Request(f"{base}/api/{method}", data=data, method="POST")
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            status, text = res.status, res.read()
    except urllib.error.HTTPError as e:
        status, text = e.code, e.read()
    print(json.dumps({"method": method, "status": status, "body": json.loads(text)}))


def main():
    base, key, channel = sys.argv[1], sys.argv[2], sys.argv[3]
    publish = {"channel": channel, "data": {"from": "python"}, "idempotency_key": "py-1"}
    call(base, key, "publish", publish)
    call(base, key, "publish", publish)
    call(base, key, "history", {"channel": channel, "reverse": True})
    call(base, key, "info", {})
    call(base, "wrong-key-000", "info", {})


if __name__ == "__main__":
    main()
