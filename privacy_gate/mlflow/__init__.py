"""The MLflow adapter: the one package where privacy-gate talks to MLflow (STYLE.md 9).

`log_report` writes (and, with a signing key, signs) an audit into a run; `promote` sets
a registered model version's alias only when its signed audit passes;
`privacy_gate.metric_keys` turns arbitrary subgroup names into MLflow-safe metric keys and
back. MLflow itself is imported only
when a function needs it (``pip install 'privacy-gate[mlflow]'``).
"""

from __future__ import annotations

from typing import Any

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


def load_model(uri: str, **kwargs: Any) -> Any:
    """``mlflow.pytorch.load_model`` after verifying the served files against the signed
    audit (`privacy_gate.mlflow.consume.load_model`)."""
    from privacy_gate.mlflow.consume import load_model as verified_load

    return verified_load(uri, **kwargs)


def log_audited_model(model: Any, **kwargs: Any) -> Any:
    """Log the audited model and bind the run's audit to its bytes
    (`privacy_gate.mlflow.audited_model.log_audited_model`)."""
    from privacy_gate.mlflow.audited_model import log_audited_model as log

    return log(model, **kwargs)


__all__ = [
    "ARTIFACT_PATH",
    "KEYS_MAP_FILE",
    "REPORT_ARTIFACT",
    "SIGNED_TAG",
    "PromotionResult",
    "escape_segment",
    "load_model",
    "log_audit_run",
    "log_audited_model",
    "log_report",
    "metric_key",
    "promote",
    "report_metrics",
    "report_params",
    "report_sha256",
    "report_tags",
    "unescape_segment",
]
