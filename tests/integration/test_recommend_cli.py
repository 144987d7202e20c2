"""`privacy-gate recommend` on a report from `score` (which knows no training recipe)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from privacy_gate.cli import main
from privacy_gate.config import default_config
from privacy_gate.gate import reference_models_for_policy

pytest.importorskip("opacus")
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def scored(dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("scored")
    main(["-q", "score", "--signals", str(dataset.signals), "--records", str(dataset.records),
          "--out", str(out), "--no-plots"])  # fmt: skip
    return out / "report.json"


def test_recommend_reads_the_policy_and_patients_beside_the_report(
    scored: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["recommend", str(scored), "--dataset-size", "100", "--batch-size", "10"]
    assert main([*args, "--epochs", "5", "--json"]) == 0
    section = json.loads(capsys.readouterr().out)
    assert section["status"] == "recommended"
    assert section["max_records_per_patient"] == 2  # conftest data: two records per patient
    assert section["auc_limit"] == 0.9 and section["auc_limit_source"] == "risk.at_risk_auc"
    assert section["steps"] == 50 and section["sample_rate"] == pytest.approx(0.1)
    assert section["patient_auc_ceiling"] <= 0.9 + 1e-9
    # The default policy's power rules for 200 records of 100 patients (K = 16 audited).
    needed = reference_models_for_policy(default_config(), 200, 100)
    assert section["reference_models"] == needed == 40
    assert section["max_grad_norm_source"].startswith("default 1.0")
    assert main([*args, "--epochs", "5", "--max-records-per-patient", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("DP-SGD recommendation: retrain with DP-SGD")
    assert "which trains at least the 40 reference models the power rules need" in text


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--epochs", "0"], "'epochs'"),
        (["--epochs", "5", "--max-records-per-patient", "0"], "--max-records-per-patient"),
    ],
)
def test_recommend_bad_input_exit_2(
    scored: Path, capsys: pytest.CaptureFixture[str], extra: list[str], needle: str
) -> None:
    args = ["recommend", str(scored), "--dataset-size", "100", "--batch-size", "10", *extra]
    assert main(args) == 2
    assert needle in capsys.readouterr().err


def test_recommend_without_patients_csv_asks_for_the_count(
    scored: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    alone = tmp_path / "report.json"
    alone.write_text(scored.read_text("utf-8"), "utf-8")
    args = ["recommend", str(alone), "--dataset-size", "100", "--batch-size", "10"]
    assert main([*args, "--epochs", "5"]) == 2
    assert "HINT: pass --max-records-per-patient" in capsys.readouterr().err


def test_recommend_reads_quoted_raw_ids(
    scored: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """patients.csv written with --raw-ids quotes ids holding commas."""
    copy = tmp_path / "report.json"
    copy.write_text(scored.read_text("utf-8"), "utf-8")
    (tmp_path / "patients.csv").write_text(
        'patient_key,n_records,auc_max,auc_mean\r\n"Doe, J",3,0.9,0.8\r\np2,1,0.5,0.5\r\n', "utf-8"
    )
    args = ["recommend", str(copy), "--dataset-size", "100", "--batch-size", "10"]
    assert main([*args, "--epochs", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_records_per_patient"] == 3
