"""`privacy_gate.comparison` on two small real audits whose exposed patients are known by
construction: patients 0-2 leak in the earlier audit, patients 1-4 in the later one."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from signal_arrays import balanced_arrays

from privacy_gate import audit, make_signals, records_from_columns
from privacy_gate.comparison import PoolMismatchError, compare_reports, pool_digest
from privacy_gate.config import parse_config
from privacy_gate.pipeline import AuditResult
from privacy_gate.pseudonyms import Pseudonymizer
from privacy_gate.report_model import AuditReport

K, N = 16, 80
KEY = Pseudonymizer(key=b"hospital key")
POLICY = parse_config(
    {
        "subgroups": ["site"],
        "risk": {"min_group_size": 10},
        "gate": {"max_patients_at_risk": 0, "max_subgroup_relative_change": 1.0},
    }
)
SITES = ["a"] * 20 + ["b"] * 60  # the leaking patients 0-4 are all at site a


@functools.cache
def _result(
    leaking: tuple[int, ...], *, key: Pseudonymizer = KEY, pool: str = "pool-1"
) -> AuditResult:
    scores, masks = balanced_arrays(K, N, seed=3)
    shift = np.zeros(N)
    shift[list(leaking)] = 12.0
    scores = scores + masks * shift
    records = records_from_columns(
        [f"r{i}" for i in range(N)], [f"p{i}" for i in range(N)], {"site": SITES}
    )
    result = audit(
        make_signals(scores, masks, task="binary"),
        records,
        POLICY,
        pseudonymizer=key,
        inputs={"records_sha256": pool},
    )
    return result


def _audit(
    leaking: tuple[int, ...], *, key: Pseudonymizer = KEY, pool: str = "pool-1"
) -> AuditReport:
    return _result(leaking, key=key, pool=pool).report


def _site_a_tail_rate(leaking: tuple[int, ...]) -> float:
    """By hand: site a's patients (0-19) at or above the tail's threshold, over 20."""
    result = _result(leaking)
    threshold = result.report.summary.tail.threshold
    assert threshold is not None
    return float(np.mean(result.patients.auc_max[:20] >= threshold))


def _key(i: int) -> str:
    return KEY.patient(f"p{i}")


EARLIER, LATER = (0, 1, 2), (1, 2, 3, 4)


def test_the_known_exposed_patients_are_the_at_risk_lists() -> None:
    for leaking in (EARLIER, LATER):
        report = _audit(leaking)
        assert report.summary.patients_at_risk == len(leaking)
        assert set(report.summary.at_risk_patients or ()) == {_key(i) for i in leaking}


def test_figures_against_hand_computed_changes() -> None:
    before, after = _audit(EARLIER), _audit(LATER)
    diff = compare_reports(before, after)
    assert diff.pool == ("records_sha256", "pool-1")
    assert diff.patients_matched and diff.unmatched_reason is None
    assert diff.newly_at_risk == tuple(sorted([_key(3), _key(4)]))
    assert diff.no_longer_at_risk == (_key(0),)
    assert diff.still_at_risk == 2
    assert diff.patients_at_risk.before == 3 and diff.patients_at_risk.after == 4
    assert diff.patients_at_risk.change == 1
    worst = diff.worst_patient_auc
    assert worst.before == before.summary.patient_auc.max
    assert worst.after == after.summary.patient_auc.max
    assert worst.change == pytest.approx(worst.after - worst.before)
    assert diff.aggregate_auc.change is None  # no release candidate in either audit
    # Site a holds every leaking patient; its tail share is counted here by hand.
    site_a = next(s for s in diff.subgroups if (s.column, s.group) == ("site", "a"))
    rate_before, rate_after = _site_a_tail_rate(EARLIER), _site_a_tail_rate(LATER)
    assert rate_after > rate_before > 0
    assert site_a.tail_rate.before == pytest.approx(rate_before)
    assert site_a.tail_rate.after == pytest.approx(rate_after)
    assert site_a.tail_rate.change == pytest.approx(rate_after - rate_before)
    assert diff.subgroups[0].group == "a"  # the largest shift first


def test_the_diff_is_symmetric() -> None:
    forward = compare_reports(_audit(EARLIER), _audit(LATER))
    backward = compare_reports(_audit(LATER), _audit(EARLIER))
    assert forward.newly_at_risk == backward.no_longer_at_risk
    assert forward.no_longer_at_risk == backward.newly_at_risk
    assert forward.still_at_risk == backward.still_at_risk
    for a, b in (
        (forward.worst_patient_auc, backward.worst_patient_auc),
        (forward.patients_at_risk, backward.patients_at_risk),
    ):
        assert a.change == pytest.approx(-(b.change or 0.0))
    shifts = {(s.column, s.group): s for s in backward.subgroups}
    for s in forward.subgroups:
        mirror = shifts[(s.column, s.group)]
        assert s.tail_rate.change == pytest.approx(-(mirror.tail_rate.change or 0.0))
        assert s.significant_before == mirror.significant_after
    same = compare_reports(_audit(EARLIER), _audit(EARLIER))
    assert same.newly_at_risk == same.no_longer_at_risk == ()
    assert same.patients_at_risk.change == 0 and same.worst_patient_auc.change == 0


def test_pseudonyms_match_only_with_the_same_key() -> None:
    other = Pseudonymizer(key=b"another hospital key")
    diff = compare_reports(_audit(EARLIER), _audit(LATER, key=other))
    assert not diff.patients_matched and diff.newly_at_risk == diff.no_longer_at_risk == ()
    assert "pseudonym keys differ" in (diff.unmatched_reason or "")
    assert KEY.key_id in (diff.unmatched_reason or "")
    random_key = Pseudonymizer(key=b"x" * 32, key_is_ephemeral=True)
    diff = compare_reports(_audit(EARLIER), _audit(LATER, key=random_key))
    assert not diff.patients_matched and "random, unstored key" in (diff.unmatched_reason or "")
    raw = Pseudonymizer(key=b"", raw=True)
    assert compare_reports(_audit(EARLIER, key=raw), _audit(LATER, key=raw)).newly_at_risk == (
        "p3",
        "p4",
    )
    mixed = compare_reports(_audit(EARLIER, key=raw), _audit(LATER))
    assert not mixed.patients_matched and "different patient keys" in (mixed.unmatched_reason or "")
    # The figures are compared even when the patients cannot be.
    assert mixed.patients_at_risk.change == 1


def test_audits_of_different_pools_are_refused() -> None:
    with pytest.raises(PoolMismatchError) as caught:
        compare_reports(_audit(EARLIER), _audit(LATER, pool="pool-2"))
    assert "pool-1" in str(caught.value) and "pool-2" in str(caught.value)
    no_pool = AuditReport.from_dict(
        {**_audit(LATER).to_dict(), "audit": {**_audit(LATER).to_dict()["audit"], "inputs": {}}}
    )
    assert pool_digest(no_pool) is None
    with pytest.raises(PoolMismatchError, match="names no pool digest"):
        compare_reports(_audit(EARLIER), no_pool)


def test_a_report_without_the_at_risk_list_compares_figures_only() -> None:
    old = _audit(EARLIER).to_dict()
    del old["summary"]["at_risk_patients"]
    diff = compare_reports(AuditReport.from_dict(old), _audit(LATER))
    assert not diff.patients_matched and "predates" in (diff.unmatched_reason or "")
    assert diff.patients_at_risk.change == 1


# ------------------------------------------------------------------ privacy-gate diff


def _write(tmp_path: Path, name: str, report: AuditReport) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(report.to_dict()), "utf-8")
    return path


def test_diff_command_prints_and_writes_the_comparison(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from privacy_gate.cli import main

    before = _write(tmp_path, "champion.json", _audit(EARLIER))
    after = _write(tmp_path, "candidate.json", _audit(LATER))
    out = tmp_path / "cmp"
    assert main(["diff", str(before), str(after), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "patients confidently at risk" in printed and "3 -> 4 (+1)" in printed
    assert f"newly at risk: 2 ({min(_key(3), _key(4))}" in printed
    data = json.loads((out / "comparison.json").read_text("utf-8"))
    assert data["newly_at_risk"] == sorted([_key(3), _key(4)])
    assert data["no_longer_at_risk"] == [_key(0)]
    assert data["patients_at_risk"] == {"before": 3, "after": 4, "change": 1}
    markdown = (out / "comparison.md").read_text("utf-8")
    assert "## What changed" in markdown and f"`{_key(0)}`" in markdown
    assert "/champion.json | " in markdown  # the column is the file, as given
    html = (out / "comparison.html").read_text("utf-8")
    assert "<h2>What changed</h2>" in html and _key(3) in html


def test_diff_command_refuses_other_pools(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from privacy_gate.cli import main

    before = _write(tmp_path, "a.json", _audit(EARLIER))
    after = _write(tmp_path, "b.json", _audit(LATER, pool="pool-2"))
    assert main(["diff", str(before), str(after)]) == 2
    error = capsys.readouterr().err
    assert "different pools" in error and "pool-1" in error and "pool-2" in error
    assert main(["diff", str(before), str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_report_pages_show_the_comparison() -> None:
    from privacy_gate.render import render_html, render_markdown
    from privacy_gate.render.comparison import comparison_section

    blocks = comparison_section(compare_reports(_audit(EARLIER), _audit(LATER)))
    markdown = render_markdown(_audit(LATER), comparison=blocks)
    assert markdown.index("## Key figures") < markdown.index("## Against the champion")
    assert "Newly at risk: 2 patient(s)." in markdown
    assert "Against the champion" in render_html(_audit(LATER), comparison=blocks)
    assert "Against the champion" not in render_markdown(_audit(LATER))
