"""The bytes an audit binds (`privacy_gate.model_files`) and the verifier's checks on them
(`privacy_gate.mlflow.verification`), with strict report JSON and signatures that have one
meaning. Pure: no MLflow, no torch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from privacy_gate import audit, make_signals, records_from_columns
from privacy_gate.config import parse_config
from privacy_gate.errors import InputError, ReportError
from privacy_gate.mlflow.registry_settings import GateSettings, protected_aliases
from privacy_gate.mlflow.verification import audit_refusals
from privacy_gate.model_files import (
    PICKLE,
    PT2,
    ModelFile,
    ModelFiles,
    differences,
    manifest_of,
)
from privacy_gate.report import parse_report_json
from privacy_gate.signing import (
    SignatureError,
    generate_keypair,
    load_private_key,
    load_public_key,
    sign_report,
    verify_report,
)

RUN = "a" * 32


def _model_dir(root: Path, weights: bytes = b"program") -> Path:
    (root / "data").mkdir(parents=True)
    (root / "MLmodel").write_text("flavors: {}\n")
    (root / "data" / "model.pt2").write_bytes(weights)
    return root


def test_the_manifest_is_every_file_hashed_as_bytes(tmp_path: Path) -> None:
    files = manifest_of(_model_dir(tmp_path / "m"))
    assert files.format == PT2
    assert [f.path for f in files.files] == ["MLmodel", "data/model.pt2"]
    entry = files.files[1]
    assert entry.sha256 == hashlib.sha256(b"program").hexdigest()
    assert entry.size == len(b"program")
    assert ModelFiles.from_dict(files.to_dict()) == files


def test_differences_name_changed_missing_and_added_files(tmp_path: Path) -> None:
    audited = manifest_of(_model_dir(tmp_path / "a"))
    served = _model_dir(tmp_path / "b", b"another forward")
    (served / "MLmodel").unlink()
    (served / "extra.py").write_text("import os")
    found = differences(audited, manifest_of(served))
    assert found[0] == "MLmodel: missing"
    assert found[1].startswith("data/model.pt2: changed")
    assert found[2] == "extra.py: not in the audited model"
    assert differences(audited, manifest_of(_model_dir(tmp_path / "c"))) == []


def test_pickled_models_and_links_are_recognised(tmp_path: Path) -> None:
    root = _model_dir(tmp_path / "m")
    (root / "data" / "model.pth").write_bytes(b"\x80\x04pickle")
    assert manifest_of(root).format == PICKLE
    (root / "link").symlink_to(root / "MLmodel")
    with pytest.raises(InputError, match="symbolic link"):
        manifest_of(root)


@pytest.mark.parametrize(
    "value",
    [
        {"format": "pt2", "files": [{"path": "../etc/passwd", "sha256": "0" * 64, "size": 1}]},
        {"format": "pt2", "files": [{"path": "/abs", "sha256": "0" * 64, "size": 1}]},
        {"format": "pt2", "files": [{"path": "a", "sha256": "xyz", "size": 1}]},
        {"format": "pt2", "files": [{"path": "a", "sha256": "0" * 64, "size": -1}]},
        {"format": "pt2", "files": [{"path": "a", "sha256": "0" * 64, "size": True}]},
        {"format": "zip", "files": [{"path": "a", "sha256": "0" * 64, "size": 1}]},
        {"format": "pt2", "files": []},
        {"format": "pt2", "files": [{"path": "a", "sha256": "0" * 64, "size": 1}] * 2},
        [],
    ],
)
def test_a_malformed_signed_manifest_is_refused(value: Any) -> None:
    with pytest.raises(ReportError, match=r"audit\.model_files"):
        ModelFiles.from_dict(value)


# ------------------------------------------------------------------ strict JSON


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"x": NaN}', "non-finite number NaN"),
        ('{"x": 1e400}', "overflows to infinity"),
        ('{"x": -1e999}', "overflows to infinity"),
        ('{"a": 1, "a": 2}', "twice in one object"),
        ("[" * 100 + "]" * 100, "nested too deeply"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_report_json_has_one_meaning(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_report_json(text)


def test_ordinary_json_still_parses() -> None:
    assert parse_report_json('{"a": [1, 2.5, null, {"b": "c"}]}') == {
        "a": [1, 2.5, None, {"b": "c"}]
    }


# ------------------------------------------------------------------ signed reports


@pytest.fixture(scope="module")
def keys() -> tuple[Any, Any]:
    private, public = generate_keypair()
    return load_private_key(private), load_public_key(public)


@pytest.fixture(scope="module")
def passing() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    k, n = 8, 40
    masks = np.argsort(rng.random((k, n)), axis=0) < k // 2
    records = records_from_columns([f"r{i}" for i in range(n)], [f"p{i}" for i in range(n)], {})
    policy = parse_config({"gate": {"max_patient_auc": 1.0}})
    result = audit(make_signals(rng.standard_normal((k, n)), masks), records, policy)
    return result.report.to_dict()


def _files(weights: bytes = b"program", fmt: str = PT2) -> ModelFiles:
    digest = hashlib.sha256(weights).hexdigest()
    return ModelFiles(fmt, (ModelFile("data/model.pt2", digest, len(weights)),))


def test_a_signed_null_cannot_become_infinity(passing: dict[str, Any], keys: Any) -> None:
    signed = sign_report(passing, keys[0], run_id=RUN, model_sha256=None, model_files=_files())
    verify_report(signed, keys[1])
    text = json.dumps(signed)
    assert "null" in text  # a figure that is not finite is written (and signed) as null
    tampered = text.replace("null", "1e400", 1)
    with pytest.raises(ValueError, match="overflows"):
        parse_report_json(tampered)  # the reader refuses it ...
    with pytest.raises(SignatureError, match="non-finite"):
        verify_report(json.loads(tampered), keys[1])  # ... and so does the verifier


def test_the_verifier_compares_the_files(passing: dict[str, Any], keys: Any) -> None:
    signed = sign_report(passing, keys[0], run_id=RUN, model_sha256=None, model_files=_files())
    check = {"public_key": keys[1], "run_id": RUN}
    assert audit_refusals(signed, model_files=_files(), **check) == []
    changed = audit_refusals(signed, model_files=_files(b"other forward"), **check)
    assert len(changed) == 1 and "data/model.pt2: changed" in changed[0]
    unread = audit_refusals(signed, model_files=None, **check)
    assert unread == ["the files of this model version could not be read"]
    extra = ModelFiles(PT2, (*_files().files, ModelFile("x.py", "0" * 64, 1)))
    added = audit_refusals(signed, model_files=extra, **check)
    assert "1 file(s) that are not in the audited model" in added[0]
    assert "x.py" not in added[0]  # the server does not read out a client's listing


def test_an_audit_of_the_weights_only_needs_a_rerun(passing: dict[str, Any], keys: Any) -> None:
    signed = sign_report(passing, keys[0], run_id=RUN, model_sha256="0" * 64)
    reasons = audit_refusals(signed, public_key=keys[1], run_id=RUN, model_files=_files())
    assert len(reasons) == 1 and "binds only the weights' state_dict" in reasons[0]
    assert "re-run the audit" in reasons[0]


def test_pickle_models_are_refused_unless_allowed(passing: dict[str, Any], keys: Any) -> None:
    pickled = _files(fmt=PICKLE)
    signed = sign_report(passing, keys[0], run_id=RUN, model_sha256=None, model_files=pickled)
    check = {"public_key": keys[1], "run_id": RUN, "model_files": pickled}
    refused = audit_refusals(signed, **check)
    assert len(refused) == 1 and "'pickle' format" in refused[0]
    assert audit_refusals(signed, allow_pickle=True, **check) == []


@pytest.mark.parametrize("value", [[], "x", 3, True, [{"audit": {}}]])
def test_any_json_value_is_a_reason_never_a_crash(value: Any, keys: Any) -> None:
    reasons = audit_refusals(value, public_key=keys[1], run_id=RUN, model_files=None)
    assert len(reasons) == 1 and "malformed" in reasons[0]


# ------------------------------------------------------------------ settings


def test_protected_aliases_fail_closed() -> None:
    assert protected_aliases({}) == {"champion", "production"}
    assert protected_aliases({"PRIVACY_GATE_PROTECTED_ALIASES": " Champion ,prod-eu"}) == {
        "champion",
        "prod-eu",
    }
    for bad in ("", " , ", "champion;prod", "cham pion"):
        with pytest.raises(InputError, match="PRIVACY_GATE_PROTECTED_ALIASES"):
            protected_aliases({"PRIVACY_GATE_PROTECTED_ALIASES": bad})


def test_settings_name_what_is_enforced(tmp_path: Path) -> None:
    _, public = generate_keypair()
    (tmp_path / "k.pub").write_bytes(public)
    settings = GateSettings.from_environment({"PRIVACY_GATE_PUBLIC_KEY": str(tmp_path / "k.pub")})
    banner = settings.banner("sqlite:///x.db")
    assert settings.public_key_fingerprint is not None
    assert settings.public_key_fingerprint in banner
    assert "protected aliases: champion, production" in banner
    assert "pickle-format models: refused" in banner
    unset = GateSettings.from_environment({}).banner("sqlite:///x.db")
    assert "NONE (PRIVACY_GATE_PUBLIC_KEY is not set)" in unset
    with pytest.raises(InputError, match="PRIVACY_GATE_PROMOTION_POLICY_SHA256"):
        GateSettings.from_environment({"PRIVACY_GATE_PROMOTION_POLICY_SHA256": "abc"})
    with pytest.raises(InputError, match="PRIVACY_GATE_ALLOW_PICKLE_MODELS"):
        GateSettings.from_environment({"PRIVACY_GATE_ALLOW_PICKLE_MODELS": "maybe"})
