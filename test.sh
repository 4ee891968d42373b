#!/usr/bin/env bash
# Run the whole test suite the way CI does: set up (idempotent), lint, type-check, test.
#   ./test.sh               everything
#   ./test.sh -k streaming  extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
VENV=${FOGNODE_VENV:-.venv}
echo "==> ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
echo "==> mypy (strict) on the service code"
# mypy resolves modules by path; mirror the installed fognode.* layout.
mkdir -p .typecheck/fognode
for part in gateway auth discovery certs usage web models embedded safejson routing workers fog; do
  ln -sfn "../../$part" ".typecheck/fognode/$part"
done
MYPYPATH=.typecheck "$VENV/bin/mypy" -p fognode
echo "==> import rules (.importlinter)"
PYTHONPATH=.typecheck "$VENV/bin/lint-imports" --no-cache
echo "==> pytest"
exec "$VENV/bin/pytest" "$@"
