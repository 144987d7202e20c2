"""Tests of the human-readable sinks: PNG figures, Markdown and self-contained HTML."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from privacy_gate.render import render_html, render_markdown, render_plots
from privacy_gate.render.recommendation import recommendation_lines
from privacy_gate.report_model import AuditReport, Decision, Status

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

VIOLATIONS: list[dict[str, Any]] = [
    {
        "rule": "max_patient_auc",
        "value": 0.9731,
        "limit": 0.9,
        "message": "The most exposed patient has AUC 0.973, above the limit 0.900.",
    },
    {
        "rule": "max_subgroup_relative_change",
        "value": 2.4,
        "limit": 1.0,
        "message": "Subgroup diagnosis | rare is over-represented in the tail.",
    },
]

# Unique, recognisable figures of the too-small groups: they must never be printed.
SMALL_SIZE, SMALL_OBSERVED, SMALL_EXPECTED = 13, 7, 0.4321
SMALL_AUC, SMALL_RATE = 0.9876, 0.5385


def _roc(strength: float) -> dict[str, list[float]]:
    fpr = np.concatenate([[0.0], np.logspace(-4, 0, 40)])
    tpr = np.clip(fpr**strength, 0.0, 1.0)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def _attack(auc: float, strength: float) -> dict[str, Any]:
    return {"auc": auc, "tpr_at_fpr": {"0.001": 0.0021, "0.01": 0.0153}, "roc": _roc(strength)}


def _report(*, aggregate: bool) -> dict[str, Any]:
    """A realistic failing report as JSON: K=16, 2,000 records, 900 patients."""
    grid = np.round(np.linspace(0.5, 1.0, 51), 4)
    share = np.exp(-12.0 * (grid - 0.5))
    share[grid > 0.97] = 0.0  # no patient above the worst AUC: must be masked on a log axis
    share[0] = 1.0
    edges = np.linspace(0.5, 1.0, 26)
    counts = np.maximum(0, (400 * np.exp(-10 * (edges[:-1] - 0.5))).astype(int))
    counts[-3:] = [1, 0, 0]
    report: dict[str, Any] = {
        "schema_version": "2.0",
        "audit": {
            "package_version": "0.1.0",
            "created_at": "2026-03-01T12:00:00+00:00",
            "reference_models": 16,
            "records": 2000,
            "patients": 900,
            "inputs": {"signals_sha256": "ab" * 32, "records_sha256": "cd" * 32},
            "config": {
                "subgroups": ["sex", "diagnosis"],
                "risk": {
                    "at_risk_auc": 0.9,
                    "fpr": [0.001, 0.01],
                    "tail_quantile": 0.99,
                    "min_group_size": 20,
                },
                "gate": {
                    "max_patient_auc": 0.9,
                    "max_aggregate_auc": None,
                    "subgroup_alpha": 0.05,
                },
            },
            "policy_sha256": "ef" * 32,
            "pseudonyms": "hmac-sha256",
            "target": aggregate,
            "task": "binary",
        },
        "summary": {
            "patient_auc": {
                "max": 0.9731,
                "median": 0.5612,
                "mean": 0.5834,
                "q90": 0.68,
                "q99": 0.86,
            },
            "patient_auc_mean": {
                "max": 0.81,
                "median": 0.55,
                "mean": 0.57,
                "q90": 0.66,
                "q99": 0.79,
            },
            "record_auc": {"max": 0.9731, "median": 0.55, "mean": 0.57, "q90": 0.66, "q99": 0.84},
            "tail_counts": {"0.6": 310, "0.7": 95, "0.8": 21, "0.9": 3, "0.95": 1, "0.99": 0},
            "patients_at_risk": 1,
            "patients_at_risk_raw": 3,
            "fraction_at_risk": 1 / 900,
            "at_risk_auc": 0.9,
            "fdr": 0.05,
            "at_risk_test": "noncentral_t",
            "at_risk_p_values": [1e-6, 0.02, 0.3],
            "tail": {"quantile": 0.99, "target": 9, "patients": 11, "threshold": 0.851},
            "power": {
                "alpha": 5.6e-5,
                "power": 0.8,
                "detectable_auc": 0.9912,
                "n_in": 8,
                "n_out": 8,
                "count_pairs": [[8, 8, 2000]],
                "reference_models_needed": 52,
            },
            "noise_floor": {
                "method": "permutation",
                "reason": "200 replicates within the time budget of 120 s",
                "balanced": True,
                "replicates": 200,
                "replicates_requested": 200,
                "time_budget_s": 120.0,
                "max_patient_auc_q95": 0.947,
                "expected_at_risk": 2.3,
                "reference_models_needed": 64,
                "limit": 0.9,
            },
            "survival": {
                "auc": grid.tolist(),
                "share": share.tolist(),
                "lower": np.clip(share * 0.7, 0.0, 1.0).tolist(),
                "upper": np.clip(share * 1.3 + 1e-3, 0.0, 1.0).tolist(),
            },
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
            "top_patients": [
                {
                    "patient_key": "3f9a1c0b7d2e4a51",
                    "n_records": 2,
                    "auc_max": 0.9731,
                    "auc_mean": 0.81,
                    "auc_se": 0.012,
                },
                {
                    "patient_key": "a07be3c95d11f0e2",
                    "n_records": 1,
                    "auc_max": 0.9312,
                    "auc_mean": 0.9312,
                    "auc_se": 0.02,
                },
            ],
        },
        "aggregate": None,
        "subgroups": {
            "sex": {
                "chi_square": 0.8,
                "df": 1,
                "p_value": 0.37,
                "p_value_bonferroni": 0.74,
                "tested_patients": 2000,
                "tail_patients": 20,
                "several_values": 0,
                "groups": {
                    "F": _tested(1010, 9, 10.1, -0.109, 0.73, 0.009, 0.9731),
                    "M": _tested(990, 11, 9.9, 0.111, 0.73, 0.011, 0.9312),
                },
            },
            "diagnosis": {
                "chi_square": 31.5,
                "df": 2,
                "p_value": 1.4e-7,
                "p_value_bonferroni": 2.8e-7,
                "tested_patients": 1987,
                "tail_patients": 20,
                "several_values": 0,
                "groups": {
                    "common": _tested(1800, 12, 18.3, -0.344, 2.3e-2, 0.0067, 0.91),
                    "rare | sub-type": _tested(167, 8, 1.7, 3.706, 2.1e-5, 0.048, 0.95),
                    "<script>alert(1)</script>": _tested(20, 0, 0.2, -1.0, 0.8, 0.0, 0.6),
                    "ultra-rare": {
                        "status": "too_small",
                        "size": SMALL_SIZE,
                        "observed": SMALL_OBSERVED,
                        "expected": SMALL_EXPECTED,
                        "relative_change": 15.2,
                        "pearson_residual": 10.0,
                        "p_value": 3.3e-9,
                        "p_value_adjusted": 1.6e-8,
                        "tail_rate": SMALL_RATE,
                        "max_patient_auc": SMALL_AUC,
                    },
                    "missing": {
                        "status": "missing",
                        "size": 45,
                        "observed": 1,
                        "expected": None,
                        "relative_change": None,
                        "pearson_residual": None,
                        "p_value": None,
                        "p_value_adjusted": None,
                        "tail_rate": 0.022,
                        "max_patient_auc": 0.71,
                    },
                },
            },
        },
        "decision": {
            "status": "fail",
            "violations": copy.deepcopy(VIOLATIONS),
            "warnings": ["Only 16 reference models: the noise floor 0.947 exceeds 0.9."],
        },
    }
    if aggregate:
        report["aggregate"] = {
            "members": 1000,
            "non_members": 1000,
            "strongest": "lira_online",
            "rmia_offline_a": 0.33,
            "rmia_offline_a_source": "default",
            "attacks": {
                "lira_online": _attack(0.587, 0.8),
                "lira_online_fixed_variance": _attack(0.571, 0.85),
                "lira_offline": _attack(0.552, 0.9),
                "rmia_online": _attack(0.579, 0.82),
            },
        }
    loaded: dict[str, Any] = json.loads(json.dumps(report))  # as read from report.json
    return loaded


def _tested(
    size: int, observed: int, expected: float, change: float, p: float, rate: float, auc: float
) -> dict[str, Any]:
    return {
        "status": "tested",
        "size": size,
        "observed": observed,
        "expected": expected,
        "relative_change": change,
        "pearson_residual": (observed - expected) / expected**0.5,
        "p_value": p,
        "p_value_adjusted": None,
        "tail_rate": rate,
        "max_patient_auc": auc,
    }


def _typed(report: dict[str, Any]) -> AuditReport:
    return AuditReport.from_dict(report)


def _audit_report(*, aggregate: bool) -> AuditReport:
    return _typed(_report(aggregate=aggregate))


@pytest.fixture(params=[False, True], ids=["no-aggregate", "aggregate"])
def report(request: pytest.FixtureRequest) -> AuditReport:
    return _audit_report(aggregate=bool(request.param))


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5_000, f"{path} is suspiciously small ({len(data)} bytes)"


# -------------------------------------------------------------------------- plots
def test_plots_are_valid_pngs(report: AuditReport, tmp_path: Path) -> None:
    plots = render_plots(report, tmp_path / "figures")
    expected = {"patient_auc_survival", "patient_auc_histogram", "subgroups"}
    if report.aggregate is not None:
        expected.add("attack_roc")
    assert set(plots) == expected
    for name, path in plots.items():
        assert path == tmp_path / "figures" / f"{name}.png"
        _assert_png(path)
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(
        f"{n}.png" for n in expected
    )


def test_survival_plot_with_zero_shares(tmp_path: Path) -> None:
    report = _report(aggregate=False)
    survival = report["summary"]["survival"]
    assert 0.0 in survival["share"] and 0.0 in survival["lower"]
    plots = render_plots(_typed(report), tmp_path)
    _assert_png(plots["patient_auc_survival"])


def test_survival_plot_when_every_share_above_half_is_zero(tmp_path: Path) -> None:
    report = _report(aggregate=False)
    survival = report["summary"]["survival"]
    n = len(survival["auc"])
    survival["share"] = [1.0] + [0.0] * (n - 1)
    survival["lower"] = [0.9] + [0.0] * (n - 1)
    survival["upper"] = [1.0] + [0.0] * (n - 1)
    report["summary"]["histogram"]["counts"] = [0] * len(report["summary"]["histogram"]["counts"])
    plots = render_plots(_typed(report), tmp_path)
    _assert_png(plots["patient_auc_survival"])
    _assert_png(plots["patient_auc_histogram"])


def test_no_subgroup_plot_without_tested_groups(tmp_path: Path) -> None:
    report = _report(aggregate=False)
    for column in report["subgroups"].values():
        for group in column["groups"].values():
            if group["status"] == "tested":
                group["status"] = "too_small"
    assert "subgroups" not in render_plots(_typed(report), tmp_path)
    assert not (tmp_path / "subgroups.png").exists()


def test_subgroup_plot_labels_are_literal_text(tmp_path: Path) -> None:
    # "$...$" would be parsed as matplotlib mathtext; a broken formula must not crash.
    report = _report(aggregate=False)
    groups = report["subgroups"]["sex"]["groups"]
    groups["$\\frac{$"] = groups.pop("F")
    _assert_png(render_plots(_typed(report), tmp_path)["subgroups"])


def test_error_report_without_optional_sections_renders(tmp_path: Path) -> None:
    report = replace(
        _audit_report(aggregate=False),
        subgroups={},
        decision=Decision(Status.ERROR, warnings=("signals.npz could not be read",)),
    )
    assert report.aggregate is None and report.dp_recommendation is None
    assert set(render_plots(report, tmp_path)) == {"patient_auc_survival", "patient_auc_histogram"}
    markdown = render_markdown(report)
    assert "ERROR" in _first_body_line(markdown)
    assert "the gate fails closed" in _first_body_line(markdown)
    assert "signals.npz could not be read" in markdown
    for absent in ("## Subgroups", "## Aggregate attacks", "## Remedy", "## Differential"):
        assert absent not in markdown
    assert "verdict-error" in render_html(report)


# ----------------------------------------------------------------------- markdown
def _first_body_line(markdown: str) -> str:
    lines = [line for line in markdown.splitlines() if line.strip()]
    assert lines[0].startswith("# ")
    return lines[1]


def test_markdown_starts_with_verdict_and_lists_violations(report: AuditReport) -> None:
    markdown = render_markdown(report)
    assert _first_body_line(markdown).startswith("**Verdict: FAIL**")
    verdict_part = markdown.split("## Key figures")[0]
    # The pipe in the message is escaped, so compare with escapes removed.
    unescaped = re.sub(r"\\(.)", r"\1", verdict_part)
    for violation in VIOLATIONS:
        assert violation["message"] in unescaped
        assert f"`{violation['rule']}`" in verdict_part
    assert "value 0.9731, limit 0.9" in verdict_part


def test_markdown_formats_structured_violation_values() -> None:
    report = _report(aggregate=True)
    report["decision"]["violations"].append(
        {
            "rule": "max_aggregate_tpr_at_fpr",
            "value": {"0.001": 0.05333333333333334},
            "limit": {"0.001": 0.01},
            "message": "The strongest attack is too strong at low FPR.",
        }
    )
    markdown = render_markdown(_typed(report))
    assert "(value at 0.001: 0.05333, limit at 0.001: 0.01; rule" in markdown


def test_markdown_pass_verdict() -> None:
    report = _report(aggregate=True)
    report["decision"] = {"status": "pass", "violations": [], "warnings": []}
    assert _first_body_line(render_markdown(_typed(report))).startswith("**Verdict: PASS**")


def test_markdown_key_figures_and_sections(report: AuditReport) -> None:
    markdown = render_markdown(report)
    for text in (
        "| Reference models (K) | 16 |",
        "| Worst patient AUC | 0.973 |",
        "| Median patient AUC | 0.561 |",
        "| Reference models needed for the noise floor to sit below the limits | 64 |",
        "## Caveats",
        "empirical lower bound",
        "Only 16 reference models: the noise floor 0.947 exceeds 0.9.",
        "Knolle et al.",
        "Nature 656 (2026)",
        "keyed hashes",
        "`3f9a1c0b7d2e4a51`",
        "| ≥ 0.9 | 3 | 0.33% |",
    ):
        assert text in markdown, text
    if report.aggregate is None:
        assert "Strongest aggregate attack" not in markdown
    else:
        assert "| Strongest attack AUC | 0.587 |" in markdown
        assert "| Strongest attack TPR at FPR 0.1% | 2.10e-03 |" in markdown


def test_markdown_escapes_subgroup_values_in_tables() -> None:
    markdown = render_markdown(_audit_report(aggregate=False))
    assert "| rare \\| sub-type |" in markdown
    assert "\\<script\\>" in markdown
    assert "<script>" not in markdown
    for line in markdown.splitlines():
        if line.startswith("| rare"):
            assert len(re.findall(r"(?<!\\)\|", line)) == 9  # 8 cells, no extra column


def test_markdown_marks_significant_groups() -> None:
    markdown = render_markdown(_audit_report(aggregate=False))
    rare = next(line for line in markdown.splitlines() if line.startswith("| rare"))
    assert "OVER-REPRESENTED (significant)" in rare and "+371%" in rare and "2.1e-05" in rare
    sex_f = next(line for line in markdown.splitlines() if line.startswith("| F |"))
    assert "significant" not in sex_f


def test_significance_follows_the_policys_subgroup_alpha() -> None:
    # p = 2.1e-5 over 5 tested groups: Bonferroni 1.05e-4, significant at 0.05, not at 1e-5.
    strict_json = _report(aggregate=False)
    strict_json["audit"]["config"]["gate"]["subgroup_alpha"] = 1e-5
    strict = _typed(strict_json)
    for text in (render_markdown(strict), render_html(strict)):
        rare = next(
            line
            for line in text.splitlines()
            if "rare | sub-type" in line
            or "rare \\| sub-type" in line
            or "rare &#124; sub-type" in line
        )
        assert "significant" not in rare
    assert "subgroup\\_alpha 1e-05" in render_markdown(strict)
    # The adjusted p-value the audit stored decides when present (the gate uses it).
    stored = _report(aggregate=False)
    stored["subgroups"]["diagnosis"]["groups"]["rare | sub-type"]["p_value_adjusted"] = 0.2
    markdown = render_markdown(_typed(stored))
    rare = next(line for line in markdown.splitlines() if line.startswith("| rare"))
    assert "significant" not in rare


def test_key_figures_state_power_and_the_null_used() -> None:
    markdown = render_markdown(_audit_report(aggregate=False))
    assert "finds with 80% power at this K | 0.9912 |" in markdown
    assert "power rules need | 52 |" in markdown
    assert "permutation, 200 replicates; 200 replicates within the time budget of 120 s" in markdown
    assert "Standard error in the tail" not in markdown
    assert "11 patients with patient AUC at least 0.851" in markdown


def test_too_small_groups_are_suppressed(report: AuditReport) -> None:
    for text in (render_markdown(report), render_html(report)):
        assert "suppressed (&lt; 20 patients)" in text or "suppressed (\\< 20 patients)" in text
        row = next(line for line in text.splitlines() if "ultra-rare" in line)
        for number in ("13", "7", "0.4321", "0.432", "0.988", "0.9876", "53.8", "1520"):
            assert number not in row.split("ultra-rare", 1)[1].split("suppressed")[0], number
        assert str(SMALL_AUC)[:5] not in text
        assert "3.3e-09" not in text


def test_markdown_links_plots(tmp_path: Path) -> None:
    report = _audit_report(aggregate=True)
    plots = render_plots(report, tmp_path)
    markdown = render_markdown(report, {name: path.name for name, path in plots.items()})
    for path in plots.values():
        assert f"]({path.name})" in markdown
    assert str(tmp_path) not in markdown


# --------------------------------------------------------------------------- html
def test_html_is_self_contained_and_embeds_images(report: AuditReport, tmp_path: Path) -> None:
    plots = render_plots(report, tmp_path)
    page = render_html(report, plots)
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?://", page)
    assert not re.search(r"<(script|link|iframe|object|embed)\b", page, re.IGNORECASE)
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == len(plots)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert str(tmp_path) not in page


def test_html_verdict_banner_comes_first(report: AuditReport) -> None:
    page = render_html(report)
    body = page.split("<body>", 1)[1]
    banner = body.index('class="verdict verdict-fail"')
    assert banner < body.index("<h2>")
    for violation in VIOLATIONS:
        assert violation["message"] in body[banner : body.index("<h2>")]


@pytest.mark.parametrize(("status", "css"), [("pass", "verdict-pass"), ("error", "verdict-error")])
def test_html_banner_colour_follows_status(status: str, css: str) -> None:
    report = _report(aggregate=False)
    report["decision"] = {"status": status, "violations": [], "warnings": []}
    assert f'class="verdict {css}"' in render_html(_typed(report))


def test_html_escapes_user_strings() -> None:
    report = _report(aggregate=False)
    report["decision"]["violations"][0]["message"] = 'Group "<b>x</b>" & co'
    page = render_html(_typed(report))
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    assert "rare | sub-type" in page


def test_renderers_do_not_mutate_the_report(tmp_path: Path) -> None:
    report = _audit_report(aggregate=True)
    before = copy.deepcopy(report.to_dict())
    plots = render_plots(report, tmp_path)
    render_markdown(report, {k: p.name for k, p in plots.items()})
    render_html(report, plots)
    assert report.to_dict() == before


# ------------------------------------------------------------------------------ DP
DP_TRAINING: dict[str, Any] = {
    "noise_multiplier": 1.1,
    "max_grad_norm": 1.0,
    "sample_rate": 0.01,
    "steps": 1000,
    "delta": 1e-5,
    "epsilon": 3.21,
    "accountant": "prv",
    "auc_ceiling": 0.71,
    "auc_ceiling_gdp": 0.70,
    "max_records_per_patient": 2,
    "patient_auc_ceiling": 0.8,
    "records_checked": 2000,
    "records_above_ceiling": 0,
    "ceiling_test": "binomial",
}
DP_RECOMMENDATION: dict[str, Any] = {
    "status": "recommended",
    "reason": "settings computed",
    "auc_limit": 0.9,
    "auc_limit_source": "gate.max_patient_auc",
    "max_records_per_patient": 2,
    "noise_multiplier": 1.234,
    "max_grad_norm": 0.75,
    "batch_size": 64,
    "epochs": 12,
    "epsilon": 2.5,
    "delta": 1 / 2000,
    "auc_ceiling": 0.6123,
    "patient_auc_ceiling": 0.6789,
    "reference_models": 64,
    "apply": {"opacus": "engine.make_private(\n    noise_multiplier=1.234\n)"},
}


def test_dp_sections_render_from_the_typed_report() -> None:
    report = _report(aggregate=False)
    report["dp_training"] = DP_TRAINING
    report["dp_recommendation"] = DP_RECOMMENDATION
    markdown = render_markdown(_typed(report))
    assert "## Differential privacy of the audited recipe" in markdown
    assert "| epsilon (PRV) | 3.21 |" in markdown
    assert "| records confidently above the ceiling (one-sided, Bonferroni 5%) | 0 of 2,000 |" in (
        markdown
    )
    assert "No record's AUC is confidently above" in markdown
    assert "| noise\\_multiplier | 1.234 |" in markdown
    assert "```python\nengine.make_private(\n    noise_multiplier=1.234\n)\n```" in markdown
    lines = recommendation_lines(_typed(report))
    assert lines[0].startswith("DP-SGD recommendation: retrain with DP-SGD")
    assert "(limit 0.900 from gate.max_patient_auc; up to 2 records per patient)" in lines[0]
    assert lines[0].endswith(
        "; re-audit adaptively (reference_models: auto), which trains at least the 64 "
        "reference models the power rules need."
    )
    assert lines[1:] == [
        "  apply (opacus):",
        "    engine.make_private(",
        "        noise_multiplier=1.234",
        "    )",
    ]


def test_a_failed_report_without_a_recommendation_says_why() -> None:
    report = _audit_report(aggregate=False)
    assert report.dp_recommendation is None and report.decision.status is Status.FAIL
    assert "Not available: the report has no dp\\_recommendation section" in render_markdown(report)
    assert recommendation_lines(report) == [
        "DP-SGD recommendation: not available (the report has no dp_recommendation section)."
    ]
    unavailable = _report(aggregate=False)
    unavailable["dp_recommendation"] = {"status": "unavailable", "reason": "no opacus"}
    assert "No DP-SGD recommendation could be computed: no opacus." in render_markdown(
        _typed(unavailable)
    )
    passed = replace(report, decision=Decision(Status.PASS))
    assert "Remedy" not in render_markdown(passed)


def test_under_representation_is_told_apart_from_over_representation() -> None:
    """A significant group with fewer tail patients than expected is labelled and drawn
    as under-represented (no violation), never as the over-represented one is."""
    from privacy_gate.render.view import n_subgroup_tests, representation, subgroup_rows

    data = _report(aggregate=False)
    data["subgroups"]["sex"]["groups"]["F"] = _tested(1010, 4, 10.1, -0.604, 2e-6, 0.004, 0.97)
    report = _typed(data)
    markdown = render_markdown(report)
    female = next(line for line in markdown.splitlines() if line.startswith("| F |"))
    assert "under-represented (significant" in female and "OVER" not in female
    rare = next(line for line in markdown.splitlines() if line.startswith("| rare"))
    assert "OVER-REPRESENTED" in rare
    rows = {r.value: r for r in subgroup_rows(report)}
    n_tests = n_subgroup_tests(report)
    assert representation(rows["F"], n_tests, 0.05) == "under"
    assert representation(rows["rare | sub-type"], n_tests, 0.05) == "over"


def test_top_patients_mark_who_is_confidently_at_risk() -> None:
    """The second-ranked patient is confidently at risk, the first is not (a high point
    estimate with a large SE): the table says so for each."""
    data = _report(aggregate=False)
    data["summary"]["at_risk_patients"] = ["a07be3c95d11f0e2"]
    markdown = render_markdown(_typed(data))
    first = next(line for line in markdown.splitlines() if "3f9a1c0b7d2e4a51" in line)
    second = next(line for line in markdown.splitlines() if "a07be3c95d11f0e2" in line)
    assert first.rstrip().endswith("| no |") and second.rstrip().endswith("| yes |")
    assert "| Confidently at risk |" in markdown


def test_provenance_shows_the_digests_the_report_holds() -> None:
    """A training audit records the pool's data digest, a score audit its files': each is
    shown where it exists, none as "n/a"."""
    data = _report(aggregate=False)
    data["audit"]["inputs"] = {"data_sha256": "d" * 64}
    markdown = render_markdown(_typed(data))
    assert f"| Data SHA-256 (the pool's inputs and labels) | `{'d' * 64}` |" in markdown
    assert "Signals SHA-256" not in markdown and "n/a`" not in markdown
