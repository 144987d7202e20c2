"""One answer everywhere (issue 25): `check` re-decides a report under the audit's own
policy unless one is given, every output of a run shows the same policy digest, and the
report file is signed when the signing key is set (so `keys verify` answers for it)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from test_github_mode import _score_args, run_cli

from privacy_gate.cli import main
from privacy_gate.config import default_config, parse_config
from privacy_gate.signing import SIGNING_KEY_ENVIRONMENT_VARIABLE, write_keypair

Dataset = Any

#: a policy that differs from the default: the default fails the dataset on more rules
OWN_POLICY = "gate:\n  max_patient_auc: 1.0\n  max_patients_at_risk: 0\n  fdr: 0.05\n"
DIGEST = re.compile(r"policy_sha256 ([0-9a-f]{64})")


@pytest.fixture
def own_report(dataset: Dataset, tmp_path: Path, write_config: Any) -> dict[str, Any]:
    out = tmp_path / "audited"
    main(_score_args(dataset, out, "--config", str(write_config(OWN_POLICY))))
    report = json.loads((out / "report.json").read_text("utf-8"))
    report["_path"] = str(out / "report.json")
    return report  # type: ignore[no-any-return]


def test_check_without_config_reproduces_the_audits_own_verdict(
    own_report: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    code = main(["check", own_report["_path"]])
    out = capsys.readouterr().out
    own = own_report["decision"]
    assert code == (0 if own["status"] == "pass" else 1)
    rules = sorted({v["rule"] for v in own["violations"]})
    assert f"({', '.join(rules)})" in out or own["status"] == "pass"
    assert f"Policy: the audit's own (policy_sha256 {own_report['audit']['policy_sha256']})" in out
    # the packaged default would decide otherwise: the test distinguishes the two
    assert own_report["audit"]["policy_sha256"] != default_config().sha256()


def test_one_policy_digest_on_the_console_and_in_the_job_summary(
    own_report: dict[str, Any], tmp_path: Path, write_config: Any
) -> None:
    """With the audit's policy and with an organisation's: the console and the job summary
    name the same digest, the digest of the policy that decided."""
    org = write_config("gate:\n  max_patient_auc: 0.99\n")
    for extra, expected in (
        ([], own_report["audit"]["policy_sha256"]),
        (["--config", str(org)], None),
    ):
        run = run_cli(["check", own_report["_path"], *extra], tmp_path)
        printed = set(DIGEST.findall(run.stdout))
        summarised = set(re.findall(r"Policy SHA-256: `([0-9a-f]{64})`", run.summary))
        applied = printed - {own_report["audit"]["policy_sha256"]} if extra else printed
        assert len(summarised) == 1 and applied == summarised, (run.stdout, run.summary)
        if expected is not None:
            assert summarised == {expected}
        else:  # the organisation's gate over the audit's risk section
            merged = parse_config(own_report["audit"]["config"])
            gate = parse_config(
                {**own_report["audit"]["config"], "gate": {"max_patient_auc": 0.99}}
            )
            assert summarised == {gate.sha256()} != {merged.sha256()}
            assert "not the audit's own" in run.summary


def test_the_report_file_is_signed_and_verifies(
    dataset: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    private, public = tmp_path / "signing.pem", tmp_path / "public.pem"
    write_keypair(private, public)
    monkeypatch.setenv(SIGNING_KEY_ENVIRONMENT_VARIABLE, str(private))
    out = tmp_path / "out"
    main(_score_args(dataset, out))
    report = json.loads((out / "report.json").read_text("utf-8"))
    assert report["signature"]["algorithm"] == "ed25519"
    capsys.readouterr()
    assert main(["keys", "verify", str(out / "report.json"), "--public-key", str(public)]) == 0
    # a changed figure no longer verifies
    report["summary"]["patients_at_risk"] += 1
    (out / "tampered.json").write_text(json.dumps(report), "utf-8")
    assert main(["keys", "verify", str(out / "tampered.json"), "--public-key", str(public)]) == 1
    monkeypatch.delenv(SIGNING_KEY_ENVIRONMENT_VARIABLE)
    main(_score_args(dataset, tmp_path / "unsigned"))
    capsys.readouterr()
    unsigned = tmp_path / "unsigned" / "report.json"
    code = main(["keys", "verify", str(unsigned), "--public-key", str(public)])
    assert code == 1
    said = capsys.readouterr()
    assert "tag" not in (said.out + said.err) and "unsigned" in (said.out + said.err)


def test_signing_the_file_keeps_the_reports_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own_report: dict[str, Any]
) -> None:
    """The signed file is the report plus a signature, key for key (log_report compares
    the two): a `score` audit has no run or model digest, and signing adds no null ones."""
    from privacy_gate.pipeline import signed_if_key
    from privacy_gate.report import canonical_json

    report = {k: v for k, v in own_report.items() if k != "_path"}
    report["audit"] = {
        k: v for k, v in report["audit"].items() if k not in ("run_id", "model_sha256")
    }
    private, public = tmp_path / "signing.pem", tmp_path / "public.pem"
    write_keypair(private, public)
    monkeypatch.setenv(SIGNING_KEY_ENVIRONMENT_VARIABLE, str(private))
    signed = signed_if_key(report)
    assert "signature" in signed and "run_id" not in signed["audit"]
    assert canonical_json(signed) == canonical_json(report)
    monkeypatch.delenv(SIGNING_KEY_ENVIRONMENT_VARIABLE)
    assert signed_if_key(report) is report
