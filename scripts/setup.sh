#!/usr/bin/env bash
# Create .venv (if needed) and install privacy-gate with the given extras.
# Usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh all,dev   (default: examples)
# torch is installed first, pinned to the CPU wheel (torch==2.13.0), so that no extra
# pulls a multi-GB CUDA build. Set TORCH_INDEX_URL (e.g. the PyTorch CPU index) where
# that wheel is not on the local disk. Everything else installs within constraints/ci.txt
# (scripts/refresh-constraints.sh regenerates it), so a clean clone tests against the
# versions CI last passed with; PRIVACY_GATE_UNCONSTRAINED=1 installs the newest instead.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-examples}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
case ",$extras," in
    *,all,*|*,torch,*|*,lightning,*|*,opacus,*)
        if ! .venv/bin/python -c "import torch" 2>/dev/null; then
            "${pip[@]}" install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
        fi ;;
esac
constraints=()
if [ -f constraints/ci.txt ] && [ "${PRIVACY_GATE_UNCONSTRAINED:-0}" != 1 ]; then
    constraints=(-c constraints/ci.txt)
fi
"${pip[@]}" install "${constraints[@]}" -e ".[${extras}]"
