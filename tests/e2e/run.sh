#!/usr/bin/env bash
# Runs the browser end-to-end tests from a clean clone: installs Debian's
# Chromium and the npm packages when they are missing (openssl, for the TLS
# test's certificate, must be there), builds the server unless DUPLEX_BIN
# already names one, then runs `npm test` (unit + browser tests).
# Screenshots land in target/e2e/.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

chromium="${CHROMIUM_BIN:-/usr/bin/chromium}"
if [ ! -x "$chromium" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "e2e: installing chromium" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "e2e: $chromium is missing; install it (apt-get install -y chromium) or set CHROMIUM_BIN" >&2
    exit 1
  fi
fi

# The TLS test makes its self-signed certificate with openssl.
if ! command -v "${OPENSSL_BIN:-openssl}" >/dev/null; then
  echo "e2e: openssl is missing; install it (apt-get install -y openssl) or set OPENSSL_BIN" >&2
  exit 1
fi

if [ ! -f "$here/node_modules/playwright-core/package.json" ]; then
  echo "e2e: installing npm packages" >&2
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
fi

if [ -z "${DUPLEX_BIN:-}" ]; then
  (cd "$root" && cargo build --release -p duplex-cli)
  target="$(cd "$root" && cargo metadata --format-version 1 --no-deps |
    node -e 'let s="";process.stdin.on("data",(d)=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')"
  export DUPLEX_BIN="$target/release/duplex"
fi

cd "$here"
exec npm test
