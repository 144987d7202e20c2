"""The release path of ``privacy-gate audit`` (audit.yaml ``mlflow.registered_model``): the
signed audit and the candidate logged into one run, a registered version, and the alias
asked of the gated registry in-process (``privacygate+sqlite:///``, the store class the
gated server runs). A passing signed audit is promoted; a failing one, or an unsigned one,
is refused with its reasons recorded on the version; the main job's EHR config walks the
same path on the real cohort."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("mlflow")
pytest.importorskip("torch")

from mlflow.tracking import MlflowClient

from privacy_gate.cli import main
from privacy_gate.signing import write_keypair

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "privacy-gate"


def _job(tmp_path: Path, gate: dict[str, Any], name: str = "audit") -> Path:
    job: dict[str, Any] = {
        "model": "tests.integration.tiny_audit:make_model",
        "data": "tests.integration.tiny_audit:load_data",
        "recipe": {"epochs": 2, "batch_size": 16, "learning_rate": 0.01},
        "reference_models": 4,
        "backend": "sequential",
        "out": str(tmp_path / f"out-{name}"),
        "policy": {"gate": gate},
        "mlflow": {
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "experiment": "release",
            "registered_model": "tiny",
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job), "utf-8")
    return path


@pytest.fixture
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_keypair(tmp_path / "audit.pem", tmp_path / "audit.pub.pem")
    monkeypatch.setenv("PRIVACY_GATE_SIGNING_KEY", str(tmp_path / "audit.pem"))
    monkeypatch.setenv("PRIVACY_GATE_PUBLIC_KEY", str(tmp_path / "audit.pub.pem"))
    monkeypatch.setenv("PRIVACY_GATE_PSEUDONYM_KEY", "one key for every audit of the pool")
    monkeypatch.chdir(REPO)  # the job's model and data are tests.integration.tiny_audit
    return tmp_path


def _version(tmp_path: Path) -> Any:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    (version,) = client.search_model_versions("name='tiny'")
    return client, version


def test_a_passing_signed_audit_is_promoted(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["audit", "--config", str(_job(keys, {"max_patient_auc": 1.0})), "--no-plots"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "Promoted 'tiny' version 1 to 'champion'" in out
    client, version = _version(keys)
    assert client.get_model_version_by_alias("tiny", "champion").version == version.version
    assert version.tags["privacy_gate.status"] == "pass"
    assert version.tags["privacy_gate.verified_by"] == "registry-store"
    run = client.get_run(version.run_id)
    assert run.data.tags["privacy_gate.signed"] == "true"
    assert [a.path for a in client.list_artifacts(run.info.run_id, "privacy_gate")]


def test_a_failing_audit_is_refused_with_its_reasons(
    keys: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    code = main(["audit", "--config", str(_job(keys, {"max_patient_auc": 0.5})), "--no-plots"])
    out = capsys.readouterr().out
    # printed once, as the answer; not also logged at ERROR as a server operator's line
    assert not [r for r in caplog.records if "registry store refused" in r.getMessage()]
    assert code == 1, out
    assert "to 'champion' REFUSED by the registry" in out
    assert "the audit did not pass" in out and "max_patient_auc" in out
    assert "Open the UI: mlflow ui --backend-store-uri sqlite:///" in out
    assert "--registry-store-uri privacygate+sqlite:///" in out
    client, version = _version(keys)
    assert version.tags["privacy_gate.status"] == "refused"
    assert "the audit did not pass" in version.tags["privacy_gate.refusal"]
    assert "champion" not in client.get_registered_model("tiny").aliases


def test_a_later_candidate_is_compared_with_the_champion(
    keys: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _job(keys, {"max_patient_auc": 1.0}, "first")
    assert main(["audit", "--config", str(first), "--no-plots"]) == 0
    assert "Nothing to compare with: 'tiny' has no versions yet." in capsys.readouterr().out
    config = _job(keys, {"max_patient_auc": 0.5}, "second")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(keys / "summary.md"))
    monkeypatch.setenv("GITHUB_OUTPUT", str(keys / "outputs"))
    assert main(["audit", "--config", str(config), "--github"]) == 1
    out = capsys.readouterr().out
    summary = (keys / "summary.md").read_text("utf-8")
    assert summary.index("### Key figures") < summary.index("### Against the champion")
    assert "privacy-gate diff: this candidate against champion (same pool, data_sha256" in out
    uri = f"sqlite:///{keys / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    second = client.get_model_version("tiny", "2")
    metrics = client.get_run(second.run_id).data.metrics
    # the same data, model and recipe: the same reference models, the same figures
    assert metrics["privacy_gate/vs_champion/worst_patient_auc_change"] == 0.0
    assert metrics["privacy_gate/vs_champion/newly_at_risk"] == 0.0
    page = (keys / "out-second" / "report.md").read_text("utf-8")
    assert "## Against the champion" in page
    logged = client.download_artifacts(second.run_id, "privacy_gate/report.md", str(keys))
    assert "## Against the champion" in Path(logged).read_text("utf-8")
    assert str(client.get_model_version_by_alias("tiny", "champion").version) == "1"


def test_an_unsigned_passing_audit_is_not_released(
    keys: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PRIVACY_GATE_SIGNING_KEY")
    code = main(["audit", "--config", str(_job(keys, {"max_patient_auc": 1.0})), "--no-plots"])
    out = capsys.readouterr().out
    assert code == 1, out  # the gate passed, the registry did not: not released
    assert "REFUSED" in out and "The report is unsigned" in out
    assert _version(keys)[1].tags["privacy_gate.status"] == "refused"


@pytest.mark.slow
def test_the_main_jobs_config_registers_a_version_and_prints_the_refusal(tmp_path: Path) -> None:
    """examples/ehr/audit.yaml (the main job), at K = 16 to keep it short, on the real
    SUPPORT2 cohort, as scripts/main-job.sh runs it: keys in the environment, a version
    registered, the refusal and the UI line printed, the verdict tags on the version."""
    pytest.importorskip("SurvSet")
    config = yaml.safe_load((REPO / "examples/ehr/audit.yaml").read_text("utf-8"))
    config["reference_models"] = 16
    config["mlflow"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "audit.yaml").write_text(yaml.safe_dump(config), "utf-8")
    write_keypair(tmp_path / "audit.pem", tmp_path / "audit.pub.pem")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIVACY_GATE_")}
    env.update(
        PRIVACY_GATE_SIGNING_KEY=str(tmp_path / "audit.pem"),
        PRIVACY_GATE_PUBLIC_KEY=str(tmp_path / "audit.pub.pem"),
    )
    result = subprocess.run(
        [str(SCRIPT), "audit", "--config", str(tmp_path / "audit.yaml"), "--out",
         str(tmp_path / "out"), "--no-plots"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr  # the cohort leaks
    assert "Promotion of 'ehr-mlp' version 1 to 'champion' REFUSED by the registry" in (
        result.stdout
    )
    assert "What to do:\n  - DP-SGD recommendation: retrain with DP-SGD" in result.stdout
    assert result.stdout.count("apply (audit_yaml):") == 1  # the snippets once, with the verdict
    assert "Open the UI: mlflow ui" in result.stdout
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    version = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version("ehr-mlp", "1")
    assert version.tags["privacy_gate.status"] == "refused"
    assert "the audit did not pass" in version.tags["privacy_gate.refusal"]
