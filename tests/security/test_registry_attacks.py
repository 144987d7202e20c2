"""Attacks with ordinary client access on a real gated ``mlflow server`` (issue 23).

The attacker has REST, MlflowClient and the artifact proxy, no database or storage
credentials. Each route that once put an unaudited model behind ``champion`` is tried
again: the same weights with another forward, a pickle payload, forged or malformed
reports, hostile version strings. Every test ends with `final_state_allowed`.
"""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("torch")

import mlflow
import mlflow.pytorch
import requests
import torch
from gated_registry import MODEL, REQUEST_TIMEOUT_S, Gated, register, rest_alias, start_gated_server
from invariants import final_state_allowed
from logged_models import log_pt2

from privacy_gate.report import SCHEMA_VERSION, canonical_json
from privacy_gate.signing import public_key_fingerprint


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gated]:
    with start_gated_server(tmp_path_factory.mktemp("attacks")) as server:
        yield server


@pytest.fixture(scope="module")
def audited(gated: Gated) -> tuple[str, str]:
    """A passing, signed audit of a real network: (its version, its run id)."""
    torch.manual_seed(0)
    version = register(gated, model=torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU()))
    return version, str(gated.client.get_model_version(MODEL, version).run_id)


def _audited_sources(gated: Gated, *versions: str) -> set[str]:
    return {str(gated.client.get_model_version(MODEL, v).source) for v in versions}


def _register_as(gated: Gated, info: Any, run_id: str) -> str:
    """The attacker's model registered under the passing audit's run (MLflow accepts any
    run id with any source)."""
    version = gated.client.create_model_version(
        MODEL, info.model_uri, run_id=run_id, model_id=info.model_id
    )
    return str(version.version)


class ConstantForward(torch.nn.Sequential):
    """The audited network's parameters, another forward: the state_dict digest is the
    same, the model is not."""

    def forward(self, x: Any) -> Any:
        return torch.zeros(x.shape[0], 8) + 0.0 * super().forward(x)


def test_same_weights_with_another_forward_is_refused(
    gated: Gated, audited: tuple[str, str]
) -> None:
    version, run_id = audited
    torch.manual_seed(0)  # the very same parameters as the audited network
    swapped = ConstantForward(torch.nn.Linear(4, 8), torch.nn.ReLU())
    mlflow.set_experiment("attacker")
    with mlflow.start_run():
        info = log_pt2(swapped)
    fake = _register_as(gated, info, run_id)
    response = rest_alias(gated, fake)
    assert response.status_code == 403, response.text
    assert "files are not the audited ones" in response.json()["message"]
    assert final_state_allowed(gated.client, _audited_sources(gated, version)) == []


class Payload(torch.nn.Linear):
    """Pickles to a call that writes a marker file when unpickled."""

    marker = ""

    def __reduce__(self) -> Any:
        code = f"open({self.marker!r}, 'w').write('ran')"
        return (exec, (code,))


def test_a_pickle_payload_never_runs_on_the_server(
    gated: Gated, audited: tuple[str, str], tmp_path: Path
) -> None:
    version, run_id = audited
    marker = tmp_path / "payload-ran"
    evil = Payload(4, 8)
    evil.marker = str(marker)
    mlflow.set_experiment("attacker")
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(
            evil, name="model", serialization_format="pickle", pip_requirements=["torch"]
        )
    assert not marker.exists()  # saving pickles the call; nothing ran yet
    fake = _register_as(gated, info, run_id)
    response = rest_alias(gated, fake)
    assert response.status_code == 403
    assert not marker.exists(), "the server unpickled the client's model"
    assert final_state_allowed(gated.client, _audited_sources(gated, version)) == []


def test_the_audited_model_itself_is_promoted(gated: Gated, audited: tuple[str, str]) -> None:
    version, _ = audited
    assert rest_alias(gated, version).status_code == 200
    tags = gated.client.get_model_version(MODEL, version).tags
    assert tags["privacy_gate.status"] == "pass"
    assert final_state_allowed(gated.client, _audited_sources(gated, version)) == []


# ------------------------------------------------------------------ malformed reports


def _signed_raw(gated: Gated, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with a genuine signature over its canonical JSON: what a buggy auditing
    side could write. The gate must still refuse it with a reason, never crash."""
    value = base64.b64encode(gated.private.sign(canonical_json(body))).decode()
    signature = {
        "algorithm": "ed25519",
        "public_key_sha256": public_key_fingerprint(gated.private),
        "value": value,
    }
    return {**body, "signature": signature}


def _version_with_report(gated: Gated, text: str | bytes) -> str:
    """A new run holding ``text`` as its privacy_gate/report.json, registered."""
    mlflow.set_experiment("malformed")
    with mlflow.start_run() as run:
        info = log_pt2(torch.nn.Linear(3, 1))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "report.json"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        gated.client.log_artifact(run.info.run_id, str(path), "privacy_gate")
    return _register_as(gated, info, run.info.run_id)


MALFORMED = {
    "audit is a list": ('{"schema_version": "2.2", "audit": []}', "signature"),
    "audit is null": ('{"schema_version": "2.2", "audit": null}', "signature"),
    "audit is a string": ('{"audit": "x"}', "signature"),
    "a list-wrapped report": ('[{"audit": {}}]', "JSON array, not an object"),
    "null": ("null", "JSON null, not an object"),
    "NaN": ('{"audit": {"x": NaN}}', "non-finite number NaN"),
    "Infinity": ('{"audit": {"x": -Infinity}}', "non-finite number -Infinity"),
    "overflow": ('{"audit": {"x": 1e400}}', "overflows to infinity"),
    "duplicate keys": ('{"audit": {}, "audit": {"run_id": "x"}}', "twice in one object"),
    "deep nesting": ("[" * 5000 + "]" * 5000, "nested too deeply"),
    "not UTF-8": (b'{"audit": "\xff\xfe"}', "not UTF-8"),
    "not JSON": ("{audit: pass}", "not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_report_is_403_with_its_reason(gated: Gated, case: str) -> None:
    text, reason = MALFORMED[case]
    version = _version_with_report(gated, text)
    response = rest_alias(gated, version)
    assert response.status_code == 403, response.text
    assert reason in response.json()["message"], response.json()["message"]


def test_a_huge_report_is_refused_unread(gated: Gated) -> None:
    version = _version_with_report(gated, "{" + " " * (33 * 1024 * 1024) + "}")
    response = rest_alias(gated, version)
    assert response.status_code == 403
    assert "over the" in response.json()["message"]


@pytest.mark.parametrize(
    "body",
    [
        {"schema_version": "2.2", "audit": []},
        {"schema_version": SCHEMA_VERSION, "audit": None, "decision": "pass"},
        {"schema_version": SCHEMA_VERSION, "audit": {"run_id": 7}, "summary": [], "decision": {}},
    ],
)
def test_a_signed_report_of_wrong_types_is_403_naming_the_field(
    gated: Gated, body: dict[str, Any]
) -> None:
    version = _version_with_report(gated, json.dumps(_signed_raw(gated, body)))
    response = rest_alias(gated, version)
    assert response.status_code == 403, response.text
    assert "malformed" in response.json()["message"] or "lacks" in response.json()["message"]


def test_hostile_version_strings_are_400_and_not_echoed(gated: Gated) -> None:
    for version in ("1\n", "1<script>", "-1", "1.0", "9" * 40):
        response = requests.post(
            f"{gated.server.tracking_uri}/api/2.0/mlflow/registered-models/alias",
            json={"name": MODEL, "alias": "champion", "version": version},
            timeout=REQUEST_TIMEOUT_S,
        )
        assert 400 <= response.status_code < 500, (version, response.status_code)
        assert "<script>" not in response.text and "\\n" not in response.json()["message"]


def test_a_copy_of_a_promoted_version_works_without_its_verdict(
    gated: Gated, audited: tuple[str, str]
) -> None:
    version, _ = audited
    assert rest_alias(gated, version).status_code == 200
    source = gated.client.get_model_version(MODEL, version)
    copy = gated.client.copy_model_version(f"models:/{MODEL}/{version}", "copied-model")
    tags = gated.client.get_model_version("copied-model", copy.version).tags
    assert not any(k.startswith("privacy_gate.") for k in tags)
    assert source.tags["privacy_gate.status"] == "pass"
    assert final_state_allowed(gated.client, _audited_sources(gated, version)) == []


def test_the_server_logs_what_it_protects(gated: Gated) -> None:
    log = gated.server.log_text()
    assert "privacy-gate registry store active" in log
    assert "protected aliases: champion, production" in log
    assert public_key_fingerprint(gated.private) in log
