"""Every method of MLflow's model-registry ``AbstractStore``, classified for the gated
registry store (`privacy_gate.mlflow.registry_store`): forwarded unchanged, or gated by
the store itself. A method a newer MLflow adds is in neither set, so the store refuses it
and `tests/integration/test_mlflow_registry_store.py` fails until someone classifies it.
"""

from __future__ import annotations

__all__ = ["FORWARDED", "FORWARDED_PRIVATE", "GATED"]

FORWARDED = frozenset(
    {
        # reads
        "get_latest_versions",
        "get_model_version",
        "get_model_version_by_alias",
        "get_model_version_download_uri",
        "get_prompt",
        "get_prompt_version",
        "get_prompt_version_by_alias",
        "get_registered_model",
        "get_webhook",
        "list_webhooks",
        "list_webhooks_by_event",
        "search_model_versions",
        "search_prompt_versions",
        "search_prompts",
        "search_registered_models",
        # writes that cannot promote a model or forge a verdict
        "create_prompt",
        "create_registered_model",
        "create_webhook",
        "delete_model_version",
        "delete_prompt",
        "delete_prompt_alias",
        "delete_prompt_tag",
        "delete_prompt_version",
        "delete_registered_model",
        "delete_registered_model_alias",
        "delete_registered_model_tag",
        "delete_webhook",
        "link_prompt_version_to_model",
        "link_prompt_version_to_run",
        "link_prompts_to_trace",
        "rename_registered_model",
        "set_prompt_tag",
        "set_registered_model_tag",
        "test_webhook",
        "update_model_version",
        "update_registered_model",
        "update_webhook",
    }
)
"""Registry-store methods passed to the inner store unchanged."""

GATED = frozenset(
    {
        "copy_model_version",
        "create_model_version",
        "create_prompt_version",
        "delete_model_version_tag",
        "delete_prompt_version_tag",
        "set_model_version_tag",
        "set_prompt_alias",
        "set_prompt_version_tag",
        "set_registered_model_alias",
        "transition_model_version_stage",
    }
)
"""Registry-store methods this store implements itself, with its checks."""

FORWARDED_PRIVATE = frozenset({"_await_model_version_creation"})
"""Private ``AbstractStore`` helpers MLflow's client calls on an in-process store (the
gated store with ``MlflowClient(registry_uri="privacygate+sqlite:///...")``): reads."""
