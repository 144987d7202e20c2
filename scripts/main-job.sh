#!/usr/bin/env bash
# Set up and run the main job: audit an MLP trained on a real EHR cohort (SurvSet's
# support2, 9,105 patients): the release candidate, K reference models trained with its
# recipe, a full patient-level report and a gate decision (out/ehr/report.html).
# A failing gate is a result, not a crash: this command exits 0 for pass and fail alike,
# and non-zero only when the audit itself could not run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh torch,examples,mlflow,opacus
status=0
.venv/bin/privacy-gate audit --config examples/ehr/audit.yaml "$@" || status=$?
if [ "$status" -gt 1 ]; then
    echo "The audit could not run (exit code $status)." >&2
    exit "$status"
fi
verdict=$([ "$status" -eq 0 ] && echo "PASS" || echo "FAIL")
echo "Verdict: $verdict. Open out/ehr/report.html (report.json and report.md beside it)."
