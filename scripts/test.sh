#!/usr/bin/env bash
# Install everything and run every check: ruff, mypy, import-linter, pytest (+ doctests).
# This is the command CI runs (.ci/run and .github/workflows/ci.yml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all,dev
echo "== ruff"; .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy"; .venv/bin/mypy
echo "== import-linter"; .venv/bin/lint-imports
echo "== pytest"; .venv/bin/python -m pytest -q "$@"
