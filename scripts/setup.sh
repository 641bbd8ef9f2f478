#!/usr/bin/env bash
# Creates .venv and installs what is missing: the Debian packages (graphviz's `dot`; `wrk` for
# benchmarks when asked, with the `bench` extra; what the test suite drives for real with --test) and the Python package
# with its dev extras. With --test it also creates .venv-clients, a second environment for the
# protocol clients whose dependencies clash with Ray's (tritonclient pins protobuf<7; Ray 2.60's
# Serve needs protobuf>=7.35). Safe to run again: it only does work when something is missing or a
# requirements file changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
CLIENTS_VENV=${CLIENTS_VENV:-.venv-clients}
PYTHON=${PYTHON:-python3}
mode=${1:-}

# Debian package -> the command that shows it is installed.
declare -A bin_of=([graphviz]=dot [wrk]=wrk [nghttp2-client]=h2load [redis-server]=redis-server [chromium]=chromium)
want_debs=(graphviz)
[[ $mode == --bench ]] && want_debs+=(wrk nghttp2-client redis-server)
# What the suite runs for real: a Redis server (the jobs store), a headless Chromium (pages),
# h2load (the gRPC benchmark's load, checked by a test).
[[ $mode == --test ]] && want_debs+=(redis-server chromium nghttp2-client)

missing=()
for pkg in "${want_debs[@]}"; do
  command -v "${bin_of[$pkg]}" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.dagserve-installed"
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
  echo "setup: installing dagserve and its dependencies into $VENV (first time takes a few minutes)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[dev]"
  touch "$stamp"
fi

if [[ $mode == --bench ]]; then
  # The benchmarks' own extra: Serve's HAProxy binary (serve-haproxy) and matplotlib (the charts).
  bstamp="$VENV/.dagserve-bench-installed"
  if [[ ! -f "$bstamp" || pyproject.toml -nt "$bstamp" ]]; then
    echo "setup: installing the benchmark extra into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[dev,bench]"
    touch "$bstamp"
  fi
fi

if [[ $mode == --test ]]; then
  # Protocol clients as users run them, in their own environment (tests/clients/requirements.txt).
  reqs=tests/clients/requirements.txt
  if [[ ! -x "$CLIENTS_VENV/bin/python" ]]; then
    echo "setup: creating $CLIENTS_VENV (protocol clients for the tests)"
    "$PYTHON" -m venv "$CLIENTS_VENV"
  fi
  cstamp="$CLIENTS_VENV/.clients-installed"
  if [[ ! -f "$cstamp" || $reqs -nt "$cstamp" ]]; then
    echo "setup: installing the protocol clients into $CLIENTS_VENV"
    "$CLIENTS_VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$reqs"
    touch "$cstamp"
  fi
fi
