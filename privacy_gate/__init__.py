"""privacy-gate: patient-level membership-inference audits that gate model release.

The numerical core takes reference-model signals and record metadata and returns a
report with a gate decision; see docs/statistics.md for the definitions.
"""

from __future__ import annotations

from privacy_gate._version import __version__
from privacy_gate.config import AuditConfig, GateConfig, RiskConfig, default_config, load_config
from privacy_gate.errors import ConfigError, InputError, PrivacyGateError, ReportError
from privacy_gate.gate import Decision, Status, Violation, evaluate_gate
from privacy_gate.pipeline import AuditResult, audit, check, score, write_outputs
from privacy_gate.pseudonyms import Pseudonymizer
from privacy_gate.records import RecordTable, load_records, records_from_columns
from privacy_gate.report import load_audit_report
from privacy_gate.report_model import AuditReport
from privacy_gate.signals import Signals, Task, load_signals, make_signals

__all__ = [
    "AuditConfig",
    "AuditReport",
    "AuditResult",
    "ConfigError",
    "Decision",
    "GateConfig",
    "InputError",
    "PrivacyGateError",
    "Pseudonymizer",
    "RecordTable",
    "ReportError",
    "RiskConfig",
    "Signals",
    "Status",
    "Task",
    "Violation",
    "__version__",
    "audit",
    "check",
    "default_config",
    "evaluate_gate",
    "load_audit_report",
    "load_config",
    "load_records",
    "load_signals",
    "make_signals",
    "records_from_columns",
    "score",
    "write_outputs",
]
