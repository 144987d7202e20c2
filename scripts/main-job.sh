#!/usr/bin/env bash
# Set up and run the main job: audit an MLP trained on a real EHR cohort (SurvSet's
# support2, 9,105 patients): the release candidate, K reference models trained with its
# recipe, a full patient-level report and a gate decision (out/ehr/report.html); then the
# release path: the signed audit and the candidate logged as an MLflow run, a registered
# version of ehr-mlp, and the alias champion asked of the gated registry, which promotes
# or refuses it (with its reasons and the DP-SGD recommendation).
# A failing gate is a result, not a crash: this command exits 0 for pass and fail alike,
# and non-zero only when the audit itself could not run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh torch,examples,mlflow,opacus
# The auditing side signs, the registry verifies: a local key pair unless one is given
# (in production the private key stays with the auditing pipeline).
if [ -z "${PRIVACY_GATE_SIGNING_KEY:-}" ]; then
    keys=out/ehr/keys
    if [ ! -f "$keys/audit_key.pem" ]; then
        .venv/bin/privacy-gate keys generate --private "$keys/audit_key.pem" \
            --public "$keys/audit_key.pub.pem"
    fi
    export PRIVACY_GATE_SIGNING_KEY="$keys/audit_key.pem"
    export PRIVACY_GATE_PUBLIC_KEY="$keys/audit_key.pub.pem"
fi
# One pseudonym key for every run, so that `privacy-gate diff` can match patients across
# audits (a random, unstored key would make each audit's keys unlinkable).
if [ -z "${PRIVACY_GATE_PSEUDONYM_KEY:-}" ]; then
    if [ ! -f out/ehr/keys/pseudonym_key ]; then
        mkdir -p out/ehr/keys
        (umask 077 && .venv/bin/python -c "import secrets; print(secrets.token_hex(32))" \
            >out/ehr/keys/pseudonym_key)
    fi
    PRIVACY_GATE_PSEUDONYM_KEY="$(cat out/ehr/keys/pseudonym_key)"
    export PRIVACY_GATE_PSEUDONYM_KEY
fi
status=0
.venv/bin/privacy-gate audit --config examples/ehr/audit.yaml "$@" || status=$?
if [ "$status" -gt 1 ]; then
    echo "The audit could not run (exit code $status)." >&2
    exit "$status"
fi
verdict=$([ "$status" -eq 0 ] && echo "PASS" || echo "FAIL")
echo "Verdict: $verdict. Open out/ehr/report.html (report.json and report.md beside it)."
