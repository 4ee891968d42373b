#!/usr/bin/env bash
# Install what the peer comparison needs (not needed for the test suite):
# nginx and wrk from Debian, LiteLLM's proxy in its own venv (.bench-venv),
# so its many dependencies never touch fognode's environment.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for pkg in nginx wrk; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
if ((${#missing[@]})); then
  sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
  # The package starts a default nginx on port 80; the bench runs its own.
  $sudo systemctl disable --now nginx >/dev/null 2>&1 || $sudo service nginx stop >/dev/null 2>&1 || true
fi
if [[ ! -x .bench-venv/bin/litellm ]]; then
  python3 -m venv .bench-venv
  .bench-venv/bin/pip install -q --upgrade pip
  .bench-venv/bin/pip install -q "litellm[proxy]"
fi
echo "peers ready: $(nginx -v 2>&1), wrk, $(.bench-venv/bin/pip show litellm | grep Version)"
