#!/usr/bin/env bash
# Install what the benchmark needs (none of it is needed by the test suite).
# Safe to run again: every step checks what is there and skips it.
#
#   bash bench/setup.sh
#
#   Debian: gcc (builds the upstream), wrk (the load generator), nginx and
#           caddy (the peers), curl.
#   The compiled upstream, bench/upstream/fastup.c, built with gcc into
#           ~/.cache/fognode/bench/ (rebuilt when the source changes).
#   LiteLLM's proxy in its own venv, ~/.cache/fognode/bench/litellm-venv, so its
#           many dependencies never touch fognode's environment.
#   py-spy (the profiler) in ~/.cache/fognode/bench/tools-venv.
#   Ollama Herd (PyPI ollama-herd, the fog bench's peer) in
#           ~/.cache/fognode/bench/herd-venv; never in the repository.
#
# fognode itself comes from ./setup.sh (the project's .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/fognode/bench
# Pinned: 1.107.0 was a compromised release (withdrawn), and later 1.106.x
# need a certifi newer than the package index has.
LITELLM_VERSION=1.106.0
PY_SPY_VERSION=0.4.3
HERD_VERSION=0.11.4
PYTHON=${PYTHON:-python3}
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

missing=()
for pkg in gcc libc6-dev wrk nginx caddy curl; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "bench/setup.sh: please install: ${missing[*]}" >&2
    exit 1
  fi
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  say "Installing Debian packages: ${missing[*]}"
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
  # The packages start a default nginx / caddy on port 80 where an init
  # system runs them; the bench runs its own instances.
  for svc in nginx caddy; do
    [[ " ${missing[*]} " == *" $svc "* ]] || continue
    $sudo systemctl disable --now "$svc" >/dev/null 2>&1 ||
      $sudo service "$svc" stop >/dev/null 2>&1 || true
  done
fi

say "Building the upstream (bench/upstream/fastup.c)"
"$PYTHON" -m bench.fastup --build

if [[ ! -x $CACHE/litellm-venv/bin/litellm ]] ||
   [[ $("$CACHE/litellm-venv/bin/python" -m pip show litellm 2>/dev/null |
        sed -n 's/^Version: //p') != "$LITELLM_VERSION" ]]; then
  say "Installing LiteLLM proxy $LITELLM_VERSION into $CACHE/litellm-venv"
  "$PYTHON" -m venv "$CACHE/litellm-venv"
  "$CACHE/litellm-venv/bin/pip" install -q --upgrade pip
  "$CACHE/litellm-venv/bin/pip" install -q "litellm[proxy]==$LITELLM_VERSION"
fi

if [[ ! -x $CACHE/tools-venv/bin/py-spy ]]; then
  say "Installing py-spy $PY_SPY_VERSION into $CACHE/tools-venv"
  "$PYTHON" -m venv "$CACHE/tools-venv"
  "$CACHE/tools-venv/bin/pip" install -q "py-spy==$PY_SPY_VERSION"
fi

if [[ ! -x $CACHE/herd-venv/bin/herd ]] ||
   [[ $("$CACHE/herd-venv/bin/python" -m pip show ollama-herd 2>/dev/null |
        sed -n 's/^Version: //p') != "$HERD_VERSION" ]]; then
  say "Installing Ollama Herd $HERD_VERSION into $CACHE/herd-venv"
  "$PYTHON" -m venv "$CACHE/herd-venv"
  "$CACHE/herd-venv/bin/pip" install -q "ollama-herd==$HERD_VERSION"
fi

say "Bench ready: $(nginx -v 2>&1 | sed 's/^nginx version: //'), caddy $(caddy version |
  cut -d' ' -f1), wrk $(wrk -v 2>&1 | head -1 | cut -d' ' -f2), litellm $LITELLM_VERSION,\
 py-spy $PY_SPY_VERSION, ollama-herd $HERD_VERSION"
