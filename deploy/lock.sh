#!/usr/bin/env bash
# Regenerate the lock files from pyproject.toml: every dependency pinned, with
# the hashes of every file of that version on PyPI (so an image built on arm64
# verifies as well as one built here). setup.sh and deploy/Dockerfile install
# from them with --require-hashes; `pip install -e .` stays for development.
#
#   deploy/lock.sh            after changing dependencies in pyproject.toml
#   deploy/lock.sh --upgrade  to move every pin to today's newest release
#
#   requirements.lock           what the service runs on (the image)
#   requirements-embedded.lock  the same and the embedded model's engine (xllamacpp)
#   requirements-test.lock      the service, the engine and the test tools (setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
PIP_TOOLS_VERSION=7.6.2
tools=${XDG_CACHE_HOME:-$HOME/.cache}/fognode/pip-tools-$PIP_TOOLS_VERSION
if [[ ! -x $tools/bin/pip-compile ]]; then
  "$PYTHON" -m venv "$tools"
  "$tools/bin/python" -m pip install -q "pip-tools==$PIP_TOOLS_VERSION"
fi
compile() {
  "$tools/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras \
    --no-emit-index-url --no-emit-find-links --output-file "$@" pyproject.toml
}
compile requirements.lock "${@}"
# Started from the service's pins, so that the engine is all the embedded lock adds.
[[ -f requirements-embedded.lock ]] || cp requirements.lock requirements-embedded.lock
compile requirements-embedded.lock --extra embedded "${@}"
compile requirements-test.lock --extra test --extra embedded "${@}"
