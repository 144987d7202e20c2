"""Tampering after promotion, and the server's configuration (issue 23).

- Without the artifact guard, any client can ``PUT`` over the champion's files through the
  server's own artifact API. ``privacy-gate verify`` then exits 1 naming the file and the
  gated registry takes the alias away; `privacy_gate.mlflow.load_model` refuses before it
  deserialises anything; a re-promotion is refused.
- With ``--app-name privacy-gate`` (the production configuration) such writes are 403.
- An empty protected-alias list stops the server; a good one is logged at start-up.
"""

from __future__ import annotations

import subprocess
import sys
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
from gated_registry import MODEL, Gated, register, rest_alias, start_gated_server
from invariants import final_state_allowed
from logged_models import input_example
from mlflow.exceptions import MlflowException

from privacy_gate.cli import main
from privacy_gate.mlflow import load_model
from privacy_gate.mlflow.consume import TamperedModelError
from privacy_gate.signing import load_public_key

GUARD = ["--app-name", "privacy-gate"]


def _champion(gated: Gated) -> tuple[str, str]:
    """A promoted champion: (its version, the proxy path of its model.pt2)."""
    torch.manual_seed(1)
    version = register(gated, model=torch.nn.Linear(4, 2))
    assert rest_alias(gated, version).status_code == 200
    location = gated.client.get_model_version_download_uri(MODEL, version)
    relative = location.removeprefix("mlflow-artifacts:").lstrip("/")
    return version, f"{relative}/data/model.pt2"


def _proxy(gated: Gated, path: str) -> str:
    return f"{gated.server.tracking_uri}/api/2.0/mlflow-artifacts/artifacts/{path}"


def _verify(gated: Gated, uri: str, *extra: str) -> int:
    return main(
        [
            "verify",
            uri,
            "--tracking-uri",
            gated.server.tracking_uri,
            "--public-key",
            str(gated.server.log_path.parent.parent / "audit.pub.pem"),
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gated]:
    """A gated registry WITHOUT the artifact guard: the proxy accepts any write."""
    with start_gated_server(tmp_path_factory.mktemp("open")) as gated:
        yield gated


def test_an_overwritten_champion_is_caught_where_it_is_consumed(
    open_server: Gated, capsys: pytest.CaptureFixture[str]
) -> None:
    gated = open_server
    version, path = _champion(gated)
    uri = f"models:/{MODEL}@champion"
    public = load_public_key(gated.server.log_path.parent.parent / "audit.pub.pem")
    assert _verify(gated, uri) == 0
    assert isinstance(load_model(uri, public_key=public, client=gated.client), torch.nn.Module)

    put = requests.put(_proxy(gated, path), data=b"not the audited program", timeout=30)
    assert put.status_code == 200  # the attack itself works on an unguarded server

    with pytest.raises(TamperedModelError, match=r"data/model\.pt2"):
        load_model(uri, public_key=public, client=gated.client)
    capsys.readouterr()
    assert _verify(gated, uri, "--no-revoke") == 1
    out = capsys.readouterr().out
    assert "NOT VERIFIED" in out and "data/model.pt2: changed" in out
    assert gated.client.get_model_version_by_alias(MODEL, "champion").version == version

    assert _verify(gated, uri) == 1  # ... and the alias is taken away
    assert "was removed" in capsys.readouterr().out
    with pytest.raises(MlflowException):
        gated.client.get_model_version_by_alias(MODEL, "champion")
    tags = gated.client.get_model_version(MODEL, version).tags
    assert tags["privacy_gate.status"] == "refused"
    assert "files are not the audited ones" in tags["privacy_gate.refusal"]
    assert rest_alias(gated, version).status_code == 403  # re-promotion refused
    assert final_state_allowed(gated.client, set()) == []


def test_a_refused_re_promotion_removes_the_protected_alias(open_server: Gated) -> None:
    gated = open_server
    version, path = _champion(gated)
    requests.put(_proxy(gated, path), data=b"swapped", timeout=30).raise_for_status()
    response = rest_alias(gated, version)
    assert response.status_code == 403
    assert "champion" not in gated.client.get_model_version(MODEL, version).aliases
    assert final_state_allowed(gated.client, set()) == []


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gated]:
    """The production configuration: the gated registry and the artifact guard app."""
    with start_gated_server(tmp_path_factory.mktemp("guarded"), extra_args=GUARD) as gated:
        yield gated


def test_the_guard_refuses_every_write_to_a_registered_version(guarded: Gated) -> None:
    gated = guarded
    version, path = _champion(gated)
    base = gated.server.tracking_uri
    folder = path.rsplit("/", 2)[0]
    attempts = {
        "PUT file": requests.put(_proxy(gated, path), data=b"x", timeout=30),
        "PUT new file": requests.put(_proxy(gated, f"{folder}/extra.py"), data=b"x", timeout=30),
        "PUT ajax": requests.put(
            f"{base}/ajax-api/2.0/mlflow-artifacts/artifacts/{path}", data=b"x", timeout=30
        ),
        "DELETE file": requests.delete(_proxy(gated, path), timeout=30),
        "DELETE parent": requests.delete(_proxy(gated, folder.split("/")[0]), timeout=30),
        "multipart": requests.post(
            f"{base}/api/2.0/mlflow-artifacts/mpu/create/{path}",
            json={"path": path, "num_parts": 1},
            timeout=30,
        ),
        "dot segments": requests.put(
            _proxy(gated, path.replace("/data/", "/data/./")), data=b"x", timeout=30
        ),
        # MLflow decodes a path up to 10 times before writing: %25256D is 'm' to it
        "encoded thrice": requests.put(
            _proxy(gated, path.replace("/models/", "/%25256Dodels/")), data=b"x", timeout=30
        ),
        "encoded slash": requests.put(
            _proxy(gated, path.replace("/data/", "%252Fdata%252F")), data=b"x", timeout=30
        ),
    }
    for what, response in attempts.items():
        assert response.status_code == 403, (what, response.status_code, response.text[:200])
        message = response.json()["message"]
        assert "registered model" in message or "could not check" in message, what
    assert _verify(gated, f"models:/{MODEL}@champion") == 0
    # Unregistered artifacts are written as before.
    free = requests.put(_proxy(gated, "0/scratch/notes.txt"), data=b"ok", timeout=30)
    assert free.status_code == 200
    assert (
        final_state_allowed(
            gated.client, {str(gated.client.get_model_version(MODEL, version).source)}
        )
        == []
    )


def test_the_ui_upload_route_cannot_overwrite_a_run_registered_model(
    guarded: Gated, tmp_path: Path
) -> None:
    """A version registered from a run's own folder (``runs:/<run>/model``): the UI's
    upload route writes into runs, and is refused there too."""
    gated = guarded
    model = torch.nn.Linear(4, 2)
    mlflow.pytorch.save_model(model, tmp_path / "model", input_example=input_example(model),
                              serialization_format="pt2", pip_requirements=["torch"])  # fmt: skip
    run_id = gated.client.create_run(gated.client.create_experiment("run-models")).info.run_id
    gated.client.log_artifacts(run_id, str(tmp_path / "model"), "model")
    gated.client.create_model_version(MODEL, f"runs:/{run_id}/model", run_id=run_id)
    upload = f"{gated.server.tracking_uri}/ajax-api/2.0/mlflow/upload-artifact"
    refused = requests.post(
        upload, params={"run_uuid": run_id, "path": "model/MLmodel"}, data=b"x", timeout=30
    )
    assert refused.status_code == 403, refused.text[:200]
    allowed = requests.post(
        upload, params={"run_uuid": run_id, "path": "notes/n.txt"}, data=b"x", timeout=30
    )
    assert allowed.status_code == 200, allowed.text[:200]


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize("aliases", ["", " , ", "champion;prod"])
def test_an_empty_or_malformed_alias_list_stops_the_server(tmp_path: Path, aliases: str) -> None:
    with (
        pytest.raises(RuntimeError, match="PRIVACY_GATE_PROTECTED_ALIASES"),
        start_gated_server(tmp_path, env={"PRIVACY_GATE_PROTECTED_ALIASES": aliases}),
    ):
        pass  # pragma: no cover - the server must not start


def test_the_guard_app_is_an_mlflow_app_plugin() -> None:
    listed = subprocess.run(
        [sys.executable, "-c", "from mlflow.utils.plugins import get_entry_points as g; "
         "print([e.name for e in g('mlflow.app')])"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "privacy-gate" in listed.stdout


def test_a_slow_upload_cannot_finish_over_a_model_registered_meanwhile(guarded: Gated) -> None:
    """The upload starts while the audited model is not yet registered; it is registered
    and promoted before the body ends. The guard checks again once the body is complete."""
    import json
    import threading

    from gated_registry import report as passing_report
    from logged_models import log_pt2
    from mlflow.tracking import MlflowClient

    from privacy_gate.mlflow.audited_model import logged_model_files
    from privacy_gate.signing import sign_report

    gated = guarded
    torch.manual_seed(5)
    model = torch.nn.Linear(4, 2)
    mlflow.set_tracking_uri(gated.server.tracking_uri)  # the suite resets it after each test
    mlflow.set_registry_uri(gated.server.tracking_uri)
    mlflow.set_experiment("slow-upload")
    with mlflow.start_run() as run:
        info = log_pt2(model)
    files = logged_model_files(MlflowClient(gated.server.tracking_uri), info.model_uri)
    signed = sign_report(passing_report(), gated.private, run_id=run.info.run_id,
                         model_sha256=None, model_files=files)  # fmt: skip
    gated.client.log_text(run.info.run_id, json.dumps(signed), "privacy_gate/report.json")
    location = gated.client.get_logged_model(info.model_id).artifact_location
    target = f"{location.removeprefix('mlflow-artifacts:').lstrip('/')}/data/model.pt2"
    release = threading.Event()

    def body() -> Any:
        yield b"not the audited "
        release.wait(60)
        yield b"program"

    answers: list[requests.Response] = []
    upload = threading.Thread(
        target=lambda: answers.append(requests.put(_proxy(gated, target), data=body(), timeout=120))
    )
    upload.start()
    version = gated.client.create_model_version(
        MODEL, info.model_uri, run_id=run.info.run_id, model_id=info.model_id
    ).version
    assert rest_alias(gated, str(version)).status_code == 200
    release.set()
    upload.join(120)
    assert answers[0].status_code == 403, answers[0].text[:200]
    assert _verify(gated, f"models:/{MODEL}/{version}") == 0


def test_a_version_naming_its_files_through_runs_is_not_promoted(guarded: Gated) -> None:
    """``runs:/R/model`` also serves the newest logged model named 'model' in run R, which
    anyone may add later: such a version is refused, with the way to register instead."""
    gated = guarded
    version = register(gated)
    run_id = gated.client.get_model_version(MODEL, version).run_id
    indirect = gated.client.create_model_version(MODEL, f"runs:/{run_id}/model", run_id=run_id)
    response = rest_alias(gated, str(indirect.version))
    assert response.status_code == 403
    assert "indirectly" in response.json()["message"]


@pytest.mark.parametrize("alias", ["Champion", "chámpion", "ＣＨＡＭＰＩＯＮ"])
def test_lookalike_protected_aliases_are_gated(guarded: Gated, alias: str) -> None:
    """A case- or accent-insensitive database collation (MySQL's default) would match these
    with 'champion': they are gated as 'champion' is."""
    version = register(guarded, status=None)
    response = requests.post(
        f"{guarded.server.tracking_uri}/api/2.0/mlflow/registered-models/alias",
        json={"name": MODEL, "alias": alias, "version": version},
        timeout=60,
    )
    assert response.status_code in (400, 403), response.text[:200]
    tag = requests.post(
        f"{guarded.server.tracking_uri}/api/2.0/mlflow/model-versions/set-tag",
        json={"name": MODEL, "version": version, "key": "privacy_gäte.status", "value": "pass"},
        timeout=60,
    )
    assert tag.status_code == 403
