"""``privacy-gate check --mlflow-run ID`` and ``check --model NAME --version V`` against a
real MLflow server (no mocks).

Real audits are signed into runs by `log_report`, as the auditing pipeline does; the check
holds only the public key. A genuine audit is re-evaluated under the given gate (exit 0 or
1 by its figures); a missing, unsigned, forged, tampered or moved audit, or one of other
weights, fails closed (exit 1); an unknown run or model is an error (exit 2).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("mlflow")

import mlflow
import mlflow.pytorch
import torch
from github_outputs import parse_outputs
from logged_models import log_and_register
from mlflow.tracking import MlflowClient
from mlflow_server import MlflowServer, mlflow_server_fixture
from torch import nn

from privacy_gate import Pseudonymizer, audit, make_signals, records_from_columns
from privacy_gate.cli import main
from privacy_gate.config import default_policy_text, parse_config
from privacy_gate.mlflow import REPORT_ARTIFACT, log_report
from privacy_gate.report import write_json
from privacy_gate.report_model import AuditReport
from privacy_gate.signing import (
    PUBLIC_KEY_ENVIRONMENT_VARIABLE,
    load_private_key,
    load_public_key,
    sign_report,
    verify_report,
    write_keypair,
)
from privacy_gate.training.weights import weights_sha256

typed = AuditReport.from_dict  # log_report takes the typed report

mlflow_server = mlflow_server_fixture()

LENIENT = parse_config({"gate": {"max_patient_auc": 1.0}})
STRICT = parse_config({"gate": {"max_patient_auc": 0.6}})
N, K = 120, 8
SCRIPT = Path(sys.executable).parent / "privacy-gate"


def _report(
    policy: Any, *, leaking: int = 10, pool: str = "pool-1", k: int = K, shift: float = 4.0
) -> dict[str, Any]:
    """A real audit of small synthetic signals; the first ``leaking`` records leak strongly."""
    rng = np.random.default_rng(1)
    masks = np.argsort(rng.random((k, N)), axis=0) < k // 2
    shifts = np.r_[np.full(leaking, shift), np.zeros(N - leaking)]
    signals = make_signals(rng.standard_normal((k, N)) + masks * shifts, masks, task="binary")
    records = records_from_columns([f"r{i}" for i in range(N)], [f"p{i // 2}" for i in range(N)])
    result = audit(
        signals,
        records,
        policy,
        pseudonymizer=Pseudonymizer(key=b"k"),
        inputs={"records_sha256": pool},
    )
    return result.report.to_dict()


@dataclasses.dataclass(frozen=True)
class World:
    client: MlflowClient
    tracking_uri: str
    keys: Path
    runs: dict[str, str]
    models: dict[str, tuple[str, str]]
    passing: dict[str, Any]


def _upload(client: MlflowClient, run_id: str, report: dict[str, Any], tmp: Path) -> None:
    """Put a report where log_report puts it, bypassing signing (a forger's upload)."""
    directory = tmp / run_id
    directory.mkdir()
    write_json(report, directory / "report.json")
    client.log_artifact(run_id, str(directory / "report.json"), "privacy_gate")


@pytest.fixture(scope="module")
def world(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    keys = tmp_path_factory.mktemp("keys")
    tmp = tmp_path_factory.mktemp("uploads")
    write_keypair(keys / "audit.pem", keys / "audit.pub")
    write_keypair(keys / "other.pem", keys / "other.pub")
    private, other = load_private_key(keys / "audit.pem"), load_private_key(keys / "other.pem")
    passing, failing = _report(LENIENT), _report(STRICT)
    assert passing["decision"]["status"] == "pass"
    assert failing["decision"]["status"] == "fail"

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server.tracking_uri)
    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    experiment = client.create_experiment("privacy-gate-check")
    runs = {
        name: client.create_run(experiment, run_name=name).info.run_id
        for name in ("pass", "fail", "unsigned", "wrong_key", "other_run", "tampered", "empty")
    }
    log_report(typed(passing), run_id=runs["pass"], signing_key=private, client=client)
    log_report(typed(failing), run_id=runs["fail"], signing_key=private, client=client)
    log_report(typed(passing), run_id=runs["wrong_key"], signing_key=other, client=client)
    _upload(client, runs["unsigned"], passing, tmp)
    moved = sign_report(passing, private, run_id=runs["pass"], model_sha256=None)
    _upload(client, runs["other_run"], moved, tmp)  # genuine, but of another run
    tampered = sign_report(failing, private, run_id=runs["tampered"], model_sha256=None)
    tampered["decision"] = copy.deepcopy(passing["decision"])
    tampered["summary"]["patient_auc"]["max"] = 0.5  # figures changed after signing
    _upload(client, runs["tampered"], tampered, tmp)

    mlflow.set_experiment("privacy-gate-check-models")
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    digest = weights_sha256(model)
    models: dict[str, tuple[str, str]] = {}
    try:
        v = log_and_register(model, "check-pass")
        log_report(typed(passing), run_id=v.run_id, signing_key=private, model_sha256=digest,
                   model_files=v.files)  # fmt: skip
        models["pass"] = (v.name, v.version)
        changed = copy.deepcopy(model)
        with torch.no_grad():
            changed.bias.add_(0.5)  # weights changed after the audit
        v = log_and_register(model, "check-changed", registered=changed)
        log_report(typed(passing), run_id=v.run_id, signing_key=private, model_sha256=digest,
                   model_files=v.files)  # fmt: skip
        models["changed"] = (v.name, v.version)
        # A champion and a candidate of one registered model, audited on the same pool.
        for label, report in (
            ("champion", _report(LENIENT, leaking=4, k=16, shift=12.0)),
            ("candidate", _report(LENIENT, leaking=10, k=16, shift=12.0)),
            ("other-pool", _report(LENIENT, pool="pool-2")),
        ):
            v = log_and_register(model, "check-vs")
            log_report(typed(report), run_id=v.run_id, signing_key=private, model_sha256=digest,
                       model_files=v.files)  # fmt: skip
            models[label] = (v.name, v.version)
        client.set_registered_model_alias("check-vs", "champion", models["champion"][1])
        yield World(client, mlflow_server.tracking_uri, keys, runs, models, passing)
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.fixture(autouse=True)
def _no_key_or_uri_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PUBLIC_KEY_ENVIRONMENT_VARIABLE, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _check(world: World, *source: str, key: str = "audit.pub", extra: tuple[str, ...] = ()) -> int:
    args = ["check", *source, "--tracking-uri", world.tracking_uri]
    args += ["--public-key", str(world.keys / key), *extra]
    return main(args)


def _run(world: World, name: str) -> tuple[str, str]:
    return ("--mlflow-run", world.runs[name])


# --- runs ----------------------------------------------------------------------------------


def test_genuine_passing_audit_of_a_run(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert _check(world, *_run(world, "pass")) == 0  # the audit's own (lenient) policy
    out = capsys.readouterr().out
    assert f"Verified the signed audit of MLflow run {world.runs['pass']}" in out
    assert "Policy: the audit's own" in out and "privacy-gate: PASS" in out
    organisation = ("--config", str(world.keys / "default.yaml"))
    (world.keys / "default.yaml").write_text(default_policy_text(), "utf-8")
    assert _check(world, *_run(world, "pass"), extra=organisation) == 1  # K=8 is too few
    out = capsys.readouterr().out
    assert "FAIL max_detectable_auc" in out and "not the audit's own" in out


def test_the_gate_is_re_evaluated_not_read(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A genuine failing audit passes a gate it meets, and fails the one it was run with."""
    strict, lenient = tmp_path / "strict.yaml", tmp_path / "lenient.yaml"
    strict.write_text("gate:\n  max_patient_auc: 0.6\n", "utf-8")
    lenient.write_text("gate:\n  max_patient_auc: 1.0\n", "utf-8")
    assert _check(world, *_run(world, "fail"), extra=("--config", str(strict))) == 1
    assert "FAIL max_patient_auc" in capsys.readouterr().out
    assert _check(world, *_run(world, "fail"), extra=("--config", str(lenient))) == 0


def test_public_key_from_the_environment(
    world: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(PUBLIC_KEY_ENVIRONMENT_VARIABLE, str(world.keys / "audit.pub"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world.tracking_uri)
    (world.keys / "lenient.yaml").write_text("gate:\n  max_patient_auc: 1.0\n", "utf-8")
    args = [
        "check",
        "--mlflow-run",
        world.runs["pass"],
        "--config",
        str(world.keys / "lenient.yaml"),
    ]
    assert main(args) == 0
    monkeypatch.setenv(PUBLIC_KEY_ENVIRONMENT_VARIABLE, str(world.keys / "other.pub"))
    assert main(args) == 1
    assert "signed by another key" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("scenario", "reason"),
    [
        ("unsigned", "The report is unsigned"),
        ("wrong_key", "signed by another key"),
        ("other_run", "not to the checked run"),
        ("tampered", "changed after signing"),
        ("empty", "no privacy audit was found for MLflow run"),
    ],
)
def test_an_audit_that_is_not_genuine_fails_closed(
    world: World, scenario: str, reason: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lenient = tmp_path / "lenient.yaml"
    lenient.write_text("gate:\n  max_patient_auc: 1.0\n", "utf-8")
    out_dir = tmp_path / "out"
    code = _check(
        world, *_run(world, scenario), extra=("--config", str(lenient), "--out", str(out_dir))
    )
    out = capsys.readouterr().out
    assert code == 1, out
    assert out.startswith("privacy-gate: FAIL (audit not accepted)")
    assert reason in out
    assert "PASS" not in out
    assert not out_dir.exists()  # nothing unverified is written


def test_out_writes_the_verified_report(world: World, tmp_path: Path) -> None:
    assert _check(world, *_run(world, "pass"), extra=("--out", str(tmp_path / "o"))) == 0
    written = json.loads((tmp_path / "o" / "report.json").read_text("utf-8"))
    verify_report(written, load_public_key(world.keys / "audit.pub"))
    logged = world.client.download_artifacts(world.runs["pass"], REPORT_ARTIFACT, str(tmp_path))
    assert written == json.loads(Path(logged).read_text("utf-8"))
    assert written["audit"]["run_id"] == world.runs["pass"]


def test_errors_exit_2(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert _check(world, "--mlflow-run", "0123456789abcdef0123456789abcdef") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("privacy-gate: ERROR (error): Cannot read MLflow run")
    assert "HINT" in err
    assert len(err.splitlines()) == 1
    assert _check(world, "--model", "no-such-model", "--version", "1") == 2
    assert "Cannot read model 'no-such-model' version 1" in capsys.readouterr().err
    args = ["check", "--mlflow-run", world.runs["pass"], "--tracking-uri", world.tracking_uri]
    assert main(args) == 2  # no public key anywhere
    assert "'--public-key' option of check" in capsys.readouterr().err
    assert main([*args, "--public-key", str(world.keys / "audit.pem")]) == 2  # a private key
    assert "private key" in capsys.readouterr().err


# --- registered model versions -------------------------------------------------------------


def test_registered_version_with_its_audit(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    name, version = world.models["pass"]
    (world.keys / "lenient.yaml").write_text("gate:\n  max_patient_auc: 1.0\n", "utf-8")
    lenient = ("--config", str(world.keys / "lenient.yaml"))
    assert _check(world, "--model", name, "--version", version, extra=lenient) == 0
    out = capsys.readouterr().out
    assert f"model '{name}' version {version}" in out
    assert "privacy-gate: PASS" in out


def test_registered_version_with_other_weights_fails(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    name, version = world.models["changed"]
    (world.keys / "lenient.yaml").write_text("gate:\n  max_patient_auc: 1.0\n", "utf-8")
    lenient = ("--config", str(world.keys / "lenient.yaml"))
    assert _check(world, "--model", name, "--version", version, extra=lenient) == 1
    assert "files are not the audited ones" in capsys.readouterr().out


# --- GitHub mode on an MLflow source -------------------------------------------------------


def _github_run(world: World, tmp_path: Path, *args: str) -> tuple[int, str, str, dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "PRIVACY_GATE_"))}
    env.update(
        GITHUB_ACTIONS="true",
        GITHUB_STEP_SUMMARY=str(tmp_path / "summary.md"),
        GITHUB_OUTPUT=str(tmp_path / "output"),
        PRIVACY_GATE_PUBLIC_KEY=str(world.keys / "audit.pub"),
        MLFLOW_TRACKING_URI=world.tracking_uri,
    )
    result = subprocess.run(
        [str(SCRIPT), "check", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )
    summary = (tmp_path / "summary.md").read_text("utf-8")
    outputs = parse_outputs((tmp_path / "output").read_text("utf-8"))
    return result.returncode, result.stdout, summary, outputs


def test_github_mode_genuine_run(world: World, tmp_path: Path) -> None:
    (tmp_path / "lenient.yaml").write_text("gate:\n  max_patient_auc: 1.0\n", "utf-8")
    code, stdout, summary, outputs = _github_run(
        world,
        tmp_path,
        *_run(world, "pass"),
        "--config",
        str(tmp_path / "lenient.yaml"),
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 0, stdout
    assert outputs["status"] == "pass"
    assert outputs["report_path"] == str(tmp_path / "out" / "report.json")
    assert float(outputs["patient_auc_max"]) == world.passing["summary"]["patient_auc"]["max"]
    assert summary.startswith("## privacy-gate: ✅ PASS")
    assert f"Audit: MLflow run {world.runs['pass']}." in summary
    assert "Signature: valid, key" in summary
    assert "::notice title=privacy-gate::PASS" in stdout


def test_github_mode_forged_run(world: World, tmp_path: Path) -> None:
    code, stdout, summary, outputs = _github_run(world, tmp_path, *_run(world, "unsigned"))
    assert code == 1
    assert outputs["status"] == "fail"
    assert outputs["report_path"] == f"runs:/{world.runs['unsigned']}/{REPORT_ARTIFACT}"
    assert outputs["patient_auc_max"] == ""  # an unverified report's figures are not outputs
    assert "::error title=privacy-gate%3A audit not accepted::" in stdout
    assert "The audit was **not accepted**" in summary
    assert "### Key figures" not in summary


# --- against the champion ------------------------------------------------------------------


def _logged_report(world: World, run_id: str, directory: Path) -> dict[str, Any]:
    directory.mkdir()
    path = world.client.download_artifacts(run_id, REPORT_ARTIFACT, str(directory))
    report: dict[str, Any] = json.loads(Path(path).read_text("utf-8"))
    return report


def test_against_the_champion(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name, version = world.models["candidate"]
    (tmp_path / "lenient.yaml").write_text("gate:\n  max_patient_auc: 1.0\n", "utf-8")
    extra = ("--config", str(tmp_path / "lenient.yaml"), "--against-alias", "champion")
    extra += ("--out", str(tmp_path / "out"))
    assert _check(world, "--model", name, "--version", version, extra=extra) == 0
    out = capsys.readouterr().out
    champion = world.client.get_model_version(*world.models["champion"])
    candidate = world.client.get_model_version(name, version)
    before = _logged_report(world, champion.run_id, tmp_path / "champion")
    after = _logged_report(world, candidate.run_id, tmp_path / "candidate")
    # leaking records 0-9 are patients p0-p4 in the candidate, 0-3 (p0, p1) in the champion
    at_risk = (before["summary"]["patients_at_risk"], after["summary"]["patients_at_risk"])
    assert at_risk[1] > at_risk[0]
    change = at_risk[1] - at_risk[0]
    assert f"{at_risk[0]} -> {at_risk[1]} (+{change})" in out
    newly = sorted(
        set(after["summary"]["at_risk_patients"]) - set(before["summary"]["at_risk_patients"])
    )
    assert newly and f"newly at risk: {len(newly)} ({newly[0]}" in out
    metrics = world.client.get_run(candidate.run_id).data.metrics
    assert metrics["privacy_gate/vs_champion/patients_at_risk_change"] == change
    assert metrics["privacy_gate/vs_champion/newly_at_risk"] == len(newly)
    worst = after["summary"]["patient_auc"]["max"] - before["summary"]["patient_auc"]["max"]
    assert metrics["privacy_gate/vs_champion/worst_patient_auc_change"] == pytest.approx(worst)
    page = (tmp_path / "out" / "report.md").read_text("utf-8")
    assert "## Against the champion" in page and f"`{newly[0]}`" in page
    assert "Against the champion" in (tmp_path / "out" / "report.html").read_text("utf-8")


def test_against_a_missing_champion_or_another_pool(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    name, version = world.models["pass"]  # check-pass has no champion
    lenient = ("--against-alias", "champion")
    assert _check(world, "--model", name, "--version", version, extra=lenient) == 0  # own policy
    assert "holds the alias 'champion': nothing to compare with" in capsys.readouterr().out
    name, version = world.models["other-pool"]
    assert _check(world, "--model", name, "--version", version, extra=lenient) == 2
    error = capsys.readouterr().err
    assert "different pools" in error and "pool-1" in error and "pool-2" in error
    # --mlflow-run needs the model whose alias it compares with; a REPORT uses diff
    assert _check(world, *_run(world, "pass"), extra=lenient) == 2
    assert "--against-model NAME" in capsys.readouterr().err


def test_github_action_against_the_champion(world: World, tmp_path: Path) -> None:
    """The action's script (inputs against-alias, against-model) on an MLflow run."""
    (tmp_path / "lenient.yaml").write_text("gate:\n  max_patient_auc: 1.0\n", "utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "PRIVACY_GATE_"))}
    env.update(
        PATH=f"{SCRIPT.parent}{os.pathsep}{env.get('PATH', '')}",
        GITHUB_STEP_SUMMARY=str(tmp_path / "summary.md"),
        GITHUB_OUTPUT=str(tmp_path / "output"),
        PG_MLFLOW_RUN=world.runs["pass"],
        PG_POLICY=str(tmp_path / "lenient.yaml"),
        PG_PUBLIC_KEY=str(world.keys / "audit.pub"),
        PG_TRACKING_URI=world.tracking_uri,
        PG_AGAINST_ALIAS="champion",
        PG_AGAINST_MODEL="check-vs",
    )
    script = Path(__file__).parents[2] / ".github" / "actions" / "privacy-gate"
    result = subprocess.run(
        ["bash", str(script / "privacy-gate-action.sh"), "run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--against-alias champion --against-model check-vs" in result.stdout
    summary = (tmp_path / "summary.md").read_text("utf-8")
    outputs = parse_outputs((tmp_path / "output").read_text("utf-8"))
    assert outputs["patients_at_risk_change"] == str(
        world.passing["summary"]["patients_at_risk"] - 2  # the champion has 2 (p0, p1)
    )
    assert outputs["newly_at_risk"].isdigit()
    assert summary.index("### Key figures") < summary.index("### Against the champion")
    assert "Newly at risk:" in summary
