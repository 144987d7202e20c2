"""`promote` and ``privacy-gate promote`` against a real MLflow server (no mocks).

Tiny torch models are logged with ``mlflow.pytorch.log_model`` and registered on a real
``mlflow server`` (SQLite, served artifacts); real audits are signed at logging time by
`log_report`. Only a version with a genuine passing audit of its own run and weights gets
the alias; forged tags, other keys, other runs' reports, changed weights, unaudited
versions and another policy are refused, tagged with the reason, and leave no alias.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("mlflow")

import mlflow
import mlflow.pytorch
import torch
from logged_models import Logged, log_and_register
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow_server import MlflowServer, mlflow_server_fixture
from torch import nn

from privacy_gate import Pseudonymizer, audit, make_signals, records_from_columns
from privacy_gate.cli import main
from privacy_gate.config import parse_config
from privacy_gate.mlflow import (
    REPORT_ARTIFACT,
    SIGNED_TAG,
    PromotionResult,
    log_report,
    promote,
    report_sha256,
)
from privacy_gate.mlflow.promote import PromotionError
from privacy_gate.render.recommendation import recommendation_lines
from privacy_gate.report import write_json
from privacy_gate.report_model import AuditReport
from privacy_gate.signing import (
    PUBLIC_KEY_ENVIRONMENT_VARIABLE,
    load_private_key,
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
# A DP-SGD recommendation section as the audit's edge module writes it (schema in
# privacy_gate.render.recommendation), for audits made here by the core alone.
DP_RECOMMENDATION = {
    "status": "recommended",
    "reason": "the gate's verdict is fail",
    "auc_limit": 0.6,
    "auc_limit_source": "gate.max_patient_auc",
    "max_records_per_patient": 2,
    "noise_multiplier": 1.1,
    "max_grad_norm": 1.0,
    "batch_size": 12,
    "epochs": 5,
    "epsilon": 3.2,
    "delta": 1 / N,
    "auc_ceiling": 0.58,
    "patient_auc_ceiling": 0.6,
    "apply": {"opacus": "engine.make_private(\n    noise_multiplier=1.1, max_grad_norm=1.0)"},
}


def _report(policy: Any) -> dict[str, Any]:
    """A real audit of small synthetic signals; 10 records leak strongly."""
    rng = np.random.default_rng(0)
    masks = np.argsort(rng.random((K, N)), axis=0) < K // 2
    shift = np.r_[np.full(10, 4.0), np.zeros(N - 10)]
    signals = make_signals(rng.standard_normal((K, N)) + masks * shift, masks, task="binary")
    records = records_from_columns(
        [f"r{i}" for i in range(N)], [f"p{i // 2}" for i in range(N)], {}
    )
    result = audit(signals, records, policy, pseudonymizer=Pseudonymizer(key=b"test-key"))
    return result.report.to_dict()


@dataclasses.dataclass(frozen=True)
class World:
    client: MlflowClient
    tracking_uri: str
    public_key: Path
    versions: dict[str, Logged]
    passing: dict[str, Any]


@pytest.fixture(scope="module")
def world(mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    keys = tmp_path_factory.mktemp("keys")
    write_keypair(keys / "audit.pem", keys / "audit.pub.pem")
    write_keypair(keys / "other.pem", keys / "other.pub.pem")
    private = load_private_key(keys / "audit.pem")
    other_private = load_private_key(keys / "other.pem")
    passing, failing = _report(LENIENT), _report(STRICT)
    failing.setdefault("dp_recommendation", DP_RECOMMENDATION)
    assert passing["decision"]["status"] == "pass"
    assert failing["decision"]["status"] == "fail"

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server.tracking_uri)
    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    mlflow.set_experiment("privacy-gate-promote")
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    digest = weights_sha256(model)
    versions: dict[str, Logged] = {}
    try:
        for scenario in ("pass", "policy"):
            v = versions[scenario] = log_and_register(model, f"gate-{scenario}")
            log_report(typed(passing), run_id=v.run_id, signing_key=private, model_sha256=digest,
                       client=client, model_files=v.files)  # fmt: skip
        v = versions["fail"] = log_and_register(model, "gate-fail")
        log_report(typed(failing), run_id=v.run_id, signing_key=private, model_sha256=digest,
                   model_files=v.files)  # fmt: skip

        v = versions["forged"] = log_and_register(model, "gate-forged")
        client.set_tag(v.run_id, "privacy_gate.status", "pass")  # a tag is not an audit
        client.set_model_version_tag(v.name, v.version, "privacy_gate.status", "pass")

        v = versions["wrong_key"] = log_and_register(model, "gate-wrong-key")
        log_report(typed(passing), run_id=v.run_id, signing_key=other_private,
                   model_sha256=digest, model_files=v.files)  # fmt: skip

        v = versions["other_run"] = log_and_register(model, "gate-other-run")
        moved = sign_report(
            passing, private, run_id=versions["pass"].run_id, model_sha256=digest,
            model_files=versions["pass"].files,
        )  # a genuine report of another version, uploaded to this run  # fmt: skip
        moved_dir = tmp_path_factory.mktemp("moved")
        write_json(moved, moved_dir / "report.json")
        client.log_artifact(v.run_id, str(moved_dir / "report.json"), "privacy_gate")

        changed = copy.deepcopy(model)
        with torch.no_grad():
            changed.weight.add_(0.01)  # weights changed after the audit
        v = versions["changed"] = log_and_register(model, "gate-changed", registered=changed)
        log_report(typed(passing), run_id=v.run_id, signing_key=private, model_sha256=digest,
                   model_files=v.files)  # fmt: skip

        versions["unaudited"] = log_and_register(model, "gate-unaudited")
        yield World(client, mlflow_server.tracking_uri, keys / "audit.pub.pem", versions, passing)
    finally:
        mlflow.set_tracking_uri(previous)


def _assert_refused(world: World, v: Logged, result: PromotionResult, reason: str) -> None:
    assert not result.allowed
    assert any(reason in r for r in result.reasons), result.reasons
    tags = world.client.get_model_version(v.name, v.version).tags
    assert tags["privacy_gate.status"] == "refused"
    assert reason in tags["privacy_gate.refusal"]
    with pytest.raises(MlflowException):
        world.client.get_model_version_by_alias(v.name, "champion")


def _promote(world: World, key: str, **kwargs: Any) -> PromotionResult:
    v = world.versions[key]
    return promote(
        v.name, v.version, "champion", public_key=world.public_key, client=world.client, **kwargs
    )


def test_logged_report_is_signed_for_its_run_and_weights(world: World) -> None:
    v = world.versions["pass"]
    assert world.client.get_run(v.run_id).data.tags[SIGNED_TAG] == "true"
    path = world.client.download_artifacts(v.run_id, REPORT_ARTIFACT)
    report = json.loads(Path(path).read_text(encoding="utf-8"))
    from privacy_gate.signing import load_public_key

    verify_report(report, load_public_key(world.public_key))
    assert report["audit"]["run_id"] == v.run_id
    assert report["audit"]["model_sha256"] is not None


def test_passing_version_is_promoted_by_the_function(world: World) -> None:
    v = world.versions["pass"]
    result = _promote(world, "pass")
    assert result.allowed, result.reasons
    assert result.reasons == []
    assert world.client.get_model_version_by_alias(v.name, "champion").version == v.version
    tags = world.client.get_model_version(v.name, v.version).tags
    assert tags["privacy_gate.status"] == "pass"
    assert tags["privacy_gate.promoted_alias"] == "champion"
    assert result.report is not None
    assert tags["privacy_gate.report_sha256"] == report_sha256(result.report)


def test_passing_version_is_promoted_by_the_cli(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    v = world.versions["pass"]
    monkeypatch.setenv(PUBLIC_KEY_ENVIRONMENT_VARIABLE, str(world.public_key))  # the default
    monkeypatch.setenv("MLFLOW_TRACKING_URI", world.tracking_uri)
    code = main(["promote", "--model", v.name, "--version", v.version, "--alias", "production"])
    assert code == 0, capsys.readouterr()
    assert "PROMOTED" in capsys.readouterr().out
    assert world.client.get_model_version_by_alias(v.name, "production").version == v.version


def test_failing_audit_is_refused_with_its_violations(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    v = world.versions["fail"]
    result = _promote(world, "fail")
    _assert_refused(world, v, result, "the audit did not pass")
    assert "max_patient_auc" in {violation.rule for violation in result.violations}
    code = main(
        [
            "promote",
            "--model",
            v.name,
            "--version",
            v.version,
            "--alias",
            "champion",
            "--public-key",
            str(world.public_key),
            "--tracking-uri",
            world.tracking_uri,
        ]
    )
    out = capsys.readouterr().out
    assert code == 1
    assert "REFUSED" in out
    assert "FAIL max_patient_auc" in out
    assert result.audit_report is not None
    recommendation = recommendation_lines(result.audit_report)  # the report's own remedy
    assert recommendation[0].startswith("DP-SGD recommendation: retrain with DP-SGD")
    assert len(recommendation) > 1  # the apply snippet, line by line
    lines = out.splitlines()
    todo = lines.index("What to do:")  # every remedy after the reasons, the DP-SGD one first
    assert lines[todo + 1].startswith(f"  - {recommendation[0]}")
    assert "how to apply it: the report's DP-SGD recommendation" in lines[todo + 1]
    assert any(line.startswith("Report: runs:/") for line in lines)


@pytest.mark.parametrize(
    ("scenario", "reason"),
    [
        ("forged", "no privacy audit was found"),
        ("wrong_key", "signed by another key"),
        ("other_run", "not to this version's run"),
        ("changed", "files are not the audited ones"),
        ("unaudited", "no privacy audit was found"),
    ],
)
def test_no_genuine_audit_of_this_version_is_refused(
    world: World, scenario: str, reason: str
) -> None:
    _assert_refused(world, world.versions[scenario], _promote(world, scenario), reason)


def test_another_policy_is_refused(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    v = world.versions["policy"]
    assert world.passing["audit"]["policy_sha256"] != STRICT.sha256()
    args = ["promote", "--model", v.name, "--version", v.version, "--alias", "champion"]
    args += ["--public-key", str(world.public_key), "--tracking-uri", world.tracking_uri]
    code = main([*args, "--policy-sha256", STRICT.sha256()])
    assert code == 1
    assert "promotion requires" in capsys.readouterr().out
    _assert_refused(world, v, _promote(world, "policy", policy_sha256=STRICT.sha256()), "policy")


def test_errors_exit_2_with_one_line(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["promote", "--version", "1", "--alias", "champion", "--tracking-uri"]
    key = ["--public-key", str(world.public_key)]
    assert main([*base, world.tracking_uri, "--model", "no-such-model", *key]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("privacy-gate: ERROR (error): Cannot promote 'no-such-model'")
    assert len(err.splitlines()) == 1
    with pytest.raises(PromotionError):
        promote("no-such-model", 1, "champion", public_key=world.public_key, client=world.client)
    bad_key = ["--public-key", str(world.tracking_uri)]  # not a file
    assert main([*base, world.tracking_uri, "--model", world.versions["pass"].name, *bad_key]) == 2


def test_log_audited_model_binds_a_logged_audit_to_the_model_files(world: World) -> None:
    """The Lightning callback and the evaluator log the audit first; the model is logged
    afterwards with log_audited_model, which re-signs the run's audit with its files."""
    from privacy_gate.errors import ReportError
    from privacy_gate.mlflow import log_audited_model

    private = load_private_key(world.public_key.with_name("audit.pem"))
    torch.manual_seed(3)
    model = nn.Linear(4, 2)
    example = np.zeros((1, 4), dtype=np.float32)
    with mlflow.start_run() as run:
        pass
    run_id = run.info.run_id
    log_report(typed(world.passing), run_id=run_id, signing_key=private,
               model_sha256=weights_sha256(model), client=world.client)  # fmt: skip
    with pytest.raises(ReportError, match="not the audited one"):
        log_audited_model(nn.Linear(4, 2), run_id=run_id, input_example=example,
                          signing_key=private, client=world.client)  # fmt: skip
    audited = log_audited_model(
        model, run_id=run_id, input_example=example, signing_key=private, client=world.client
    )
    assert audited.report is not None and audited.report["audit"]["model_files"]
    version = mlflow.register_model(audited.model_uri, "bound-after-the-audit").version
    result = promote(
        "bound-after-the-audit", version, "champion", public_key=world.public_key,
        client=world.client,
    )  # fmt: skip
    assert result.allowed, result.reasons
