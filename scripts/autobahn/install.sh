#!/usr/bin/env bash
# Installs the Autobahn|Testsuite runner `wstest` for `cargo xtask autobahn`.
#
# wstest runs only on Python 2.7, which Debian 12 no longer ships. So this script takes the
# PyPy 2.7 (default) or CPython 2.7 packages of Debian 11 (bullseye) through a private apt
# configuration (the system's own apt state is left alone), unpacks them with `dpkg -x` into a
# private prefix, bootstraps the last pip that supports 2.7 and installs a pinned set of wstest's
# dependencies into it.
#
# PyPy is the default because wstest's own Python code is the bottleneck of the
# permessage-deflate cases (12.*, 13.*): it re-decodes its whole UTF-8 test file for every
# message and handles every frame in Python. Under PyPy's JIT they run about 6 times faster than
# under CPython (with its C accelerators); installing takes longer (cryptography and Twisted are
# compiled, about 2-4 minutes on 2 cores), once.
#
# Usage:   scripts/autobahn/install.sh        (prints the path of `wstest` as its last line)
# Env:     DUPLEX_AUTOBAHN_HOME  where to install (default: ~/.cache/duplex/autobahn-pypy, or
#                                -cpython)
#          DUPLEX_AUTOBAHN_MIRROR  Debian archive to take bullseye from (default: the one apt uses)
#          DUPLEX_AUTOBAHN_FORCE=1  reinstall even when the stamp says it is done
#          DUPLEX_AUTOBAHN_PYTHON  pypy (default) or cpython
#
# Idempotent: a stamp named after the hash of this file makes a second run a no-op that takes
# about a second. Only x86_64 Debian (bookworm) is supported. Root is needed only when one of the
# few system packages it relies on (pip for python3, gcc, runtime libraries) is missing.
set -Eeuo pipefail

say() { echo "autobahn-install: $*" >&2; }
fail() { echo "autobahn-install: error: $*" >&2; exit 1; }
trap 'fail "line $LINENO: \`$BASH_COMMAND\` exited with $?"' ERR

flavor="${DUPLEX_AUTOBAHN_PYTHON:-pypy}"
case "$flavor" in pypy | cpython) ;; *) fail "DUPLEX_AUTOBAHN_PYTHON must be pypy or cpython, not '$flavor'" ;; esac
home="${DUPLEX_AUTOBAHN_HOME:-$HOME/.cache/duplex/autobahn-$flavor}"
mkdir -p "$home"
home="$(cd "$home" && pwd)"
prefix="$home/prefix"
wstest="$home/bin/wstest"
pip_version=20.3.4

stamp="$home/.done-$({ cat "${BASH_SOURCE[0]}"; echo "$flavor"; } | sha256sum | cut -c1-16)"
if [[ "${DUPLEX_AUTOBAHN_FORCE:-0}" != 1 && -f "$stamp" ]] && "$wstest" --autobahnversion >/dev/null 2>&1; then
  say "up to date ($(cat "$stamp"))"
  echo "$wstest"
  exit 0
fi

[[ "$(uname -m)" == x86_64 ]] || fail "only x86_64 is supported, this is $(uname -m)"
command -v dpkg >/dev/null && command -v apt-get >/dev/null || fail "needs Debian's dpkg and apt-get"
command -v python3 >/dev/null || fail "needs python3 (used to fetch the pip wheel)"

started=$SECONDS
rm -rf "$prefix" "$home/bin" "$home/dl" "$home"/.done-*
mkdir -p "$prefix" "$home/bin" "$home/dl"

# Runtime libraries the bullseye interpreter links against; a normal bookworm system has them.
missing=()
for pkg in libbz2-1.0 libc6 libcrypt1 libdb5.3 libexpat1 libffi8 libgdbm6 libncursesw6 libnsl2 \
           libreadline8 libsqlite3-0 libtinfo6 libtirpc3 zlib1g libgcc-s1 ca-certificates; do
  dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$pkg")
done
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
command -v gcc >/dev/null || missing+=(gcc libc6-dev)
if ((${#missing[@]})); then
  [[ "$(id -u)" == 0 ]] || fail "missing system packages: ${missing[*]} (install them, or run as root)"
  say "installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian mirror: the first non-security `.../debian` archive apt is configured with.
mirror="${DUPLEX_AUTOBAHN_MIRROR:-}"
if [[ -z "$mirror" ]]; then
  mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    awk '$1 == "deb" || $1 == "URIs:" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) print $i }' |
    grep -v security | grep -E '/debian/?$' | head -n 1 || true)"
fi
[[ -n "$mirror" ]] || fail "found no Debian archive in apt's sources; set DUPLEX_AUTOBAHN_MIRROR"

# A private apt: its own sources, lists and cache, and an empty dpkg status, so nothing
# on the system changes. Only `download` is used; nothing is installed by apt here.
apt_dir="$home/dl/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$apt_dir/debs"
echo "deb $mirror bullseye main" >"$apt_dir/sources.list"
apt_opts=(
  -o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache::Archives=$apt_dir/archives"
  -o Dir::State::status=/dev/null -o APT::Sandbox::User=root
  -o Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false
  -o Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false
  -o Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false
  -o Acquire::IndexTargets::deb::CNF::DefaultEnabled=false
)
say "fetching $flavor 2.7 from bullseye ($mirror)"
apt-get "${apt_opts[@]}" -qq update >"$home/dl/apt.log" 2>&1 ||
  { tail -n 5 "$home/dl/apt.log" >&2; fail "apt-get update of the bullseye lists failed"; }
if [[ "$flavor" == pypy ]]; then
  # cryptography 3.3.2 has no PyPy wheel: it is built against bullseye's OpenSSL 1.1 headers.
  debs=(pypy pypy-lib pypy-dev libssl1.1 libssl-dev libffi7)
else
  debs=(python2.7 python2.7-minimal libpython2.7 libpython2.7-minimal libpython2.7-stdlib
    python2.7-dev libpython2.7-dev libssl1.1 libffi7)
fi
(cd "$apt_dir/debs" && apt-get "${apt_opts[@]}" -qq download "${debs[@]}") >>"$home/dl/apt.log" 2>&1 ||
  { tail -n 5 "$home/dl/apt.log" >&2; fail "downloading the bullseye packages failed"; }
for deb in "$apt_dir"/debs/*.deb; do dpkg -x "$deb" "$prefix"; done

libdir="$prefix/usr/lib/x86_64-linux-gnu"
if [[ "$flavor" == pypy ]]; then
  # PyPy finds its library relative to its own executable; PYTHONHOME must stay unset.
  python="$prefix/usr/lib/pypy/bin/pypy-c"
  pyhome=()
else
  python="$prefix/usr/bin/python2.7"
  pyhome=("PYTHONHOME=$prefix/usr")
fi
[[ -x "$python" ]] || fail "no interpreter at $python after unpacking"
# Runs the private interpreter with an environment that cannot leak into python3.
py2() {
  env -u PYTHONPATH -u PYTHONHOME -u PIP_USER -u PIP_PREFIX -u PIP_TARGET -u PIP_REQUIRE_VIRTUALENV \
    "${pyhome[@]}" PYTHONNOUSERSITE=1 \
    LD_LIBRARY_PATH="$libdir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$python" "$@"
}
py2 -c 'import ssl, zlib, hashlib, json, ctypes' || fail "the unpacked interpreter does not work"

say "bootstrapping pip $pip_version"
python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  -d "$home/dl" "pip==$pip_version" || fail "could not download pip $pip_version"
wheel="$home/dl/pip-$pip_version-py2.py3-none-any.whl"
pip_opts=(--disable-pip-version-check --no-cache-dir --no-compile --no-warn-script-location --progress-bar off)
# A wheel is a zip archive, so pip can run from its own wheel to install itself.
py2 "$wheel/pip" install -q "${pip_opts[@]}" "$wheel" >"$home/pip.log" 2>&1 ||
  { tail -n 20 "$home/pip.log" >&2; fail "pip bootstrap failed"; }

# wstest 25.10.1 with the versions of its dependencies that still support Python 2.7.
cat >"$home/requirements.txt" <<'PINS'
autobahntestsuite==25.10.1
autobahn[twisted]==0.10.9
Twisted==19.10.0
zope.interface==4.6.0
Automat==22.10.0
attrs==21.4.0
constantly==15.1.0
hyperlink==21.0.0
incremental==16.10.1
PyHamcrest==1.10.1
txaio==2.1.0
six==1.16.0
typing==3.10.0.0
enum34==1.1.10
ipaddress==1.0.23
idna==2.10
pyOpenSSL==19.1.0
cryptography==3.3.2
cffi==1.15.1
pycparser==2.21
service_identity==18.1.0
pyasn1==0.5.1
pyasn1-modules==0.3.0
klein==17.10.0
Werkzeug==1.0.1
jinja2==2.11.3
markupsafe==1.1.1
unittest2==1.1.0
linecache2==1.0.0
traceback2==1.4.0
setuptools==44.0.0
wheel==0.37.1
PINS
build_opts=()
if [[ "$flavor" == pypy ]]; then
  sed -i '/^cffi==/d' "$home/requirements.txt" # PyPy has cffi built in
  build_opts=(--no-build-isolation)            # pip's isolated build trips over PyPy's layout
fi
# Headers for the few C extensions built from source (Debian keeps pyconfig.h per arch).
export CFLAGS="-I$prefix/usr/include -I$prefix/usr/include/python2.7 -I$prefix/usr/include/x86_64-linux-gnu"
export LDFLAGS="-L$libdir"
say "installing wstest and its pinned dependencies"
{ py2 -m pip install "${pip_opts[@]}" setuptools==44.0.0 wheel==0.37.1 typing==3.10.0.0 &&
  py2 -m pip install "${pip_opts[@]}" "${build_opts[@]}" -r "$home/requirements.txt"; } >>"$home/pip.log" 2>&1 ||
  { tail -n 30 "$home/pip.log" >&2; fail "pip install failed (log: $home/pip.log)"; }
# wsaccel and ujson are C accelerators CPython's wstest picks up when present (UTF-8 checks,
# masking, JSON); they make the large 9.* cases several times faster, but are optional. PyPy's
# JIT does better without them.
accel=no
if [[ "$flavor" == cpython ]]; then
  accel=yes
  py2 -m pip install "${pip_opts[@]}" wsaccel==0.6.3 ujson==2.0.3 >>"$home/pip.log" 2>&1 ||
    { accel=no; say "warning: wsaccel/ujson did not build; wstest works without them, only slower"; }
fi

entry="$(py2 -c 'import os, sys
for d in ("local/bin", "bin", "../../local/bin"):
    p = os.path.normpath(os.path.join(sys.prefix, d, "wstest"))
    if os.path.isfile(p):
        print(p)
        break')"
[[ -n "$entry" ]] || fail "pip did not install a wstest entry point under $prefix"

cat >"$wstest" <<WRAPPER
#!/bin/sh
# wstest on a private $flavor 2.7 (written by scripts/autobahn/install.sh)
LD_LIBRARY_PATH="$libdir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" PYTHONNOUSERSITE=1 \\
  exec env -u PYTHONPATH -u PYTHONHOME ${pyhome[*]} "$python" "$entry" "\$@"
WRAPPER
chmod +x "$wstest"
version="$("$wstest" --autobahnversion 2>&1)" || { echo "$version" >&2; fail "the installed wstest does not start"; }
rm -rf "$home/dl"
echo "$(echo $version), python: $flavor, accelerators: $accel, installed $(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$stamp"
say "done in $((SECONDS - started)) s: $(cat "$stamp")"
echo "$wstest"
