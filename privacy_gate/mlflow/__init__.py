"""The MLflow adapter: the one package where privacy-gate talks to MLflow (STYLE.md 9).

`log_report` writes (and, with a signing key, signs) an audit into a run; `promote` sets
a registered model version's alias only when its signed audit passes;
`privacy_gate.metric_keys` turns arbitrary subgroup names into MLflow-safe metric keys and
back. MLflow itself is imported only
when a function needs it (``pip install 'privacy-gate[mlflow]'``).
"""

from __future__ import annotations

from privacy_gate.metric_keys import escape_segment, metric_key, unescape_segment
from privacy_gate.mlflow.logging import (
    ARTIFACT_PATH,
    KEYS_MAP_FILE,
    REPORT_ARTIFACT,
    SIGNED_TAG,
    log_audit_run,
    log_report,
    report_metrics,
    report_params,
    report_sha256,
    report_tags,
)
from privacy_gate.mlflow.promote import PromotionResult, promote

__all__ = [
    "ARTIFACT_PATH",
    "KEYS_MAP_FILE",
    "REPORT_ARTIFACT",
    "SIGNED_TAG",
    "PromotionResult",
    "escape_segment",
    "log_audit_run",
    "log_report",
    "metric_key",
    "promote",
    "report_metrics",
    "report_params",
    "report_sha256",
    "report_tags",
    "unescape_segment",
]
