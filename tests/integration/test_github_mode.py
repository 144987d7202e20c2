"""The CLI's GitHub mode as a GitHub runner runs it: a subprocess with GITHUB_ACTIONS=true
and GITHUB_STEP_SUMMARY / GITHUB_OUTPUT pointing at files, for a passing, a failing and
an erroring audit; the composite action's script the same way; and check's argument
validation (every option named, with a HINT, exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import PATIENT_MARKER, RECORD_MARKER
from github_outputs import parse_outputs

from privacy_gate.cli import main
from privacy_gate.pseudonyms import KEY_ENVIRONMENT_VARIABLE
from privacy_gate.signing import load_private_key, sign_report, write_keypair

Dataset = Any  # tests/integration/conftest.py: Dataset

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCRIPT = BIN / "privacy-gate"
ACTION_SCRIPT = REPO / ".github" / "actions" / "privacy-gate" / "privacy-gate-action.sh"
LENIENT = (
    "subgroups: [sex]\nrisk:\n  min_group_size: 20\n"
    "gate:\n  max_patient_auc: 1.0\n  min_reference_models: 2\n"
)
EARLIER_SUMMARY = "# An earlier step's summary\n"
EARLIER_OUTPUT = "earlier=kept\n"
_CLEARED = ("GITHUB_", "PRIVACY_GATE_", "MLFLOW_TRACKING_URI")


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str
    summary: str
    outputs: dict[str, str]

    @property
    def annotations(self) -> list[str]:
        return [line for line in self.stdout.splitlines() if line.startswith("::")]


def _environment(tmp_path: Path, *, actions: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CLEARED)}
    summary, output = tmp_path / "step_summary.md", tmp_path / "github_output"
    summary.write_text(EARLIER_SUMMARY, encoding="utf-8")
    output.write_text(EARLIER_OUTPUT, encoding="utf-8")
    env.update(
        GITHUB_STEP_SUMMARY=str(summary),
        GITHUB_OUTPUT=str(output),
        MPLBACKEND="Agg",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    env[KEY_ENVIRONMENT_VARIABLE] = "github-mode-test-key"
    if actions:
        env["GITHUB_ACTIONS"] = "true"
    return env


def _finish(result: subprocess.CompletedProcess[str], tmp_path: Path) -> Run:
    summary = (tmp_path / "step_summary.md").read_text(encoding="utf-8")
    output = (tmp_path / "github_output").read_text(encoding="utf-8")
    assert summary.startswith(EARLIER_SUMMARY)  # appended, never overwritten
    assert output.startswith(EARLIER_OUTPUT)
    return Run(
        result.returncode,
        result.stdout,
        result.stderr,
        summary[len(EARLIER_SUMMARY) :],
        parse_outputs(output[len(EARLIER_OUTPUT) :]),
    )


def run_cli(args: list[str], tmp_path: Path, *, actions: bool = True) -> Run:
    env = _environment(tmp_path, actions=actions)
    result = subprocess.run(
        [str(SCRIPT), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=180,
        check=False,
    )
    return _finish(result, tmp_path)


def run_action(inputs: dict[str, str], tmp_path: Path) -> Run:
    env = _environment(tmp_path)
    env.update(inputs)
    result = subprocess.run(
        ["bash", str(ACTION_SCRIPT), "run"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=180,
        check=False,
    )
    return _finish(result, tmp_path)


def _score_args(data: Dataset, out: Path, *extra: str) -> list[str]:
    inputs = ["--signals", str(data.signals), "--records", str(data.records)]
    return ["score", *inputs, "--out", str(out), "--no-plots", *extra]


def _no_raw_ids(*texts: str) -> None:
    for text in texts:
        assert PATIENT_MARKER not in text
        assert RECORD_MARKER not in text


@pytest.fixture(scope="module")
def failing_report(dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """report.json of `score` under the default policy (K=16: it fails), no GitHub mode."""
    out = tmp_path_factory.mktemp("failing") / "out"
    assert main(_score_args(dataset, out, "--github", "--no-github")) == 1
    return out / "report.json"


# --- pass, fail, error ---------------------------------------------------------------------


def test_passing_score(dataset: Dataset, tmp_path: Path, write_config: Any) -> None:
    config = write_config(LENIENT)
    run = run_cli(_score_args(dataset, tmp_path / "out", "--config", str(config)), tmp_path)
    assert run.code == 0, run.stdout + run.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text("utf-8"))
    assert report["decision"]["status"] == "pass"
    summary = report["summary"]
    assert run.outputs == {
        "status": "pass",
        "patient_auc_max": repr(summary["patient_auc"]["max"]),
        "patients_at_risk": str(summary["patients_at_risk"]),
        "report_path": str(tmp_path / "out" / "report.json"),
        "violations": "",
        "patients_at_risk_change": "",  # no comparison against a champion
        "newly_at_risk": "",
    }
    assert float(run.outputs["patient_auc_max"]) == summary["patient_auc"]["max"]
    assert run.annotations[-1].startswith("::notice title=privacy-gate::PASS: worst patient AUC")
    assert not any(a.startswith("::error") for a in run.annotations)
    assert run.summary.startswith("## privacy-gate: ✅ PASS\n")
    assert f"| Worst patient AUC | {summary['patient_auc']['max']:.3f} |" in run.summary
    for value, group in report["subgroups"]["sex"]["groups"].items():
        if group["status"] == "tested":
            assert f"\n| {value} | {group['size']:,} |" in run.summary
    top = summary["top_patients"][0]["patient_key"]
    assert f"| 1 | `{top}` |" in run.summary
    _no_raw_ids(run.summary, run.stdout, run.stderr)


def test_failing_check(failing_report: Path, tmp_path: Path) -> None:
    run = run_cli(["check", str(failing_report)], tmp_path)
    assert run.code == 1, run.stdout + run.stderr
    report = json.loads(failing_report.read_text("utf-8"))
    rules = [v["rule"] for v in report["decision"]["violations"]]
    assert "max_detectable_auc" in rules
    errors = [a for a in run.annotations if a.startswith("::error")]
    assert [e.split("::")[1] for e in errors] == [
        f"error title=privacy-gate%3A {rule}" for rule in rules
    ]
    warnings = [a for a in run.annotations if a.startswith("::warning")]
    assert len(warnings) == len(report["decision"]["warnings"])
    assert run.outputs["status"] == "fail"
    assert run.outputs["violations"] == ",".join(dict.fromkeys(rules))
    assert run.outputs["report_path"] == str(failing_report)
    assert run.outputs["patients_at_risk"] == str(report["summary"]["patients_at_risk"])
    assert run.summary.startswith(f"## privacy-gate: ❌ FAIL\n\n{len(rules)} rules")
    assert "### Remedy: retrain with DP-SGD\n\nNot available" in run.summary
    assert "  DP-SGD recommendation: not available" in run.stdout  # after the FAIL lines
    assert run.stdout.index("  FAIL ") < run.stdout.index("  DP-SGD recommendation")
    _no_raw_ids(run.summary, run.stdout)


def test_erroring_check(tmp_path: Path) -> None:
    corrupt = tmp_path / "report.json"
    corrupt.write_text("{not json", encoding="utf-8")
    run = run_cli(["check", str(corrupt)], tmp_path)
    assert run.code == 2
    assert run.stderr.startswith("privacy-gate: ERROR")
    assert run.annotations == [
        next(a for a in run.annotations if a.startswith("::error title=privacy-gate%3A error::"))
    ]
    assert "not valid JSON" in run.annotations[0]
    assert run.outputs == {
        "status": "error",
        "patient_auc_max": "",
        "patients_at_risk": "",
        "report_path": str(corrupt),
        "violations": "",
        "patients_at_risk_change": "",
        "newly_at_risk": "",
    }
    assert run.summary.startswith("## privacy-gate: ⚠️ ERROR\n")
    assert "not valid JSON" in run.summary
    assert "### Key figures" not in run.summary


def test_erroring_score(nan_dataset: Dataset, tmp_path: Path) -> None:
    run = run_cli(_score_args(nan_dataset, tmp_path / "out"), tmp_path)
    assert run.code == 2
    assert run.outputs["status"] == "error"
    assert run.outputs["report_path"] == str(tmp_path / "out" / "report.json")
    assert "NaN" in run.annotations[0]
    assert not (tmp_path / "out" / "report.json").exists()


def test_argument_error_in_github_mode(failing_report: Path, tmp_path: Path) -> None:
    run = run_cli(["check", str(failing_report), "--mlflow-run", "abc"], tmp_path)
    assert run.code == 2
    assert run.outputs["status"] == "error"
    assert "--mlflow-run" in run.annotations[0]
    assert "HINT" in run.stderr


def test_no_github_turns_it_off(failing_report: Path, tmp_path: Path) -> None:
    run = run_cli(["--no-github", "check", str(failing_report)], tmp_path)
    assert run.code == 1
    assert run.annotations == []
    assert run.summary == ""
    assert run.outputs == {}


def test_github_flag_without_actions(failing_report: Path, tmp_path: Path) -> None:
    off = run_cli(["check", str(failing_report)], tmp_path, actions=False)
    assert off.code == 1
    assert (off.annotations, off.summary, off.outputs) == ([], "", {})
    on = run_cli(["check", str(failing_report), "--github"], tmp_path, actions=False)
    assert on.code == 1
    assert on.annotations
    assert on.outputs["status"] == "fail"


def test_signed_report_with_public_key(
    failing_report: Path, tmp_path: Path, write_config: Any
) -> None:
    write_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    write_keypair(tmp_path / "other.pem", tmp_path / "other.pub")
    report = json.loads(failing_report.read_text("utf-8"))
    signed = sign_report(
        report, load_private_key(tmp_path / "k.pem"), run_id=None, model_sha256=None
    )
    path = tmp_path / "signed.json"
    path.write_text(json.dumps(signed), encoding="utf-8")
    lenient = str(write_config("gate:\n  max_patient_auc: 1.0\n  min_reference_models: 2\n"))
    run = run_cli(["check", str(path), "--config", lenient, "--public-key", "k.pub"], tmp_path)
    assert run.code == 0, run.stdout + run.stderr
    assert "Signature: valid, key" in run.summary
    other = run_cli(
        ["check", str(path), "--config", lenient, "--public-key", "other.pub"], tmp_path
    )
    assert other.code == 1
    assert other.outputs["status"] == "fail"
    assert "signed by another key" in other.annotations[0]
    assert "audit not accepted" in other.annotations[0]
    assert "### Key figures" not in other.summary


# --- the composite action's script ---------------------------------------------------------


def test_action_script_checks_a_report(failing_report: Path, tmp_path: Path) -> None:
    run = run_action({"PG_REPORT": str(failing_report)}, tmp_path)
    assert run.code == 1, run.stdout + run.stderr
    assert f"privacy-gate --github check {failing_report}" in run.stdout
    assert run.outputs["status"] == "fail"
    assert run.summary.startswith("## privacy-gate: ❌ FAIL")


def test_action_script_public_key_as_pem_text(failing_report: Path, tmp_path: Path) -> None:
    write_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    pem = (tmp_path / "k.pub").read_text("utf-8")
    env = {"PG_REPORT": str(failing_report), "PG_PUBLIC_KEY": pem, "RUNNER_TEMP": str(tmp_path)}
    run = run_action(env, tmp_path)
    assert run.code == 1
    assert "The report is unsigned" in run.annotations[0]  # the key was used: fail closed
    assert list(tmp_path.glob("privacy-gate-public-key.*"))


def test_action_script_runs_an_audit(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    job = {
        "model": "tests.integration.tiny_audit:make_model",
        "data": "tests.integration.tiny_audit:load_data",
        "recipe": {"epochs": 1, "batch_size": 16, "learning_rate": 0.01},
        "reference_models": 4,
        "backend": "sequential",
        "policy": {"gate": {"max_patient_auc": 1.0, "min_reference_models": 2}},
    }
    (tmp_path / "audit.yaml").write_text(yaml.safe_dump(job), encoding="utf-8")
    inputs = {"PG_AUDIT_CONFIG": "audit.yaml", "PG_OUT": "out", "PG_ARGS": "--no-plots"}
    run = run_action({**inputs, "PYTHONPATH": str(REPO)}, tmp_path)
    assert run.code == 0, run.stdout + run.stderr  # its rules cannot fail at K = 4
    assert "privacy-gate --github audit --config audit.yaml --out out --no-plots" in run.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text("utf-8"))
    assert run.outputs["status"] == report["decision"]["status"]
    assert run.code == (0 if report["decision"]["status"] == "pass" else 1)
    assert run.outputs["report_path"] == "out/report.json"
    assert float(run.outputs["patient_auc_max"]) == report["summary"]["patient_auc"]["max"]
    assert run.summary.startswith(f"## privacy-gate: {'✅' if run.code == 0 else '❌'}")


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "got 0"),
        ({"PG_REPORT": "r.json", "PG_MLFLOW_RUN": "abc"}, "got 2"),
        ({"PG_MODEL": "m"}, "needs model-version"),
        ({"PG_REPORT": "r.json", "PG_MODEL_VERSION": "3"}, "applies only with model"),
        ({"PG_REPORT": "r.json", "PG_OUT": "out"}, "out applies only"),
        ({"PG_AUDIT_CONFIG": "a.yaml", "PG_POLICY": "p.yaml"}, "drop the input policy"),
        ({"PG_REPORT": "r.json", "PG_AGAINST_ALIAS": "champion"}, "privacy-gate diff"),
    ],
)
def test_action_script_input_errors(inputs: dict[str, str], message: str, tmp_path: Path) -> None:
    run = run_action(inputs, tmp_path)
    assert run.code == 2
    assert run.outputs == {"status": "error"}
    assert run.annotations[0].startswith("::error title=privacy-gate%3A action input::")
    assert message in run.annotations[0]


# --- check: argument validation ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        ([], ["needs one audit to check", "HINT"]),
        (["r.json", "--mlflow-run", "abc"], ["one audit at a time", "--mlflow-run 'abc'"]),
        (["--mlflow-run", "abc", "--model", "m", "--version", "1"], ["one audit at a time"]),
        (["--version", "3"], ["'--version' option of check needs --model", "'3'"]),
        (["r.json", "--version", "3"], ["'--version' option of check applies only with --model"]),
        (["--model", "m"], ["'--model' option of check needs --version", "HINT"]),
        (["--model", " ", "--version", "1"], ["'--model' option of check", "' '"]),
        (["--model", "m", "--version", "v3"], ["'--version' option of check", "'v3'", "HINT"]),
        (["--model", "m", "--version", "0"], ["positive integer", "'0'"]),
        (["--mlflow-run", "a b"], ["'--mlflow-run' option of check", "'a b'", "HINT"]),
        (["--mlflow-run", "../x"], ["'--mlflow-run' option of check", "'../x'"]),
        (["--mlflow-run", "abc", "--version", "2"], ["applies only with --model"]),
        (["r.json", "--tracking-uri", "http://x"], ["'--tracking-uri' option of check", "HINT"]),
        (["r.json", "--out", "o"], ["'--out' option of check applies only", "HINT"]),
        (["--mlflow-run", "abc", "--tracking-uri", " "], ["'--tracking-uri' option", "HINT"]),
        (["r.json", "--public-key", "missing.pub"], ["'--public-key' option of check", "HINT"]),
        (["--mlflow-run", "abc", "--tracking-uri", "http://127.0.0.1:9"], ["--public-key", "HINT"]),
        (["--mlflow-run", "abc", "--public-key", "k.pub"], ["'--tracking-uri' option", "HINT"]),
    ],
)
def test_check_arguments_are_validated(
    args: list[str],
    needles: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("PRIVACY_GATE_PUBLIC_KEY", "MLFLOW_TRACKING_URI", "GITHUB_ACTIONS"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "r.json").write_text("{}", encoding="utf-8")
    write_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    assert main(["check", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("privacy-gate: ERROR")
    for needle in needles:
        assert needle in err, (needle, err)


def test_check_out_must_be_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    (tmp_path / "file").write_text("x", encoding="utf-8")
    args = ["check", "--mlflow-run", "abc", "--out", str(tmp_path / "file")]
    assert main(args) == 2
    assert "'--out' option of check must be a directory" in capsys.readouterr().err
