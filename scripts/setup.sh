#!/usr/bin/env bash
# Creates .venv and installs what is missing: the Debian packages (graphviz's `dot`; `wrk` for
# benchmarks when asked) and the Python package with its dev extras. Safe to run again: it only
# does work when something is missing or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
want_debs=(graphviz)
[[ "${1:-}" == "--bench" ]] && want_debs+=(wrk)

missing=()
for pkg in "${want_debs[@]}"; do
  bin=$pkg; [[ $pkg == graphviz ]] && bin=dot
  command -v "$bin" >/dev/null 2>&1 || missing+=("$pkg")
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
