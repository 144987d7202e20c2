"""What the webhook receiver's reconciliation reads: every registered model of the registry,
prompts included, with its aliases, and every version in a protected stage.

MLflow's searches leave out prompts (models or versions tagged
``mlflow.prompt.is_prompt = 'true'``) unless the filter names that tag, yet the server
serves a prompt's aliases and stages as any model's (``models:/ehr@champion`` resolves):
tagging a model as a prompt must not hide it. So each search runs twice, once as MLflow
filters by default (everything but ``'true'``) and once for every value but ``'false'``;
together they cover every tag value, in any database collation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["PROMPT_FILTER", "all_registered_models", "versions_in_stages"]

PROMPT_FILTER = "tags.`mlflow.prompt.is_prompt` != 'false'"
"""Every model (or version) tagged as a prompt, whatever the tag's value but 'false'."""
_FILTERS = (None, PROMPT_FILTER)
_PAGE = 100


def _pages(search: Any, filter_string: str | None) -> Iterator[Any]:
    token: str | None = None
    while True:
        page = search(filter_string=filter_string, max_results=_PAGE, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def all_registered_models(client: Any) -> dict[str, dict[str, Any]]:
    """Every registered model, prompts included: name -> its aliases (alias -> version)."""
    found: dict[str, dict[str, Any]] = {}
    for filter_string in _FILTERS:
        for model in _pages(client.search_registered_models, filter_string):
            found[str(model.name)] = dict(getattr(model, "aliases", None) or {})
    return found


def versions_in_stages(client: Any, stages: tuple[str, ...]) -> list[tuple[str, int, str]]:
    """(model, version, stage) of every version, prompts' included, whose stage is one of
    ``stages`` (lower case)."""
    found: set[tuple[str, int, str]] = set()
    for filter_string in _FILTERS:
        for version in _pages(client.search_model_versions, filter_string):
            stage = str(getattr(version, "current_stage", "") or "")
            if stage.strip().lower() in stages:
                found.add((str(version.name), int(version.version), stage))
    return sorted(found)
