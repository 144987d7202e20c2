#!/usr/bin/env bash
# Set up and run the main job: train reference models on a real cohort that ships with
# scikit-learn, audit them and decide (report in out/breast_cancer/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh examples
.venv/bin/python examples/breast_cancer/audit_breast_cancer.py --out out/breast_cancer "$@"
