"""The typed report (`privacy_gate.report_model`): JSON written and read back is the same
JSON, reading names the malformed field, and the metrics read the typed figures."""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any

import numpy as np
import pytest
from gate_helpers import typed_report

from privacy_gate import Pseudonymizer, audit, make_signals, records_from_columns
from privacy_gate.config import default_config
from privacy_gate.errors import ReportError
from privacy_gate.metrics import report_metrics
from privacy_gate.pipeline import check_report
from privacy_gate.report_model import UNDECIDED, AuditReport, Status
from privacy_gate.subgroups import GroupStatus


@pytest.fixture(scope="module")
def report_json() -> dict[str, Any]:
    """A real audit's JSON: K = 16, 300 records of 150 patients, a site column."""
    rng = np.random.default_rng(3)
    k, n = 16, 300
    masks = np.argsort(rng.random((k, n)), axis=0) < k // 2
    members = np.arange(n) % 2 == 0
    signals = make_signals(
        rng.standard_normal((k, n)) + masks * np.r_[np.full(6, 3.0), np.zeros(n - 6)],
        masks,
        target_scores=rng.standard_normal(n) + 0.2 * members,
        target_members=members,
        task="binary",
    )
    records = records_from_columns(
        [f"r{i}" for i in range(n)],
        [f"p{i // 2}" for i in range(n)],
        {"site": ["A" if (i // 2) % 3 else "B" for i in range(n)]},
    )
    config = dataclasses.replace(default_config(), subgroups=("site",))
    result = audit(signals, records, config, pseudonymizer=Pseudonymizer(key=b"k"))
    # What report.json holds: through JSON, so tuples are lists and keys strings.
    return json.loads(json.dumps(result.report.to_dict()))


def test_json_round_trip_is_exact(report_json: dict[str, Any]) -> None:
    typed = AuditReport.from_dict(report_json)
    assert typed.to_dict() == report_json
    assert (
        typed.summary.noise_floor.max_patient_auc_q95
        == (report_json["summary"]["noise_floor"]["max_patient_auc_q95"])
    )
    assert typed.subgroups["site"].groups["A"].status is GroupStatus.TESTED
    assert typed.decision.status is Status(report_json["decision"]["status"])


def test_unknown_keys_are_kept_where_a_section_collects_them(report_json: dict[str, Any]) -> None:
    """A signed report adds ``signature`` and ``audit.run_id``; a caller may add provenance:
    all of it survives reading and writing."""
    extended = copy.deepcopy(report_json)
    extended["signature"] = {"algorithm": "ed25519", "value": "x"}
    extended["audit"]["run_id"] = "abc"
    extended["audit"]["pipeline"] = {"job": 7}
    typed = AuditReport.from_dict(extended)
    assert typed.audit.run_id == "abc"
    assert typed.audit.extra == {"pipeline": {"job": 7}}
    assert typed.to_dict() == extended


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("summary", "noise_floor", "max_patient_auc_q95"), "0.7", "must be a number"),
        (("summary", "patients_at_risk"), True, "must be an integer"),
        (("audit", "target"), "yes", "must be true or false"),
        (("decision", "status"), "maybe", "one of 'pass', 'fail', 'error'"),
        (("summary", "at_risk_p_values"), 0.1, "must be a JSON array"),
    ],
)
def test_a_malformed_field_is_named(
    report_json: dict[str, Any], path: tuple[str, ...], value: Any, message: str
) -> None:
    broken = copy.deepcopy(report_json)
    node = broken
    for name in path[:-1]:
        node = node[name]
    node[path[-1]] = value
    with pytest.raises(ReportError, match=message) as error:
        AuditReport.from_dict(broken)
    assert repr(".".join(path)) in str(error.value)


def test_a_missing_field_is_named(report_json: dict[str, Any]) -> None:
    broken = copy.deepcopy(report_json)
    del broken["summary"]["power"]["count_pairs"]
    with pytest.raises(ReportError, match=r"lacks the field 'summary\.power\.count_pairs'"):
        AuditReport.from_dict(broken)


def test_an_undecided_report_is_never_written(report_json: dict[str, Any]) -> None:
    typed = AuditReport.from_dict(report_json)
    with pytest.raises(ValueError, match="after the gate decided"):
        typed.with_decision(UNDECIDED).to_dict()


def test_dp_figures_become_metrics() -> None:
    """The audited recipe's DP guarantee and a refusal's recommendation, as metrics."""
    report = typed_report(
        {
            "dp_training": {"epsilon": 3.5, "auc_ceiling": 0.71, "records_above_ceiling": 0},
            "dp_recommendation": {
                "status": "recommended",
                "reason": "failed",
                "noise_multiplier": 0.72,
                "epsilon": 8.1,
            },
        }
    )
    dp = {k: v for k, v in report_metrics(report).items() if "/dp" in k}
    assert dp == {
        "privacy_gate/dp/epsilon": 3.5,
        "privacy_gate/dp/auc_ceiling": 0.71,
        "privacy_gate/dp/records_above_ceiling": 0.0,
        "privacy_gate/dp/noise_multiplier": 0.0,  # the placeholders of the hand-built report
        "privacy_gate/dp/max_grad_norm": 0.0,
        "privacy_gate/dp/delta": 0.0,
        "privacy_gate/dp/patient_auc_ceiling": 0.0,
        "privacy_gate/dp_recommendation/noise_multiplier": 0.72,
        "privacy_gate/dp_recommendation/epsilon": 8.1,
    }
    unavailable = typed_report(
        {"dp_recommendation": {"status": "unavailable", "reason": "no", "epsilon": 1.0}}
    )
    assert not any("/dp" in k for k in report_metrics(unavailable))


def test_a_schema_2_0_report_is_read_and_checked(report_json: dict[str, Any]) -> None:
    """2.0 wrote ``dp_training: null`` for audits without DP-SGD; 2.1 leaves it out."""
    older = copy.deepcopy(report_json)
    older["schema_version"] = "2.0"
    older["dp_training"] = None
    typed = AuditReport.from_dict(older)
    assert typed.dp_training is None
    decision = check_report(older)
    assert decision.status is typed.decision.status
