#!/usr/bin/env bash
# Run the tests. With no level, everything the way CI does (.ci/run):
# set up (idempotent), lint, type-check, import rules, then every level.
#   ./test.sh                   everything (CI)
#   ./test.sh unit              tests/unit only: one part at a time, no processes (seconds)
#   ./test.sh gateway           tests/gateway only: the whole gateway in-process, with stand-ins
#   ./test.sh system            tests/system only: processes, namespaces, browser, emulator, PostgreSQL
#   ./test.sh newcomer          tests/system/newcomer only: the README's commands, as written
#   ./test.sh -k streaming      extra arguments go to pytest, after a level too
#   ./test.sh unit -k quota
# A level alone skips setup and lint: run ./setup.sh first on a fresh clone.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${FOGNODE_VENV:-.venv}
case "${1:-}" in
  unit | gateway | system | newcomer)
    level=$1
    [ "$level" = newcomer ] && level=system/newcomer
    shift
    if [ ! -x "$VENV/bin/pytest" ]; then
      echo "no $VENV/bin/pytest: run ./setup.sh first" >&2
      exit 1
    fi
    exec "$VENV/bin/pytest" "tests/$level" "$@"
    ;;
esac
./setup.sh
echo "==> ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
echo "==> mypy (strict) on the service code"
# mypy resolves modules by path; mirror the installed fognode.* layout.
mkdir -p .typecheck/fognode
for part in gateway auth discovery certs usage web models embedded safejson supervision moments routing workers fog; do
  ln -sfn "../../$part" ".typecheck/fognode/$part"
done
MYPYPATH=.typecheck "$VENV/bin/mypy" -p fognode
echo "==> import rules (.importlinter)"
PYTHONPATH=.typecheck "$VENV/bin/lint-imports" --no-cache
echo "==> pytest (tests/unit, tests/gateway, tests/system)"
exec "$VENV/bin/pytest" "$@"
