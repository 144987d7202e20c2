"""GitHub mode, pure parts: workflow-command escaping, step outputs and the job summary.

Reports are real audits of small synthetic signals (`privacy_gate.audit`), with a
subgroup column, a release candidate and a planted exposed tail; expected figures are
read from the report and formatted here independently of the module under test.
"""

from __future__ import annotations

import copy
import io
import logging
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parents[1] / "integration"))
from github_outputs import parse_outputs

from privacy_gate import Pseudonymizer, Status, audit, make_signals, records_from_columns
from privacy_gate.config import parse_config
from privacy_gate.github import (
    OUTPUT_NAMES,
    Outcome,
    annotation_lines,
    enabled,
    escape_data,
    escape_property,
    format_outputs,
    output_values,
    summary_markdown,
    workflow_command,
    write_github,
)
from privacy_gate.render import render_markdown
from privacy_gate.render.recommendation import recommendation_rows
from privacy_gate.report_model import AuditReport

N, K = 240, 16
PATIENT_PREFIX = "RAWPAT"
RISK = {"min_group_size": 20, "null_replicates": 20}
PASSING = {"subgroups": ["site"], "risk": RISK, "gate": {"max_patient_auc": 1.0}}
FAILING = {
    "subgroups": ["site"],
    "risk": RISK,
    "gate": {"max_patient_auc": 0.7, "max_patients_at_risk": 0, "min_reference_models": 32},
}
DP_RECOMMENDATION = {  # the schema of privacy_gate.render.recommendation; values are inputs
    "status": "recommended",
    "reason": "the gate's verdict is fail",
    "auc_limit": 0.7,
    "auc_limit_source": "gate.max_patient_auc",
    "max_records_per_patient": 2,
    "noise_multiplier": 1.234,
    "max_grad_norm": 0.75,
    "batch_size": 64,
    "epochs": 12,
    "epsilon": 2.5,
    "delta": 1 / N,
    "auc_ceiling": 0.6123,
    "patient_auc_ceiling": 0.6789,
    "apply": {"opacus": "engine.make_private(\n    noise_multiplier=1.234, max_grad_norm=0.75\n)"},
}


def _audit(policy: dict[str, Any], *, raw: bool = False) -> dict[str, Any]:
    """N records (two per patient), K reference models; the first 12 records leak."""
    rng = np.random.default_rng(7)
    masks = np.argsort(rng.random((K, N)), axis=0) < K // 2
    shift = np.r_[np.full(12, 4.0), np.zeros(N - 12)]
    members = np.arange(N) % 2 == 0
    signals = make_signals(
        rng.standard_normal((K, N)) + masks * shift,
        masks,
        target_scores=rng.standard_normal(N) + 0.3 * members,
        target_members=members,
        task="binary",
    )
    site = ["A" if (i // 2) % 3 else "B" for i in range(N)]  # one value per patient
    site[-6:] = ["RARE"] * 6  # three patients, below min_group_size: suppressed
    records = records_from_columns(
        [f"rec-{i}" for i in range(N)],
        [f"{PATIENT_PREFIX}-{i // 2}" for i in range(N)],
        {"site": site},
    )
    result = audit(
        signals, records, parse_config(policy), pseudonymizer=Pseudonymizer(key=b"k", raw=raw)
    )
    return result.report.to_dict()


@pytest.fixture(scope="module")
def passing() -> dict[str, Any]:
    report = _audit(PASSING)
    assert report["decision"]["status"] == "pass"
    return report


@pytest.fixture(scope="module")
def failing() -> dict[str, Any]:
    report = _audit(FAILING)
    assert report["decision"]["status"] == "fail"
    assert len(report["decision"]["violations"]) >= 2
    return report


def _outcome(report: dict[str, Any], **kwargs: Any) -> Outcome:
    typed = AuditReport.from_dict(report)
    return Outcome(status=typed.decision.status, report=typed, **kwargs)


# --- escaping --------------------------------------------------------------------------------


def _unescape(text: str) -> str:
    """GitHub's decoding of escaped command data and properties."""
    for code, char in (("%0D", "\r"), ("%0A", "\n"), ("%3A", ":"), ("%2C", ","), ("%25", "%")):
        text = text.replace(code, char)
    return text


def test_escape_examples() -> None:
    assert escape_data("100%\r\nok: a,b") == "100%25%0D%0Aok: a,b"
    assert escape_property("100%\r\nok: a,b") == "100%25%0D%0Aok%3A a%2Cb"
    assert escape_data("%0A") == "%250A"  # an escape sequence in the input stays literal


@given(st.text())
def test_escaping_round_trips_and_leaves_no_separators(text: str) -> None:
    data, prop = escape_data(text), escape_property(text)
    assert _unescape(data) == text
    assert _unescape(prop) == text
    assert "\n" not in data and "\r" not in data
    assert not {"\n", "\r", ":", ","} & set(prop)


def test_workflow_command_form() -> None:
    line = workflow_command("warning", "a\nb", title="x: y, z", file=None)
    assert line == "::warning title=x%3A y%2C z::a%0Ab"
    assert workflow_command("notice", "plain") == "::notice::plain"


# --- outputs ---------------------------------------------------------------------------------


def test_format_outputs_single_and_multi_line() -> None:
    values = {"status": "fail", "report_path": "dir with = sign/\nreport.json", "empty": ""}
    text = format_outputs(values)
    assert text.startswith("status=fail\nreport_path<<ghadelimiter_")
    assert "empty=\n" in text
    assert parse_outputs(text) == values


def test_format_outputs_rejects_bad_names() -> None:
    with pytest.raises(ValueError, match="not a valid step output name"):
        format_outputs({"bad name": "x"})


def test_output_values_pass(passing: dict[str, Any]) -> None:
    values = output_values(_outcome(passing, report_path="out/report.json"))
    assert tuple(values) == OUTPUT_NAMES
    assert values["status"] == "pass"
    assert float(values["patient_auc_max"]) == passing["summary"]["patient_auc"]["max"]
    assert values["patients_at_risk"] == str(passing["summary"]["patients_at_risk"])
    assert values["report_path"] == "out/report.json"
    assert values["violations"] == ""


def test_output_values_fail_and_error(failing: dict[str, Any]) -> None:
    values = output_values(_outcome(failing))
    assert values["status"] == "fail"
    rules = list(dict.fromkeys(v["rule"] for v in failing["decision"]["violations"]))
    assert values["violations"].split(",") == rules
    error = output_values(Outcome(status=Status.ERROR, error="boom", report_path="r.json"))
    assert error == {
        "status": "error",
        "patient_auc_max": "",
        "patients_at_risk": "",
        "report_path": "r.json",
        "violations": "",
        "patients_at_risk_change": "",
        "newly_at_risk": "",
    }


# --- annotations -----------------------------------------------------------------------------


def test_annotations_of_a_failed_gate(failing: dict[str, Any]) -> None:
    lines = annotation_lines(_outcome(failing))
    violations = failing["decision"]["violations"]
    warnings = failing["decision"]["warnings"]
    errors = [line for line in lines if line.startswith("::error ")]
    assert len(errors) == len(violations)
    assert len([line for line in lines if line.startswith("::warning ")]) == len(warnings)
    for line, violation in zip(errors, violations, strict=True):
        assert line.startswith(f"::error title=privacy-gate%3A {violation['rule']}::")
        assert escape_data(violation["message"]) in line
    assert not any(line.startswith("::notice") for line in lines)
    assert all("\n" not in line for line in lines)


def test_annotation_messages_are_escaped(failing: dict[str, Any]) -> None:
    report = copy.deepcopy(failing)
    report["decision"]["violations"][0]["message"] = "50% over\nthe limit"
    line = annotation_lines(_outcome(report))[0]
    assert "50%25 over%0Athe limit" in line


def test_annotations_of_a_pass_and_an_error(passing: dict[str, Any]) -> None:
    lines = annotation_lines(_outcome(passing))
    worst = f"{passing['summary']['patient_auc']['max']:.3f}"
    assert lines[-1] == f"::notice title=privacy-gate::PASS: worst patient AUC {worst}, " + (
        f"{passing['summary']['patients_at_risk']} patients confidently at risk."
    )
    assert not any(line.startswith("::error") for line in lines)
    error = annotation_lines(Outcome(status=Status.ERROR, error="bad file: x.json\nline 2"))
    assert error == ["::error title=privacy-gate%3A error::bad file: x.json%0Aline 2"]
    refused = annotation_lines(Outcome(status=Status.FAIL, refusals=("unsigned", "stale")))
    assert refused == [
        "::error title=privacy-gate%3A audit not accepted::unsigned",
        "::error title=privacy-gate%3A audit not accepted::stale",
    ]


# --- summary ---------------------------------------------------------------------------------


def _row(markdown: str, label: str) -> str:
    lines = [line for line in markdown.splitlines() if line.startswith(f"| {label} |")]
    assert len(lines) == 1, (label, lines)
    return lines[0]


def test_summary_of_a_pass(passing: dict[str, Any]) -> None:
    md = summary_markdown(_outcome(passing, report_path="out/report.json", source="report x"))
    assert md.startswith("## privacy-gate: ✅ PASS\n\nThe model meets every rule")
    assert "Report: `out/report.json`." in md
    summary, audit_ = passing["summary"], passing["audit"]
    assert (
        _row(md, "Worst patient AUC")
        == f"| Worst patient AUC | {summary['patient_auc']['max']:.3f} |"
    )
    assert _row(md, "Reference models (K)").endswith(f"| {K} |")
    assert _row(md, "Patients").endswith(f"| {audit_['patients']} |")
    floor = summary["noise_floor"]["max_patient_auc_q95"]
    noise_row = next(line for line in md.splitlines() if line.startswith("| Noise floor: 95% null"))
    assert noise_row.endswith(f"| {floor:.3f} |")
    strongest = passing["aggregate"]["strongest"]
    auc = passing["aggregate"]["attacks"][strongest]["auc"]
    assert (
        _row(md, "Strongest aggregate attack") == f"| Strongest aggregate attack | `{strongest}` |"
    )
    assert _row(md, "Strongest attack AUC") == f"| Strongest attack AUC | {auc:.3f} |"
    assert f"Policy SHA-256: `{audit_['policy_sha256']}` (the audit's own)." in md
    # The job summary is the report's own document: the same sections as report.md.
    for heading in ("Key figures", "Subgroups", "Most exposed patients", "Caveats"):
        assert f"\n### {heading}\n" in md
        assert f"\n## {heading}\n" in render_markdown(AuditReport.from_dict(passing))
    assert md.index("### Key figures") < md.index("### Subgroups") < md.index("### Most exposed")


def test_summary_of_a_failed_gate_lists_every_violation(failing: dict[str, Any]) -> None:
    md = summary_markdown(_outcome(failing))
    violations = failing["decision"]["violations"]
    n = len(violations)
    assert md.startswith(f"## privacy-gate: ❌ FAIL\n\n{n} rules of the audit policy are violated")
    for v in violations:
        assert f"| `{v['rule']}` |" in md


def test_summary_subgroup_table(failing: dict[str, Any]) -> None:
    md = summary_markdown(_outcome(failing))
    groups = failing["subgroups"]["site"]["groups"]
    tested = {value: g for value, g in groups.items() if g["status"] == "tested"}
    # RARE (3 patients) is hidden, and with no missing values to pool it with, the
    # smaller published group B is hidden too, so that no total gives RARE away
    assert set(tested) == {"A"} and groups["B"]["status"] == "suppressed"
    section = md[md.index("#### Subgroup column: site") :]
    hidden = _row(section, "B")
    assert "protects a smaller group" in hidden
    assert re.search(r"\d", hidden.split("|", 2)[2]) is None  # no counts
    for value, group in tested.items():
        row = _row(section, value)
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == f"{group['size']:,}"
        assert cells[2] == f"{group['observed']:,}"
        assert cells[3] == f"{group['expected']:.1f}"
        assert cells[6] == f"{group['max_patient_auc']:.3f}"
    rare = _row(section, "RARE")
    assert "suppressed (\\< 20 patients)" in rare
    assert re.search(r"\d", rare.split("|", 2)[2].replace("20", "")) is None  # no counts


def test_summary_top_patients_are_pseudonyms(failing: dict[str, Any]) -> None:
    md = summary_markdown(_outcome(failing))
    top = failing["summary"]["top_patients"]
    for rank, patient in enumerate(top[:10], start=1):
        row = _row(md, str(rank))
        assert f"`{patient['patient_key']}`" in row
        assert f"| {patient['auc_max']:.3f} |" in row
    assert f"`{top[10]['patient_key']}`" not in md  # ten rows only
    assert PATIENT_PREFIX not in md


def test_summary_never_shows_raw_ids() -> None:
    report = _audit(FAILING, raw=True)
    assert report["summary"]["top_patients"][0]["patient_key"].startswith(PATIENT_PREFIX)
    outcome = _outcome(report)
    md = summary_markdown(outcome)
    assert PATIENT_PREFIX not in md
    assert "Not shown: the report identifies patients by raw ids" in md
    assert not any(PATIENT_PREFIX in line for line in annotation_lines(outcome))


def test_summary_hides_a_patient_key_that_is_not_a_pseudonym(failing: dict[str, Any]) -> None:
    report = copy.deepcopy(failing)
    report["summary"]["top_patients"][0]["patient_key"] = "MRN-0042"
    md = summary_markdown(_outcome(report))
    assert "MRN-0042" not in md
    assert "(not a pseudonym; hidden)" in _row(md, "1")


def test_summary_dp_recommendation(failing: dict[str, Any]) -> None:
    md = summary_markdown(_outcome(failing))
    section = md[md.index("### Remedy: retrain with DP-SGD") : md.index("### Caveats")]
    assert "Not available: the report has no dp\\_recommendation section" in section
    report = {**failing, "dp_recommendation": DP_RECOMMENDATION}
    md = summary_markdown(_outcome(report))
    section = md[md.index("### Remedy: retrain with DP-SGD") : md.index("### Caveats")]
    rows = recommendation_rows(AuditReport.from_dict(report))
    assert rows
    for label, value in rows:
        assert value in section, (label, value)
    assert _row(section, "noise\\_multiplier") == "| noise\\_multiplier | 1.234 |"
    assert "```python\nengine.make_private(\n    noise_multiplier=1.234" in section
    unavailable = {**failing, "dp_recommendation": {"status": "unavailable", "reason": "no opacus"}}
    assert "No DP-SGD recommendation could be computed: no opacus." in summary_markdown(
        _outcome(unavailable)
    )


def test_summary_of_an_error() -> None:
    outcome = Outcome(status=Status.ERROR, error="The report 'r.json' is not valid JSON: *x*.")
    md = summary_markdown(outcome)
    assert md.startswith("## privacy-gate: ⚠️ ERROR\n\nThe audit could not be evaluated")
    assert "**Error:** The report 'r.json' is not valid JSON: \\*x\\*." in md
    assert "### Key figures" not in md


def test_summary_of_an_audit_not_accepted(passing: dict[str, Any]) -> None:
    outcome = Outcome(
        status=Status.FAIL,
        report=AuditReport.from_dict(passing),  # stale or unverified: its figures answer nothing
        refusals=("the audit signature is not valid: unsigned",),
        source="MLflow run abc",
    )
    md = summary_markdown(outcome)
    assert md.startswith("## privacy-gate: ❌ FAIL\n\nThe audit was **not accepted**")
    assert "- the audit signature is not valid: unsigned" in md
    assert "Audit: MLflow run abc." in md
    assert "### Key figures" not in md


def test_summary_escapes_subgroup_values(failing: dict[str, Any]) -> None:
    report = copy.deepcopy(failing)
    groups = report["subgroups"]["site"]["groups"]
    groups["a|b *c*"] = groups.pop("A")
    md = summary_markdown(_outcome(report))
    assert "\n| a\\|b \\*c\\* |" in md


# --- evaluated report, enabling, writing -----------------------------------------------------


def test_a_decided_report_takes_the_new_decision(failing: dict[str, Any]) -> None:
    from privacy_gate.gate import decided, evaluate_gate

    before = copy.deepcopy(failing)
    policy = parse_config({**FAILING, "gate": {**FAILING["gate"], "fdr": 0.001}})
    report = AuditReport.from_dict(failing)
    decision = evaluate_gate(report, policy)
    evaluated = decided(report, policy).to_dict()
    assert failing == before  # not mutated
    assert evaluated["decision"] == decision.to_dict()
    assert evaluated["summary"]["patients_at_risk"] == decision.patients_at_risk
    assert evaluated["summary"]["fraction_at_risk"] == (
        decision.patients_at_risk / failing["audit"]["patients"]
    )


def test_enabled() -> None:
    assert enabled(None, {"GITHUB_ACTIONS": "true"})
    assert not enabled(None, {"GITHUB_ACTIONS": "false"})
    assert not enabled(None, {})
    assert enabled(True, {})
    assert not enabled(False, {"GITHUB_ACTIONS": "true"})


def test_write_github_appends(failing: dict[str, Any], tmp_path: Path) -> None:
    summary, output = tmp_path / "summary.md", tmp_path / "output"
    summary.write_text("# earlier step\n", encoding="utf-8")
    output.write_text("earlier=1\n", encoding="utf-8")
    env = {"GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(output)}
    stream = io.StringIO()
    outcome = _outcome(failing, report_path="out/report.json")
    write_github(outcome, environ=env, stream=stream)
    write_github(outcome, environ=env, stream=io.StringIO())
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("# earlier step\n## privacy-gate: ❌ FAIL")
    assert text.count("## privacy-gate: ❌ FAIL") == 2
    values = parse_outputs(output.read_text(encoding="utf-8"))
    assert values["earlier"] == "1"
    assert values["status"] == "fail"
    assert stream.getvalue().splitlines() == annotation_lines(outcome)


def test_write_github_without_files_only_annotates(
    passing: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    stream = io.StringIO()
    with caplog.at_level(logging.WARNING, logger="privacy_gate.github"):
        write_github(_outcome(passing), environ={}, stream=stream)
    assert stream.getvalue().splitlines() == annotation_lines(_outcome(passing))
    assert "$GITHUB_STEP_SUMMARY is not set; skipping the job summary" in caplog.text
    assert "$GITHUB_OUTPUT is not set; skipping the step outputs" in caplog.text
