#!/usr/bin/env bash
# The privacy-gate composite action's steps (action.yml beside this file), kept in a script
# so they can be linted and run outside GitHub:
#   privacy-gate-action.sh install   pip-install privacy-gate with the extras the mode needs
#   privacy-gate-action.sh run       run the gate in GitHub mode; exit 0 pass, 1 fail, 2 error
# Inputs come as PG_* environment variables (action.yml maps them). Exactly one audit
# source: PG_REPORT (check a report.json), PG_AUDIT_CONFIG (run an audit),
# PG_MLFLOW_RUN (check the signed audit of an MLflow run) or PG_MODEL with
# PG_MODEL_VERSION (check that of a registered model version, its run and its weights).
set -euo pipefail

fail() {  # an input error: annotation, status output, exit 2 (as the CLI's errors)
    echo "::error title=privacy-gate%3A action input::$1"
    echo "privacy-gate: ERROR (action input): $1" >&2
    if [ -n "${GITHUB_OUTPUT:-}" ]; then
        echo "status=error" >>"$GITHUB_OUTPUT"
    fi
    exit 2
}

MODE=""
mode() {  # sets MODE: report | audit | mlflow-run | model
    local count=0 found=""
    if [ -n "${PG_REPORT:-}" ]; then count=$((count + 1)); found=report; fi
    if [ -n "${PG_AUDIT_CONFIG:-}" ]; then count=$((count + 1)); found=audit; fi
    if [ -n "${PG_MLFLOW_RUN:-}" ]; then count=$((count + 1)); found=mlflow-run; fi
    if [ -n "${PG_MODEL:-}" ]; then count=$((count + 1)); found=model; fi
    if [ "$count" -ne 1 ]; then
        fail "give exactly one of the inputs report, audit-config, mlflow-run or model (with model-version); got $count."
    fi
    if [ "$found" = model ] && [ -z "${PG_MODEL_VERSION:-}" ]; then
        fail "the input model needs model-version (the registered model version, e.g. 3)."
    fi
    if [ "$found" != model ] && [ -n "${PG_MODEL_VERSION:-}" ]; then
        fail "the input model-version applies only with model."
    fi
    MODE="$found"
}

install() {
    local spec extras
    mode
    spec="${PG_PACKAGE:-}"
    if [ -z "$spec" ]; then
        spec="$(cd "${GITHUB_ACTION_PATH:-$(dirname "$0")}/../../.." && pwd)"
    fi
    extras="${PG_EXTRAS:-}"
    if [ -z "$extras" ]; then
        case "$MODE" in
            report) extras="" ;;                  # the base package: numpy, scipy, no torch
            mlflow-run) extras="mlflow-skinny" ;;  # the MLflow client only
            model) extras="mlflow,torch" ;;        # the weights digest loads the model
            audit) extras="torch" ;;               # reference models are trained here
        esac
    fi
    local pip=(python -m pip install --disable-pip-version-check --quiet)
    case ",$extras," in
        *,all,* | *,torch,* | *,lightning,* | *,opacus,*)
            if [ -n "${PG_TORCH_INDEX_URL:-}" ]; then  # the CPU wheel, not a multi-GB CUDA one
                "${pip[@]}" --index-url "$PG_TORCH_INDEX_URL" torch
            fi
            ;;
    esac
    # The extras as a second requirement: pip merges it with the spec (a path, a URL or a
    # version), whatever form the spec has.
    if [ -n "$extras" ]; then
        "${pip[@]}" "$spec" "privacy-gate[$extras]"
    else
        "${pip[@]}" "$spec"
    fi
    echo "Installed privacy-gate from $spec${extras:+ with extras [$extras]} (mode $MODE)."
}

public_key_file() {  # PEM text (a secret) is written to a file; anything else is a path
    local key="${PG_PUBLIC_KEY:-}"
    if [[ "$key" == *"-----BEGIN"* ]]; then
        local file
        file="$(mktemp "${RUNNER_TEMP:-/tmp}/privacy-gate-public-key.XXXXXX")"
        printf '%s\n' "$key" >"$file"
        echo "$file"
    else
        echo "$key"
    fi
}

run() {
    local key
    mode
    key="$(public_key_file)"
    local args=(--github)
    case "$MODE" in
        report) args+=(check "$PG_REPORT") ;;
        audit)
            if [ -n "${PG_POLICY:-}" ]; then
                fail "with audit-config the policy is the audit config's 'policy' key; drop the input policy."
            fi
            args+=(audit --config "$PG_AUDIT_CONFIG")
            ;;
        mlflow-run) args+=(check --mlflow-run "$PG_MLFLOW_RUN") ;;
        model) args+=(check --model "$PG_MODEL" --version "$PG_MODEL_VERSION") ;;
    esac
    if [ -n "${PG_POLICY:-}" ]; then args+=(--config "$PG_POLICY"); fi
    if [ -n "${PG_AGAINST_ALIAS:-}" ] || [ -n "${PG_AGAINST_MODEL:-}" ]; then
        case "$MODE" in
            mlflow-run | model) ;;
            *) fail "the inputs against-alias and against-model apply only with mlflow-run or model (compare report files with privacy-gate diff)." ;;
        esac
        if [ -n "${PG_AGAINST_ALIAS:-}" ]; then args+=(--against-alias "$PG_AGAINST_ALIAS"); fi
        if [ -n "${PG_AGAINST_MODEL:-}" ]; then args+=(--against-model "$PG_AGAINST_MODEL"); fi
    fi
    if [ -n "${PG_OUT:-}" ]; then
        if [ "$MODE" = report ]; then
            fail "the input out applies only with audit-config, mlflow-run or model."
        fi
        args+=(--out "$PG_OUT")
    fi
    # A public key with a report requires its signature; the tracking URI only serves
    # the MLflow modes (a reusable workflow's secrets may be set for every mode).
    if [ "$MODE" != audit ] && [ -n "$key" ]; then args+=(--public-key "$key"); fi
    case "$MODE" in
        mlflow-run | model)
            if [ -n "${PG_TRACKING_URI:-}" ]; then args+=(--tracking-uri "$PG_TRACKING_URI"); fi
            ;;
    esac
    if [ -n "${PG_ARGS:-}" ]; then
        local extra
        read -r -a extra <<<"$PG_ARGS"
        args+=("${extra[@]}")
    fi
    echo "privacy-gate ${args[*]}"
    local code=0
    privacy-gate "${args[@]}" || code=$?
    exit "$code"
}

case "${1:-}" in
    install) install ;;
    run) run ;;
    *)
        echo "usage: $0 install|run" >&2
        exit 2
        ;;
esac
