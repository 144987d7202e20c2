"""The command line, as users and CI run it: `privacy-gate`, `python -m privacy_gate`,
and `privacy_gate.cli.main` in-process."""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from privacy_gate.cli import main
from privacy_gate.config import default_config, default_policy_text, parse_config
from privacy_gate.pseudonyms import KEY_ENVIRONMENT_VARIABLE
from privacy_gate.report import SCHEMA_VERSION

Dataset = Any  # tests/integration/conftest.py: Dataset (paths and the raw ids written)

REPO = Path(__file__).resolve().parents[2]
_BIN = REPO / ".venv" / "bin"
PYTHON = str(_BIN / "python") if (_BIN / "python").exists() else sys.executable
SCRIPT = _BIN / "privacy-gate"
if not SCRIPT.exists():
    SCRIPT = Path(sys.executable).parent / "privacy-gate"

RECORDS_HEADER = "record_id,patient_key,auc,auc_se,tpr_at_fpr_0.001,tpr_at_fpr_0.01,mu"
PATIENTS_HEADER = "patient_key,n_records,auc_max,auc_mean"
REPORT_KEYS = {"schema_version", "audit", "summary", "aggregate", "subgroups", "decision"}
LENIENT = "gate:\n  max_patient_auc: 1.0\n  min_reference_models: 2\n"
KEY = "integration-test-key"


def _run(
    args: list[str], *, module: bool = False, key: str | None = KEY
) -> subprocess.CompletedProcess[str]:
    command = [PYTHON, "-m", "privacy_gate", *args] if module else [str(SCRIPT), *args]
    env = {k: v for k, v in os.environ.items() if k != KEY_ENVIRONMENT_VARIABLE}
    if key is not None:
        env[KEY_ENVIRONMENT_VARIABLE] = key
    env["MPLBACKEND"] = "Agg"
    return subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=120, check=False
    )


def _score_args(data: Dataset, out: Path, *extra: str) -> list[str]:
    return [
        "score",
        "--signals",
        str(data.signals),
        "--records",
        str(data.records),
        "--out",
        str(out),
        *extra,
    ]


def _hmac(kind: str, identifier: str, key: str = KEY) -> str:
    message = kind.encode() + b"\0" + identifier.encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()[:16]


def _assert_one_line_error(stderr: str, *needles: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("privacy-gate: ERROR"), stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], (needle, stderr)


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    return rows[0], rows[1:]


def _all_text(directory: Path) -> str:
    return "\n".join(
        p.read_bytes().decode("latin-1") for p in sorted(directory.rglob("*")) if p.is_file()
    )


def _marker(ids: Any) -> str:
    return next(i for i in ids if i is not None).rsplit("-", 1)[0]


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENVIRONMENT_VARIABLE, KEY)


# --- score: exit codes --------------------------------------------------------------------


def test_console_script_lenient_pass(dataset: Dataset, tmp_path: Path, write_config: Any) -> None:
    config = write_config(LENIENT)
    result = _run(_score_args(dataset, tmp_path / "out", "--config", str(config), "--no-plots"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "privacy-gate: PASS" in result.stdout
    assert "policy_sha256" not in result.stdout  # a given config: no default-policy notice
    assert (tmp_path / "out" / "report.json").is_file()


def test_module_default_policy_fails_and_prints_its_hash(dataset: Dataset, tmp_path: Path) -> None:
    result = _run(_score_args(dataset, tmp_path / "out", "--no-plots"), module=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert default_config().sha256() in result.stdout
    assert "privacy-gate: FAIL" in result.stdout
    assert "max_detectable_auc" in result.stdout  # K=16: under-powered
    report = json.loads((tmp_path / "out" / "report.json").read_text("utf-8"))
    assert report["decision"]["status"] == "fail"
    assert report["audit"]["policy_sha256"] == default_config().sha256()


def test_in_process_exit_codes_and_messages(
    dataset: Dataset,
    tmp_path: Path,
    write_config: Any,
    capsys: pytest.CaptureFixture[str],
    keyed: None,
) -> None:
    assert (
        main(
            _score_args(
                dataset, tmp_path / "a", "--config", str(write_config(LENIENT)), "--no-plots"
            )
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "privacy-gate: PASS" in out
    assert "200 records" in out
    assert main(_score_args(dataset, tmp_path / "b", "--no-plots")) == 1
    captured = capsys.readouterr()
    assert f"policy_sha256 {default_config().sha256()}" in captured.out
    assert "FAIL max_detectable_auc" in captured.out
    assert captured.err == ""


def test_quiet_prints_only_the_verdict(
    dataset: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str], keyed: None
) -> None:
    assert main(["-q", *_score_args(dataset, tmp_path / "out", "--no-plots")]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("privacy-gate: FAIL (")


# --- score: errors ------------------------------------------------------------------------


def test_nan_scores_exit_2_with_one_line(nan_dataset: Dataset, tmp_path: Path) -> None:
    result = _run(_score_args(nan_dataset, tmp_path / "out", "--no-plots"))
    assert result.returncode == 2
    _assert_one_line_error(result.stderr, "NaN", "[1, 3]")
    assert not (tmp_path / "out" / "report.json").exists()


def test_nan_scores_in_process(
    nan_dataset: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_score_args(nan_dataset, tmp_path / "out", "--no-plots")) == 2
    _assert_one_line_error(capsys.readouterr().err, "NaN")


def test_bad_config_key_exit_2(
    dataset: Dataset, tmp_path: Path, write_config: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config("gate:\n  max_patient_aucc: 0.9\n")
    assert main(_score_args(dataset, tmp_path / "out", "--config", str(config), "--no-plots")) == 2
    _assert_one_line_error(capsys.readouterr().err, "max_patient_aucc", "'max_patient_auc'")


def test_bad_config_value_exit_2_module(
    dataset: Dataset, tmp_path: Path, write_config: Any
) -> None:
    config = write_config("gate:\n  fdr: 0\n  max_patient_auc: 0.9\n")
    result = _run(
        _score_args(dataset, tmp_path / "out", "--config", str(config), "--no-plots"), module=True
    )
    assert result.returncode == 2
    _assert_one_line_error(result.stderr, "'fdr'")


def test_invalid_yaml_config_exit_2_with_one_line(
    dataset: Dataset, tmp_path: Path, write_config: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config("gate: {max_patient_auc: 0.9\nrisk: [\n")
    assert main(_score_args(dataset, tmp_path / "out", "--config", str(config), "--no-plots")) == 2
    _assert_one_line_error(capsys.readouterr().err, "not valid YAML", config.name)


@pytest.mark.parametrize("which", ["signals", "records", "config"])
def test_missing_file_exit_2(
    dataset: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    missing = tmp_path / f"absent-{which}"
    signals = missing if which == "signals" else dataset.signals
    records = missing if which == "records" else dataset.records
    args = [
        "score",
        "--signals",
        str(signals),
        "--records",
        str(records),
        "--out",
        str(tmp_path / "o"),
    ]
    if which == "config":
        args += ["--config", str(missing)]
    assert main([*args, "--no-plots"]) == 2
    _assert_one_line_error(capsys.readouterr().err, missing.name)


def test_missing_file_subprocess(dataset: Dataset, tmp_path: Path) -> None:
    args = ["score", "--signals", str(tmp_path / "nope.npz"), "--records", str(dataset.records)]
    result = _run([*args, "--out", str(tmp_path / "o"), "--no-plots"])
    assert result.returncode == 2
    _assert_one_line_error(result.stderr, "nope.npz")


def test_npy_instead_of_npz_is_a_clean_input_error(
    dataset: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    npy = tmp_path / "signals.npy"
    np.save(npy, np.zeros((4, 200)))
    args = [
        "score",
        "--signals",
        str(npy),
        "--records",
        str(dataset.records),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*args, "--no-plots"]) == 2
    err = capsys.readouterr().err
    _assert_one_line_error(err, "signals.npy")
    assert "unexpected" not in err


def test_row_count_mismatch_exit_2(
    dataset: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = tmp_path / "records.csv"
    lines = dataset.records.read_text("utf-8").splitlines()
    records.write_text("\n".join(lines[:-1]) + "\n", "utf-8")
    args = [
        "score",
        "--signals",
        str(dataset.signals),
        "--records",
        str(records),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*args, "--no-plots"]) == 2
    _assert_one_line_error(capsys.readouterr().err, "199 rows", "200 records")


def test_debug_prints_the_traceback(nan_dataset: Dataset, tmp_path: Path) -> None:
    result = _run(["--debug", *_score_args(nan_dataset, tmp_path / "out", "--no-plots")])
    assert result.returncode == 2
    assert "Traceback" in result.stderr
    assert "InputError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("privacy-gate: ERROR")


# --- score: outputs -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def scored(dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Outputs of `score` with the default policy and a fixed pseudonym key."""
    out = tmp_path_factory.mktemp("scored") / "out"
    result = _run(_score_args(dataset, out, "--no-plots"))
    assert result.returncode == 1, result.stdout + result.stderr
    return out


def test_report_json_sections(scored: Path, dataset: Dataset) -> None:
    report = json.loads((scored / "report.json").read_text("utf-8"))
    assert set(report) == REPORT_KEYS
    assert report["schema_version"] == SCHEMA_VERSION
    audit = report["audit"]
    assert audit["reference_models"] == dataset.n_reference_models
    assert audit["records"] == dataset.n_records
    assert audit["patients"] == dataset.n_patients
    assert audit["pseudonyms"] == "hmac-sha256"
    assert audit["target"] is True
    assert parse_config(audit["config"]) == default_config()
    digest = hashlib.sha256(dataset.signals.read_bytes()).hexdigest()
    assert audit["inputs"]["signals_sha256"] == digest
    assert set(report["aggregate"]["attacks"]["lira_online"]["tpr_at_fpr"]) == {"0.001", "0.01"}
    assert report["decision"]["status"] == "fail"
    assert {v["rule"] for v in report["decision"]["violations"]} >= {"max_detectable_auc"}


def test_records_csv_rows_in_input_order(scored: Path, dataset: Dataset) -> None:
    assert (scored / "records.csv").read_text("utf-8").splitlines()[0] == RECORDS_HEADER
    _, rows = _read_csv(scored / "records.csv")
    assert len(rows) == dataset.n_records
    for row, record_id, patient_id in zip(
        rows, dataset.record_ids, dataset.patient_ids, strict=True
    ):
        assert row[0] == _hmac("record", record_id)
        expected = (
            _hmac("record", record_id) if patient_id is None else _hmac("patient", patient_id)
        )
        assert row[1] == expected
        auc = float(row[2])
        assert 0.5 <= auc < 1.0
    # The first 10 records carry the planted effect: their rows must show it.
    exposed = [float(r[2]) for r in rows[:10]]
    others = [float(r[2]) for r in rows[10:]]
    assert sum(exposed) / 10 > 0.9 > sum(others) / len(others)


def test_patients_csv(scored: Path, dataset: Dataset) -> None:
    assert (scored / "patients.csv").read_text("utf-8").splitlines()[0] == PATIENTS_HEADER
    _, rows = _read_csv(scored / "patients.csv")
    assert len(rows) == dataset.n_patients
    assert sum(int(r[1]) for r in rows) == dataset.n_records
    keys = {r[0] for r in rows}
    assert _hmac("patient", dataset.patient_ids[0] or "") in keys
    assert _hmac("record", dataset.record_ids[24]) in keys  # record 24 has no patient id


def test_no_raw_ids_in_outputs_by_default(scored: Path, dataset: Dataset) -> None:
    text = _all_text(scored)
    assert _marker(dataset.record_ids) not in text
    assert _marker(dataset.patient_ids) not in text


def test_raw_ids_with_flag(
    dataset: Dataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(_score_args(dataset, out, "--raw-ids", "--no-plots")) == 1
    _, rows = _read_csv(out / "records.csv")
    assert [r[0] for r in rows] == list(dataset.record_ids)
    assert [r[1] for r in rows] == [
        p if p is not None else r
        for p, r in zip(dataset.patient_ids, dataset.record_ids, strict=True)
    ]
    report = json.loads((out / "report.json").read_text("utf-8"))
    assert report["audit"]["pseudonyms"] == "raw"
    assert report["summary"]["top_patients"][0]["patient_key"].startswith(
        _marker(dataset.patient_ids)
    )


def test_without_a_key_pseudonyms_differ_between_runs(dataset: Dataset, tmp_path: Path) -> None:
    first = _run(_score_args(dataset, tmp_path / "a", "--no-plots"), key=None)
    second = _run(_score_args(dataset, tmp_path / "b", "--no-plots"), key=None)
    assert first.returncode == second.returncode == 1
    a = _read_csv(tmp_path / "a" / "records.csv")[1]
    b = _read_csv(tmp_path / "b" / "records.csv")[1]
    assert a[0][0] != b[0][0]
    assert [r[2] for r in a] == [r[2] for r in b]  # same figures
    assert _marker(dataset.record_ids) not in _all_text(tmp_path / "a")


def test_score_with_plots(dataset: Dataset, tmp_path: Path, keyed: None) -> None:
    out = tmp_path / "out"
    assert main(_score_args(dataset, out, "--config", str(_lenient(tmp_path)))) == 0
    for name in ("report.json", "records.csv", "patients.csv", "report.md", "report.html"):
        assert (out / name).is_file(), name
    assert list(out.glob("*.png"))
    text = _all_text(out)
    assert _marker(dataset.record_ids) not in text
    assert _marker(dataset.patient_ids) not in text


def _lenient(directory: Path) -> Path:
    path = directory / "lenient.yaml"
    path.write_text(LENIENT, encoding="utf-8")
    return path


# --- check --------------------------------------------------------------------------------


def test_check_gate_only_changes(
    scored: Path, write_config: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    report = scored / "report.json"
    before = report.read_bytes()
    assert main(["check", str(report), "--config", str(write_config(LENIENT))]) == 0
    assert "privacy-gate: PASS" in capsys.readouterr().out
    strict = write_config("gate:\n  max_patient_auc: 0.6\n")
    assert main(["check", str(report), "--config", str(strict)]) == 1
    assert "FAIL max_patient_auc" in capsys.readouterr().out
    # An explicit but unchanged risk section is fine.
    same_risk = write_config(LENIENT + "risk:\n  at_risk_auc: 0.9\n  fpr: [0.01, 0.001]\n")
    assert main(["check", str(report), "--config", str(same_risk)]) == 0
    assert report.read_bytes() == before  # check writes nothing


def test_check_without_config_applies_the_default_gate(
    scored: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(scored / "report.json")]) == 1
    out = capsys.readouterr().out
    assert "max_detectable_auc" in out


def test_check_subprocess_exit_codes(scored: Path, write_config: Any) -> None:
    report = str(scored / "report.json")
    assert _run(["check", report, "--config", str(write_config(LENIENT))]).returncode == 0
    assert _run(["check", report], module=True).returncode == 1


def test_check_fdr_change_recounts(
    tmp_path: Path,
    write_config: Any,
    capsys: pytest.CaptureFixture[str],
    keyed: None,
    make_dataset: Any,
) -> None:
    # Planted records at true AUC Phi(6 / sqrt(2)) = 0.99999 and K = 32: the calibrated
    # at-risk test confirms them (at K = 16 it cannot; see the power figures).
    data = make_dataset(tmp_path / "data", seed=4, k=32, effect=6.0)
    out = tmp_path / "out"
    assert main(_score_args(data, out, "--no-plots")) == 1
    capsys.readouterr()
    report_path = out / "report.json"
    audited = json.loads(report_path.read_text("utf-8"))["summary"]["patients_at_risk"]
    assert audited > 0  # the planted records are confidently at risk
    counts = []
    # An FDR at or below a tenth of the audit's confirms nobody: the p-values' Berger-Boos
    # beta is a tenth of the audit's first BH level (privacy_gate.at_risk).
    for fdr in (0.01, 0.05, 0.5):
        config = write_config(f"gate:\n  max_patients_at_risk: 0\n  fdr: {fdr}\n")
        assert main(["check", str(report_path), "--config", str(config)]) == 1
        found = re.search(r"(\d+) patient\(s\) are confidently at risk", capsys.readouterr().out)
        assert found is not None
        counts.append(int(found.group(1)))
    assert counts == sorted(counts)  # a larger FDR never confirms fewer patients
    assert counts[1] == audited  # same FDR as the audit: same count
    # At the audited count the rule holds; a power rule can still fail the audit.
    config = write_config(f"gate:\n  max_patients_at_risk: {audited}\n  max_detectable_auc: 0.99\n")
    assert main(["check", str(report_path), "--config", str(config)]) == 1
    printed = capsys.readouterr().out
    assert "FAIL max_detectable_auc" in printed
    assert "FAIL max_patients_at_risk" not in printed


@pytest.mark.parametrize(
    "text",
    [
        LENIENT + "risk:\n  at_risk_auc: 0.8\n",
        LENIENT + "risk:\n  fpr: [0.05]\n",
        LENIENT + "subgroups: [sex]\n",
    ],
    ids=["at_risk_auc", "fpr", "subgroups"],
)
def test_check_rejects_a_changed_risk_section(
    scored: Path, write_config: Any, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    assert main(["check", str(scored / "report.json"), "--config", str(write_config(text))]) == 2
    err = capsys.readouterr().err
    _assert_one_line_error(err, "new audit")


def test_check_bad_config_exit_2(
    scored: Path, write_config: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config("gate:\n  max_patinet_auc: 0.9\n")
    assert main(["check", str(scored / "report.json"), "--config", str(config)]) == 2
    _assert_one_line_error(capsys.readouterr().err, "max_patinet_auc")


def test_check_missing_report_fails_the_gate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing audit is never a pass and not an input error either: exit 1 (the gate
    fails closed, docs/statistics.md)."""
    assert main(["check", str(tmp_path / "report.json")]) == 1
    out = capsys.readouterr().out
    assert "FAIL (audit not accepted)" in out
    assert "no audit report at" in out and "report.json" in out


@pytest.mark.parametrize(
    "content",
    ["{not json", "[1, 2]", '{"schema_version": "1.0"}', "__drop_summary__", "__bad_schema__"],
    ids=["invalid-json", "not-an-object", "no-sections", "no-summary-figures", "future-schema"],
)
def test_check_corrupt_report_exit_2(
    scored: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    path = tmp_path / "report.json"
    if content.startswith("__"):
        report = json.loads((scored / "report.json").read_text("utf-8"))
        if content == "__drop_summary__":
            report["summary"] = {"patient_auc": {}}
        else:
            report["schema_version"] = "3.0"  # written by a newer privacy-gate
        content = json.dumps(report)
    path.write_text(content, "utf-8")
    assert main(["check", str(path)]) == 2
    _assert_one_line_error(capsys.readouterr().err, "report")


def test_check_on_a_schema_1_report_fails_as_stale(
    scored: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], write_config: Any
) -> None:
    """A report from before the calibrated at-risk test (schema 1.0, with max_tail_se)
    cannot be re-checked: it is a stale audit, a gate failure (exit 1), whatever policy."""
    report = json.loads((scored / "report.json").read_text("utf-8"))
    report["schema_version"] = "1.0"
    report["audit"]["config"]["gate"]["max_tail_se"] = 0.05
    report["summary"]["tail_se"] = 0.03
    report["decision"] = {"status": "pass", "violations": [], "warnings": []}
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report), "utf-8")
    for args in ([], ["--config", str(write_config(LENIENT))]):
        assert main(["check", str(path), *args]) == 1
        out = capsys.readouterr().out
        assert "FAIL (audit not accepted)" in out
        assert "report schema 1.0" in out and "run a new audit" in out


def test_check_corrupt_report_subprocess(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text("{truncated", "utf-8")
    result = _run(["check", str(path)])
    assert result.returncode == 2
    _assert_one_line_error(result.stderr, "report.json")


# --- policy -------------------------------------------------------------------------------


def test_policy_prints_the_default_policy_and_its_hash(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(default_policy_text())
    assert out.strip().splitlines()[-1] == f"# policy_sha256: {default_config().sha256()}"
    assert parse_config(yaml.safe_load(out)) == default_config()


def test_policy_subprocess_matches_in_process() -> None:
    script, module = _run(["policy"]), _run(["policy"], module=True)
    assert script.returncode == module.returncode == 0
    assert script.stdout == module.stdout
    assert default_config().sha256() in script.stdout


def test_policy_output_is_a_usable_config(tmp_path: Path, dataset: Dataset) -> None:
    """`privacy-gate policy > policy.yaml` then `score --config policy.yaml` behaves
    like the default policy (the hash comment is a YAML comment)."""
    path = tmp_path / "policy.yaml"
    path.write_text(_run(["policy"]).stdout, "utf-8")
    result = _run(_score_args(dataset, tmp_path / "out", "--config", str(path), "--no-plots"))
    assert result.returncode == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text("utf-8"))
    assert report["audit"]["policy_sha256"] == default_config().sha256()


def test_version_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    with pytest.raises(SystemExit) as info:
        main(["score", "--signals", "x.npz"])
    assert info.value.code == 2
    capsys.readouterr()


def test_second_dataset_with_other_seed_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keyed: None, make_dataset: Any
) -> None:
    """No target signals: the default policy's aggregate rules fail closed (exit 1)."""
    data = make_dataset(tmp_path / "data", seed=3, target=False, k=48)
    out = tmp_path / "out"
    assert main(_score_args(data, out, "--no-plots")) == 1
    report = json.loads((out / "report.json").read_text("utf-8"))
    assert report["aggregate"] is None
    rules = {v["rule"] for v in report["decision"]["violations"]}
    assert "max_aggregate_auc" in rules
    assert not rules & {"noise_floor", "max_detectable_auc"}  # K = 48 is enough here
    capsys.readouterr()
