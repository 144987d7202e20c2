"""log_report against a real MLflow server over HTTP (no mocks).

A small synthetic audit with awkward subgroup names (``>$50k``, ``<missing>``, a ``/``
in a column name) is logged into a run of a real ``mlflow server`` (SQLite, served
artifacts) and read back with a fresh MlflowClient.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("mlflow")

import mlflow
from mlflow.tracking import MlflowClient
from mlflow_server import MlflowServer, mlflow_server_fixture

from privacy_gate import (
    Pseudonymizer,
    audit,
    default_config,
    make_signals,
    records_from_columns,
    write_outputs,
)
from privacy_gate.errors import InputError
from privacy_gate.metric_keys import (
    escape_segment,
    join_key,
    metric_key,
    split_key,
    unescape_segment,
)
from privacy_gate.mlflow import log_report
from privacy_gate.mlflow.logging import report_metrics, report_sha256
from privacy_gate.report import canonical_json
from privacy_gate.report_model import AuditReport

typed = AuditReport.from_dict  # log_report takes the typed report

mlflow_server = mlflow_server_fixture()

INCOME = "income/yr (USD)"  # a "/" and spaces in the column name
RICH = ">$50k"
N, K, EXPOSED = 240, 16, 12


@dataclasses.dataclass(frozen=True)
class Audit:
    report: dict[str, Any]
    out_dir: Path


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Audit:
    """K=16 reference models, N=240 records; the exposed records are all ``>$50k``."""
    rng = np.random.default_rng(7)
    masks = np.argsort(rng.random((K, N)), axis=0) < K // 2
    shift = np.zeros(N)
    shift[:EXPOSED] = 4.0
    scores = rng.standard_normal((K, N)) + masks * shift
    members = np.arange(N) % 2 == 0
    signals = make_signals(
        scores,
        masks,
        target_scores=rng.standard_normal(N) + 0.5 * members,
        target_members=members,
        task="binary",
    )
    patient = [i // 2 for i in range(N)]  # two records per patient, one value per patient
    income = [RICH if i < EXPOSED or p % 3 == 0 else "<=50k" for i, p in enumerate(patient)]
    for i, p in enumerate(patient):
        if i >= EXPOSED and p % 11 == 5:
            income[i] = ""  # missing: the group "<missing>", never tested
    records = records_from_columns(
        [f"r{i}" for i in range(N)],
        [f"p{p}" for p in patient],
        {INCOME: income, "site_a.b": ["x_y" if p % 2 else "Zürich" for p in patient]},
    )
    config = dataclasses.replace(default_config(), subgroups=(INCOME, "site_a.b"))
    result = audit(signals, records, config, pseudonymizer=Pseudonymizer(key=b"test-key"))
    out_dir = tmp_path_factory.mktemp("audit")
    write_outputs(result, out_dir)
    return Audit(result.report.to_dict(), out_dir)  # the JSON, read independently here


@pytest.fixture(scope="module")
def logged_run(mlflow_server: MlflowServer, audited: Audit) -> Iterator[tuple[MlflowClient, str]]:
    """A run of the real server with the audit logged into it; a fresh client to read."""
    writer = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    experiment = writer.create_experiment("privacy-gate-logging")
    run = writer.create_run(experiment)
    log_report(
        typed(audited.report), run_id=run.info.run_id, out_dir=audited.out_dir, client=writer
    )
    writer.set_terminated(run.info.run_id)
    yield MlflowClient(tracking_uri=mlflow_server.tracking_uri), run.info.run_id


def test_metrics_hold_the_report_figures(
    logged_run: tuple[MlflowClient, str], audited: Audit
) -> None:
    client, run_id = logged_run
    metrics = client.get_run(run_id).data.metrics
    summary = audited.report["summary"]
    expected = {
        metric_key("patient_auc", "max"): summary["patient_auc"]["max"],
        metric_key("patient_auc", "median"): summary["patient_auc"]["median"],
        metric_key("patient_auc", "mean"): summary["patient_auc"]["mean"],
        metric_key("patient_auc", "q90"): summary["patient_auc"]["q90"],
        metric_key("patient_auc", "q99"): summary["patient_auc"]["q99"],
        metric_key("record_auc", "max"): summary["record_auc"]["max"],
        metric_key("patients_at_risk"): summary["patients_at_risk"],
        metric_key("patients_at_risk_raw"): summary["patients_at_risk_raw"],
        metric_key("fraction_at_risk"): summary["fraction_at_risk"],
        metric_key("tail_count", "0.9"): summary["tail_counts"]["0.9"],
        metric_key("noise_floor", "max_patient_auc_q95"): (
            summary["noise_floor"]["max_patient_auc_q95"]
        ),
        metric_key("noise_floor", "expected_at_risk"): summary["noise_floor"]["expected_at_risk"],
        metric_key("noise_floor", "reference_models_needed"): (
            summary["noise_floor"]["reference_models_needed"]
        ),
    }
    aggregate = audited.report["aggregate"]
    attacks = aggregate["attacks"]
    expected[metric_key("aggregate", "auc")] = attacks[aggregate["strongest"]]["auc"]
    for fpr in attacks[aggregate["strongest"]]["tpr_at_fpr"]:
        expected[metric_key("aggregate", "tpr_at_fpr", fpr)] = max(
            a["tpr_at_fpr"][fpr] for a in attacks.values()
        )
    for name, attack in attacks.items():
        expected[metric_key("attack", name, "auc")] = attack["auc"]
        for fpr, tpr in attack["tpr_at_fpr"].items():
            expected[metric_key("attack", name, "tpr_at_fpr", fpr)] = tpr
    for column, result in audited.report["subgroups"].items():
        expected[metric_key("subgroup_column", escape_segment(column), "p_value")] = result[
            "p_value"
        ]
    for key, value in expected.items():
        assert key in metrics, key
        assert metrics[key] == pytest.approx(float(value), rel=1e-12, abs=0), key
    # Exactly the figures report_metrics selects: none lost, none invented.
    assert set(metrics) == set(report_metrics(typed(audited.report)))
    assert all(math.isfinite(v) for v in metrics.values())


def test_subgroup_keys_escape_and_unescape(
    logged_run: tuple[MlflowClient, str], audited: Audit
) -> None:
    client, run_id = logged_run
    metrics = client.get_run(run_id).data.metrics
    groups = audited.report["subgroups"][INCOME]["groups"]
    assert groups[RICH]["status"] == "tested"
    assert groups["<missing>"]["status"] == "missing"

    rich_key = join_key("subgroup", escape_segment(INCOME), escape_segment(RICH), "relative_change")
    assert rich_key == "privacy_gate/subgroup/income_2Fyr _28USD_29/_3E_2450k/relative_change"
    assert metrics[rich_key] == pytest.approx(groups[RICH]["relative_change"], rel=1e-12)
    for stat in ("pearson_residual", "p_value", "observed", "expected", "tail_rate"):
        key = join_key("subgroup", escape_segment(INCOME), escape_segment(RICH), stat)
        assert metrics[key] == pytest.approx(float(groups[RICH][stat]), rel=1e-12), stat

    # Every logged subgroup key reads back to a tested group of the report.
    found = set()
    for key in metrics:
        segments = split_key(key)
        if segments[0] == "subgroup":
            column, value = unescape_segment(segments[1]), unescape_segment(segments[2])
            assert audited.report["subgroups"][column]["groups"][value]["status"] == "tested"
            found.add((column, value))
    assert (INCOME, RICH) in found
    assert ("site_a.b", "Zürich") in found and ("site_a.b", "x_y") in found
    assert not any(value == "<missing>" for _, value in found)  # not tested, not logged


def test_params_and_tags(logged_run: tuple[MlflowClient, str], audited: Audit) -> None:
    client, run_id = logged_run
    data = client.get_run(run_id).data
    audit_section = audited.report["audit"]
    assert data.params["privacy_gate.reference_models"] == str(K)
    assert data.params["privacy_gate.records"] == str(N)
    assert data.params["privacy_gate.patients"] == str(audit_section["patients"])
    assert data.params["privacy_gate.policy_sha256"] == audit_section["policy_sha256"]
    assert "privacy_gate.backend" not in data.params  # no training section in this audit

    decision = audited.report["decision"]
    assert data.tags["privacy_gate.status"] == decision["status"]
    assert data.tags["privacy_gate.policy_sha256"] == audit_section["policy_sha256"]
    assert data.tags["privacy_gate.version"] == audit_section["package_version"]
    digest = hashlib.sha256(canonical_json(audited.report)).hexdigest()
    assert data.tags["privacy_gate.report_sha256"] == digest == report_sha256(audited.report)
    rules = data.tags["privacy_gate.violations"].split(",") if decision["violations"] else []
    assert set(rules) == {v["rule"] for v in decision["violations"]}


def test_artifacts(logged_run: tuple[MlflowClient, str], audited: Audit, tmp_path: Path) -> None:
    client, run_id = logged_run
    names = {Path(f.path).name for f in client.list_artifacts(run_id, "privacy_gate")}
    assert {"report.json", "report.md", "report.html", "patients.csv"} <= names
    assert {p.name for p in audited.out_dir.glob("*.png")} <= names
    assert any(name.endswith(".png") for name in names)
    assert "records.csv" not in names
    assert "metric_keys_map.json" not in names  # no key needed shortening
    local = client.download_artifacts(run_id, "privacy_gate/report.json", str(tmp_path))
    logged = json.loads(Path(local).read_text(encoding="utf-8"))
    assert canonical_json(logged) == canonical_json(audited.report)


def test_active_run_and_long_keys(
    mlflow_server: MlflowServer, audited: Audit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without run_id the active run is used; keys over 250 characters get a map."""
    report = json.loads(json.dumps(audited.report))
    long_name = "a very long column " * 20
    report["subgroups"] = {long_name: report["subgroups"][INCOME]}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    mlflow.set_tracking_uri(mlflow_server.tracking_uri)  # over any other module's choice
    mlflow.set_experiment("privacy-gate-logging")  # not another server's active experiment
    with mlflow.start_run() as run:
        log_report(typed(report))  # no out_dir: no artifacts besides the key map
    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    metrics = client.get_run(run.info.run_id).data.metrics
    assert all(len(key) <= 250 for key in metrics)
    names = {Path(f.path).name for f in client.list_artifacts(run.info.run_id, "privacy_gate")}
    assert names == {"metric_keys_map.json"}
    local = client.download_artifacts(
        run.info.run_id, "privacy_gate/metric_keys_map.json", str(tmp_path)
    )
    mapping = json.loads(Path(local).read_text(encoding="utf-8"))
    full = join_key("subgroup", escape_segment(long_name), escape_segment(RICH), "p_value")
    short = {v: k for k, v in mapping.items()}[full]
    assert metrics[short] == pytest.approx(
        report["subgroups"][long_name]["groups"][RICH]["p_value"], rel=1e-12
    )


def test_no_run_is_an_error(audited: Audit) -> None:
    assert mlflow.active_run() is None
    with pytest.raises(ValueError, match="run_id"):
        log_report(typed(audited.report))


def test_out_dir_of_another_audit_is_refused(audited: Audit, tmp_path: Path) -> None:
    other = dict(audited.report, schema_version="1.9")
    (tmp_path / "report.json").write_text(json.dumps(other), encoding="utf-8")
    with pytest.raises(ValueError, match="another audit"):
        log_report(typed(audited.report), run_id="x", out_dir=tmp_path)


def test_the_json_of_a_report_is_refused_with_the_reader_to_use(audited: Audit) -> None:
    """log_report signs and logs the typed report it is given; a dict is read first."""
    with pytest.raises(InputError, match="load_audit_report"):
        log_report(audited.report, run_id="x")  # type: ignore[arg-type]
