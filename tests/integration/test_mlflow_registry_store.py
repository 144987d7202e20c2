"""The privacy-gate registry store against a real ``mlflow server`` (no mocks).

Every server test runs twice: with ``--backend-store-uri sqlite:///...
--registry-store-uri privacygate+sqlite:///...``, and with both on one fresh PostgreSQL
database (``postgresql://...``, ``privacygate+postgresql://...``; skipped where
PostgreSQL or its driver is missing, see postgres_server.py); so do the in-process
`local_store` tests. The server has the audit public key; tiny torch models are logged,
registered and promoted through the Python client and raw REST calls (helpers in
gated_registry.py). Signed reports are uploaded as the run's ``privacy_gate/report.json``.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("torch")

from gated_registry import MODEL, Gated, start_gated_server
from gated_registry import register as _register
from gated_registry import rest_alias as _rest_alias
from mlflow.exceptions import MlflowException

BACKENDS = ["sqlite", "postgresql"]


def _backend_uri(request: pytest.FixtureRequest) -> str | None:
    """None for SQLite (the server's own file), a fresh PostgreSQL database otherwise
    (the test skips where PostgreSQL or its driver is missing)."""
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("postgres_server").create_database())


@pytest.fixture(scope="module", params=BACKENDS)
def gated(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Gated]:
    """A gated server on SQLite, then on PostgreSQL (tracking and registry on one database)."""
    backend = _backend_uri(request)
    with start_gated_server(
        tmp_path_factory.mktemp(f"gated_registry_{request.param}"), backend_store_uri=backend
    ) as gated:
        yield gated


def _assert_refused(gated: Gated, version: str, reason: str) -> None:
    with pytest.raises(MlflowException) as caught:
        gated.client.set_registered_model_alias(MODEL, "champion", version)
    assert caught.value.error_code == "PERMISSION_DENIED"
    assert reason in caught.value.message
    response = _rest_alias(gated, version)
    assert response.status_code == 403
    body = response.json()
    assert body["error_code"] == "PERMISSION_DENIED"
    assert reason in body["message"]
    refused = gated.client.get_model_version(MODEL, version)
    assert "champion" not in refused.aliases
    # The registry records its own verdict: why the version was kept out.
    assert refused.tags["privacy_gate.status"] == "refused"
    assert refused.tags["privacy_gate.verified_by"] == "registry-store"
    assert reason in refused.tags["privacy_gate.refusal"]


def test_passing_signed_audit_is_promoted(gated: Gated) -> None:
    version = _register(gated)
    gated.client.set_registered_model_alias(MODEL, "champion", version)
    assert gated.client.get_model_version_by_alias(MODEL, "champion").version == version
    tags = gated.client.get_model_version(MODEL, version).tags
    assert tags["privacy_gate.status"] == "pass"
    assert tags["privacy_gate.verified_by"] == "registry-store"
    assert tags["privacy_gate.promoted_alias"] == "champion"
    # Raw REST promotion of the same audited version also passes.
    assert _rest_alias(gated, version, "production").status_code == 200


def test_unaudited_version_is_refused(gated: Gated) -> None:
    _assert_refused(gated, _register(gated, status=None), "no privacy audit was found")


def test_failing_audit_is_refused(gated: Gated) -> None:
    _assert_refused(gated, _register(gated, status="fail"), "the audit did not pass")


def test_signed_pass_of_an_outdated_schema_is_refused(gated: Gated) -> None:
    # A schema-1 audit answered rules (max_tail_se, the SE-at-estimate test) that no
    # longer exist: even signed and passing, it is stale.
    _assert_refused(gated, _register(gated, schema="1.0"), "report schema 1.0")


def test_report_signed_by_another_key_is_refused(gated: Gated) -> None:
    version = _register(gated, key=gated.other_private)
    _assert_refused(gated, version, "the audit signature is not valid")


def test_report_of_another_run_is_refused(gated: Gated) -> None:
    version = _register(gated, report_run="0" * 32)
    _assert_refused(gated, version, "the audit belongs to run")


def test_changed_weights_are_refused(gated: Gated) -> None:
    _assert_refused(gated, _register(gated, tamper=True), "files are not the audited ones")


def test_the_refusal_lists_every_reason_with_what_to_do(gated: Gated) -> None:
    """A failing audit whose weights also changed: the 403 names both reasons, the
    remedies (the DP-SGD remedy among them: the audit failed) and where the report is."""
    version = _register(gated, status="fail", tamper=True)
    _assert_refused(gated, version, "the audit did not pass")
    message = _rest_alias(gated, version).json()["message"]
    assert "files are not the audited ones" in message
    lines = message.splitlines()
    assert lines[0].endswith(":") and "What to do:" in lines
    assert any("DP-SGD recommendation" in line for line in lines)
    assert any("Register the model the audit logged" in line for line in lines)
    run_id = gated.client.get_model_version(MODEL, version).run_id
    assert f"Report: runs:/{run_id}/privacy_gate/report.html" in message


def test_audit_of_the_weights_only_is_refused_with_a_rerun_hint(gated: Gated) -> None:
    version = _register(gated, bind_files=False)  # an older audit: state_dict digest only
    _assert_refused(gated, version, "binds only the weights' state_dict")


def test_forged_verdict_tag_is_refused(gated: Gated) -> None:
    version = _register(gated, status=None)
    with pytest.raises(MlflowException) as caught:
        gated.client.set_model_version_tag(MODEL, version, "privacy_gate.status", "pass")
    assert caught.value.error_code == "PERMISSION_DENIED"
    assert "privacy_gate.status" in caught.value.message
    # Tags given at registration are refused the same way.
    run_id = gated.client.get_model_version(MODEL, version).run_id
    with pytest.raises(MlflowException) as at_create:
        gated.client.create_model_version(
            MODEL, f"runs:/{run_id}/model", run_id=run_id, tags={"privacy_gate.status": "pass"}
        )
    assert at_create.value.error_code == "PERMISSION_DENIED"
    assert "privacy_gate.status" not in gated.client.get_model_version(MODEL, version).tags
    _assert_refused(gated, version, "no privacy audit was found")
    # Ordinary tags still work.
    gated.client.set_model_version_tag(MODEL, version, "team", "ehr")


@pytest.mark.filterwarnings("ignore::FutureWarning")  # stages are deprecated, still served
def test_stage_transition_is_gated(gated: Gated) -> None:
    version = _register(gated, status="fail")
    with pytest.raises(MlflowException) as caught:
        gated.client.transition_model_version_stage(MODEL, version, "Production")
    assert caught.value.error_code == "PERMISSION_DENIED"
    assert "the audit did not pass" in caught.value.message
    assert gated.client.get_model_version(MODEL, version).current_stage == "None"
    gated.client.transition_model_version_stage(MODEL, version, "Archived")  # not protected
    passing = _register(gated)
    moved = gated.client.transition_model_version_stage(MODEL, passing, "Staging")
    assert moved.current_stage == "Staging"
    assert gated.client.get_model_version(MODEL, passing).current_stage == "Staging"
    tags = gated.client.get_model_version(MODEL, passing).tags
    assert tags["privacy_gate.promoted_alias"] == "stage:Staging"
    later = _register(gated)  # the stage's other versions archived, as MLflow does
    gated.client.transition_model_version_stage(
        MODEL, later, "staging", archive_existing_versions=True
    )
    assert gated.client.get_model_version(MODEL, later).current_stage == "Staging"
    assert gated.client.get_model_version(MODEL, passing).current_stage == "Archived"


def test_unprotected_alias_needs_no_audit(gated: Gated) -> None:
    version = _register(gated, status=None)
    gated.client.set_registered_model_alias(MODEL, "candidate", version)
    assert gated.client.get_model_version_by_alias(MODEL, "candidate").version == version


def test_server_runs_the_gated_registry(gated: Gated) -> None:
    log = gated.server.log_text()
    assert "Model registry functionality is unavailable" not in log
    assert "Failure attempting to register store" not in log
    assert "privacy-gate registry store failed to import" not in log


# ------------------------------------------------------------------ loud failures


def test_unknown_inner_scheme_is_loud(caplog: pytest.LogCaptureFixture) -> None:
    from privacy_gate.mlflow.registry_store import PrivacyGateRegistryStore

    with caplog.at_level(logging.ERROR), pytest.raises(MlflowException) as caught:
        PrivacyGateRegistryStore("privacygate+nosuchdb://x/y")
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "unsupported inner registry URI" in caught.value.message
    assert any(r.levelno == logging.ERROR for r in caplog.records)
    with pytest.raises(MlflowException, match="must not be a privacy-gate URI"):
        PrivacyGateRegistryStore("privacygate+privacygate+sqlite:///x.db")


def test_inner_uri_forms(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from privacy_gate.mlflow.registry_store import PrivacyGateRegistryStore, inner_uri

    assert inner_uri("privacygate+postgresql://u@h/db") == "postgresql://u@h/db"
    monkeypatch.setenv("PRIVACY_GATE_REGISTRY_INNER_URI", f"sqlite:///{tmp_path}/r.db")
    assert inner_uri("privacygate:") == f"sqlite:///{tmp_path}/r.db"
    monkeypatch.delenv("PRIVACY_GATE_REGISTRY_INNER_URI")
    with pytest.raises(MlflowException, match="PRIVACY_GATE_REGISTRY_INNER_URI"):
        PrivacyGateRegistryStore("privacygate:")


def test_import_failure_is_loud(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    name = "privacy_gate.mlflow.registry_store"
    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "privacy_gate.mlflow.server_audit", None)
    with caplog.at_level(logging.ERROR), pytest.raises(ImportError):
        importlib.import_module(name)
    assert any(
        r.levelno == logging.ERROR and "WITHOUT a model registry" in r.getMessage()
        for r in caplog.records
    )


def test_promote_against_the_gated_registry(gated: Gated) -> None:
    """`promote` works with the server-side gate: the alias is set once both agree, and
    the registry keeps its own verdict tags (client writes of them are denied)."""
    from privacy_gate.mlflow.promote import promote

    public = gated.private.public_key()
    passing = _register(gated)
    result = promote(MODEL, passing, "production", public_key=public, client=gated.client)
    assert result.allowed, result.reasons
    assert gated.client.get_model_version_by_alias(MODEL, "production").version == passing
    assert gated.client.get_model_version(MODEL, passing).tags["privacy_gate.verified_by"] == (
        "registry-store"
    )
    failing = _register(gated, status="fail")
    refused = promote(MODEL, failing, "production", public_key=public, client=gated.client)
    assert not refused.allowed and "the audit did not pass" in refused.reasons[0]
    # promote refused it itself, without asking the registry; its tag writes are denied
    assert "privacy_gate.status" not in gated.client.get_model_version(MODEL, failing).tags


# ------------------------------------------------------------------ fails closed


def _abstract_store_methods() -> set[str]:
    from mlflow.store.model_registry.abstract_store import AbstractStore

    return {
        n
        for n in dir(AbstractStore)
        if not n.startswith("_") and callable(getattr(AbstractStore, n))
    }


def test_every_registry_method_is_classified() -> None:
    """A method a new MLflow adds fails here until someone decides: forward, gate or refuse."""
    from privacy_gate.mlflow.registry_store import FORWARDED, GATED, PrivacyGateRegistryStore

    assert not FORWARDED & GATED
    assert _abstract_store_methods() == FORWARDED | GATED
    for name in GATED:  # implemented by the gate itself, never by forwarding
        assert name in vars(PrivacyGateRegistryStore), name


@pytest.fixture(params=BACKENDS)
def local_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Iterator[Any]:
    """The gated store in-process on a fresh SQLite or PostgreSQL registry, without an
    audit key."""
    from privacy_gate.mlflow.registry_store import PrivacyGateRegistryStore

    monkeypatch.delenv("PRIVACY_GATE_PUBLIC_KEY", raising=False)
    inner = _backend_uri(request) or f"sqlite:///{tmp_path}/registry.db"
    store = PrivacyGateRegistryStore(f"privacygate+{inner}")
    store.create_registered_model("m")
    store.create_model_version("m", source=str(tmp_path), run_id=None)
    try:
        yield store
    finally:
        store.inner.engine.dispose()  # its connections to the database


def test_an_unclassified_method_is_refused(
    local_store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner = type(local_store.inner)
    monkeypatch.setattr(inner, "promote_everything", lambda self: "promoted", raising=False)
    with pytest.raises(MlflowException) as caught:
        local_store.promote_everything()
    assert caught.value.error_code == "PERMISSION_DENIED"
    assert "'promote_everything'" in caught.value.message and "classified" in caught.value.message
    assert local_store.get_registered_model("m").name == "m"  # a forwarded read still works


def test_prompt_methods_cannot_bypass_the_gate(local_store: Any) -> None:
    # MLflow's default set_prompt_alias calls the store's own set_registered_model_alias,
    # and set_prompt_version_tag its set_model_version_tag: on the inner store, ungated.
    with pytest.raises(MlflowException) as caught:
        local_store.set_prompt_alias("m", "champion", 1)
    assert caught.value.error_code == "PERMISSION_DENIED"
    assert "champion" not in local_store.get_registered_model("m").aliases
    with pytest.raises(MlflowException, match="cannot be set or deleted by clients"):
        local_store.set_prompt_version_tag("m", 1, "privacy_gate.status", "pass")
    with pytest.raises(MlflowException, match="cannot be set or deleted by clients"):
        local_store.delete_prompt_version_tag("m", 1, "privacy_gate.status")
    # the refusal above is the registry's own record; the client's "pass" never landed
    assert local_store.get_model_version("m", 1).tags["privacy_gate.status"] == "refused"
    local_store.set_prompt_alias("m", "candidate", 1)  # unprotected aliases pass
    assert local_store.get_registered_model("m").aliases == {"candidate": 1}


def test_a_copied_version_does_not_inherit_the_verdict(local_store: Any) -> None:
    from mlflow.entities.model_registry import ModelVersionTag

    # as after a verified promotion (the inner store: clients cannot write this tag)
    local_store.inner.set_model_version_tag("m", 1, ModelVersionTag("privacy_gate.status", "pass"))
    local_store.set_model_version_tag("m", 1, ModelVersionTag("team", "cardiology"))
    source = local_store.get_model_version("m", 1)
    copy = local_store.copy_model_version(source, "m-copy")
    assert copy.tags == {"team": "cardiology"}
    assert local_store.get_model_version("m-copy", copy.version).tags == {"team": "cardiology"}


def test_a_refusal_is_recorded_and_cleared_by_a_later_pass(local_store: Any) -> None:
    from privacy_gate.mlflow import _compat

    with pytest.raises(MlflowException) as caught:
        local_store.set_registered_model_alias("m", "champion", 1)
    tags = local_store.get_model_version("m", 1).tags
    assert tags["privacy_gate.status"] == "refused"
    assert "no audit public key" in tags["privacy_gate.refusal"]
    # the answer lists the reasons and what to do; the tag keeps the reasons on one line
    message = caught.value.message
    assert message.startswith(tags["privacy_gate.refusal"].split(":", 1)[0])
    assert "no audit public key" in message and "\n" not in tags["privacy_gate.refusal"]
    assert "Registry operator: set PRIVACY_GATE_PUBLIC_KEY" in message
    pinned = _compat.version_identity(local_store.inner, "m", 1)
    assert local_store._commit(  # what a verified pass writes, in one transaction
        "m", 1, pinned, set_alias="champion",
        set_tags={"privacy_gate.status": "pass"}, delete_tags=["privacy_gate.refusal"],
    )  # fmt: skip
    tags = local_store.get_model_version("m", 1).tags
    assert tags["privacy_gate.status"] == "pass" and "privacy_gate.refusal" not in tags
    assert local_store.get_registered_model("m").aliases == {"champion": 1}


def test_a_verdict_never_lands_on_a_version_that_moved_in(local_store: Any, tmp_path: Path) -> None:
    """The TOCTOU of the rename race, step by step: the version is pinned, then renamed
    away and another model's version 1 renamed into its place; the commit is refused and
    writes nothing."""
    from privacy_gate.mlflow import _compat

    pinned = _compat.version_identity(local_store.inner, "m", 1)
    local_store.create_registered_model("other")
    local_store.create_model_version("other", source=str(tmp_path / "x"), run_id=None)
    local_store.rename_registered_model("m", "m-away")
    local_store.rename_registered_model("other", "m")
    committed = local_store._commit(
        "m", 1, pinned, set_alias="champion", set_tags={"privacy_gate.status": "pass"}
    )
    assert not committed
    assert local_store.get_registered_model("m").aliases == {}
    assert "privacy_gate.status" not in local_store.get_model_version("m", 1).tags
    # the pinned version itself, under its new name, can still get it
    assert local_store._commit(
        "m-away", 1, pinned, set_alias="champion", set_tags={"privacy_gate.status": "pass"}
    )
    assert local_store.get_registered_model("m-away").aliases == {"champion": 1}


def test_a_rename_inside_the_verdict_transaction_is_seen(
    local_store: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renames land after the transaction's first read of the version and before its
    re-read (here: while the stage moves). The re-read must see the database, not the
    session's cached row of the same (name, version): a CI run once committed a pass onto
    the version renamed in, because the cache answered."""
    import threading

    from privacy_gate.mlflow import _compat

    pinned = _compat.version_identity(local_store.inner, "m", 1)
    local_store.create_registered_model("other")
    local_store.create_model_version("other", source=str(tmp_path / "x"), run_id=None)
    move = _compat._move_to_stage

    def rename_then_move(*args: Any) -> None:
        def renames() -> None:  # another connection, as another request would
            local_store.rename_registered_model("m", "m-away")
            local_store.rename_registered_model("other", "m")

        worker = threading.Thread(target=renames)
        worker.start()
        worker.join(60)
        move(*args)

    monkeypatch.setattr(_compat, "_move_to_stage", rename_then_move)
    committed = local_store._commit("m", 1, pinned, set_alias=None, set_tags={},
                                    set_stage="Production")  # fmt: skip
    assert not committed
    assert local_store.get_model_version("m", 1).current_stage == "None"
    assert local_store.get_model_version("m-away", 1).current_stage == "None"


@pytest.mark.parametrize(
    ("value", "problem"),
    [("", "names none"), (" , ", "names none"), ("champion;prod", "not alias names")],
)
def test_an_empty_or_malformed_protected_alias_list_stops_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    from privacy_gate.mlflow.registry_store import PrivacyGateRegistryStore

    monkeypatch.setenv("PRIVACY_GATE_PROTECTED_ALIASES", value)
    with pytest.raises(MlflowException) as caught:
        PrivacyGateRegistryStore(f"privacygate+sqlite:///{tmp_path}/r.db")
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    assert "PRIVACY_GATE_PROTECTED_ALIASES" in caught.value.message
    assert problem in caught.value.message


def test_hostile_version_strings_are_400_and_not_echoed(local_store: Any) -> None:
    for version in ("1\n", "1 ", "+1", "0", "1_0", "<b>1</b>"):
        with pytest.raises(MlflowException) as caught:
            local_store.set_registered_model_alias("m", "champion", version)
        assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
        assert "\n" not in caught.value.message and "<b>" not in caught.value.message
