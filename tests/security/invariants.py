"""What every attack must leave behind, read from the registry itself."""

from __future__ import annotations

from collections.abc import Collection

from mlflow.tracking import MlflowClient

PROTECTED = frozenset({"champion", "production"})


def final_state_allowed(client: MlflowClient, audited_locations: Collection[str]) -> list[str]:
    """Violations (empty when allowed): a protected alias or a pass tag on a version whose
    source is not one of ``audited_locations`` (the ``models:/<id>`` of audited models; a
    version's files are derived from its source by the server)."""
    found: list[str] = []
    for model in client.search_registered_models(max_results=1000):
        for version in client.search_model_versions(f"name = '{model.name}'", max_results=1000):
            where = version.source
            audited = where in audited_locations
            protected = PROTECTED & {a.lower() for a in version.aliases}
            if protected and not audited:
                found.append(f"{model.name} v{version.version} ({where}) holds {protected}")
            if version.tags.get("privacy_gate.status") == "pass" and not audited:
                found.append(f"{model.name} v{version.version} ({where}) has a pass tag")
    return found
