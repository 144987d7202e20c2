#!/usr/bin/env bash
# Install everything and run every check: ruff, mypy, import-linter, the docs' strict
# build, pytest (+ doctests).
# This is the command CI runs (.ci/run and .github/workflows/ci.yml).
#
#   bash scripts/test.sh [PYTEST ARGS]          everything (CI)
#   bash scripts/test.sh --fast [PYTEST ARGS]   the developers' lane: no (re)install when
#       .venv exists, ruff and import-linter, then the unit tests and doctests that are not
#       marked slow (tests/unit, privacy_gate, lightning_callbacks); about 3 minutes on
#       2 cores. mypy, the docs build, the integration and security suites run in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--fast" ]; then
    shift
    if ! .venv/bin/python -c "import privacy_gate, torch, mlflow" 2>/dev/null; then
        bash scripts/setup.sh all,dev
    fi
    echo "== ruff"; .venv/bin/ruff check .; .venv/bin/ruff format --check .  # separate: set -e ignores a failure inside a && list
    echo "== import-linter"; .venv/bin/lint-imports
    echo "== pytest (fast lane: not slow; unit tests and doctests)"
    exec .venv/bin/python -m pytest -q -m "not slow" tests/unit privacy_gate lightning_callbacks "$@"
fi
bash scripts/setup.sh all,dev
# The PostgreSQL tests start their own server from Debian's binaries
# (tests/integration/postgres_server.py); without them they skip.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "== installing Debian's postgresql (for the PostgreSQL tests)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } \
            || echo "WARNING: could not install postgresql: the PostgreSQL tests will skip" >&2
    else
        echo "WARNING: no PostgreSQL under /usr/lib/postgresql: the PostgreSQL tests will skip" >&2
    fi
fi
echo "== ruff"; .venv/bin/ruff check .; .venv/bin/ruff format --check .  # separate: set -e ignores a failure inside a && list
echo "== mypy"; .venv/bin/mypy
echo "== import-linter"; .venv/bin/lint-imports
# The documentation site (mkdocs.yml), warnings as errors, built outside the repository.
site_dir="$(mktemp -d)"
trap 'rm -rf "$site_dir"' EXIT
echo "== docs"; NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "$site_dir"
echo "== pytest"; .venv/bin/python -m pytest -q "$@"
