"""One registry version as the webhook receiver sees it: verified now (`VersionBook._check`,
the gated store's check on the version's pinned identity) and its ``privacy_gate.*``
verdict tags written (`VersionBook._write_verdict`) or put back. The base of
`privacy_gate.mlflow.webhook_reactor.Reactor`, which decides about aliases.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from privacy_gate.mlflow.logging import report_sha256
from privacy_gate.mlflow.promote import (
    PROMOTED_ALIAS_TAG,
    REFUSAL_TAG,
    REPORT_SHA256_TAG,
    STATUS_TAG,
    VERIFIED_BY_TAG,
    refusal_text,
)
from privacy_gate.mlflow.registry_settings import GateSettings, canonical_alias
from privacy_gate.mlflow.webhook_state import WebhookState

__all__ = ["TAG_PREFIX", "VERIFIED_BY", "Check", "VersionBook"]

_LOG = logging.getLogger(__name__)
VERIFIED_BY = "webhook-receiver"
TAG_PREFIX = "privacy_gate."
_GONE = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


@dataclass(frozen=True)
class Check:
    """A version verified now: every reason it may not hold a protected alias."""

    version: int
    reasons: list[str]
    report: Any
    identity: tuple[Any, ...]
    tags: dict[str, str]
    aliases: list[str]

    @property
    def ok(self) -> bool:
        return not self.reasons


class VersionBook:
    """Verifies versions through ``client`` and keeps their verdict tags. Not thread-safe."""

    def __init__(
        self,
        *,
        client: Any,
        settings: GateSettings,
        state: WebhookState,
        refusals: Callable[[tuple[Any, ...]], tuple[list[str], Any]],
    ) -> None:
        self._client = client
        self._settings = settings
        self._refusals = refusals
        self._state = state
        self._checks: dict[tuple[str, int], Check | None] = {}
        self._touched: set[tuple[str, int]] = set()

    def protected(self, alias: str) -> bool:
        return canonical_alias(alias) in self._settings.protected_aliases

    # ------------------------------------------------------------------ one version

    def _record(self, model: str, version: int) -> str:
        check = self._check(model, version)
        if check is None:
            return "ignored: no such version"
        if check.ok:
            self._write_verdict(model, version, self._pass_tags(check))
            return "verified"
        written = self._state.verdict(model, version) or {}
        if written.get(STATUS_TAG) == "refused":
            return "refused"  # already recorded (a revert's record is kept, in any order)
        head = f"Version {version} of {model!r} may not hold a protected alias"
        self._write_verdict(model, version, self._refusal_tags(head, check.reasons))
        return "refused"

    def _restore_verdict(self, model: str, version: int) -> str:
        written = self._state.verdict(model, version)
        if written is None:
            return self._record(model, version)
        try:
            current = dict(self._client.get_model_version(model, str(version)).tags)
        except Exception as exc:
            if getattr(exc, "error_code", None) in _GONE:
                return "ignored: no such version"
            raise
        if _verdict_of(current) == written:
            return "unchanged"
        self._write_verdict(model, version, written, current)
        _LOG.warning("put back the privacy_gate tags of %r version %s", model, version)
        return "verdict restored"

    def _check(self, model: str, version: int) -> Check | None:
        """The version verified now with the gated store's check (cached for one event);
        None when it does not exist."""
        key = (model, version)
        if key not in self._checks:
            self._checks[key] = self._verify(model, version)
        return self._checks[key]

    def _verify(self, model: str, version: int) -> Check | None:
        """The version read, verified on the identity read, then read again: a version
        whose identity changed meanwhile (renamed, or deleted and re-created, between two
        of MLflow's calls) is refused (fail closed), so a bad version's run is never paired
        with a good version's files."""
        read = self._read(model, version)
        if read is None:
            return None
        found, identity = read
        reasons, report = self._refusals(identity)
        again = self._read(model, version)
        if again is None:
            return None  # deleted meanwhile
        if again[1] != identity:
            reasons = [*reasons, _changed(model, version, identity, again[1])]
        return Check(version, reasons, report, identity, dict(found.tags), list(found.aliases))

    def _read(self, model: str, version: int) -> tuple[Any, tuple[Any, ...]] | None:
        """The version and its identity (run id, source, download location, creation time);
        None when there is none. MLflow's REST API gives the download location (which may
        differ from the source) only by a second call."""
        try:
            found = self._client.get_model_version(model, str(version))
            location = self._client.get_model_version_download_uri(model, str(version))
        except Exception as exc:
            if getattr(exc, "error_code", None) in _GONE:
                return None
            raise  # the registry cannot be asked: the delivery is retried
        return found, (found.run_id or None, found.source, location, found.creation_timestamp)

    def _unchanged(self, model: str, check: Check) -> bool:
        """The version is still the one verified (not deleted and re-created in between)."""
        now = self._read(model, check.version)
        return now is not None and now[1] == check.identity

    def _holder(self, model: str, alias: str) -> int | None:
        try:
            return int(self._client.get_model_version_by_alias(model, alias).version)
        except Exception as exc:
            if getattr(exc, "error_code", None) in _GONE:
                return None
            raise

    # ------------------------------------------------------------------ verdict tags

    def _pass_tags(
        self, check: Check, placing: str | None = None, *, without: str | None = None
    ) -> dict[str, str]:
        held = {a for a in check.aliases if self.protected(a) and a != without}
        held |= {placing} if placing else set()
        tags = {
            STATUS_TAG: "pass",
            REPORT_SHA256_TAG: report_sha256(check.report),
            VERIFIED_BY_TAG: VERIFIED_BY,
        }
        if held:
            tags[PROMOTED_ALIAS_TAG] = ",".join(sorted(held))
        return tags

    @staticmethod
    def _refusal_tags(head: str, reasons: list[str]) -> dict[str, str]:
        text = refusal_text([f"{head}: " + "; ".join(reasons) + "."])
        return {STATUS_TAG: "refused", REFUSAL_TAG: text, VERIFIED_BY_TAG: VERIFIED_BY}

    def _write_verdict(
        self,
        model: str,
        version: int,
        tags: dict[str, str],
        current: dict[str, str] | None = None,
    ) -> None:
        """Make the version's ``privacy_gate.*`` tags exactly ``tags`` (only what differs
        is written, so the tag events of the receiver's own writes change nothing)."""
        if current is None:
            cached = self._checks.get((model, version))
            current = dict(cached.tags) if cached is not None else {}
        # The verdict is recorded first: the tag events of these writes find it.
        self._state.set_verdict(model, version, tags)
        self._touched.add((model, version))
        for key in _verdict_of(current):
            if key not in tags:
                self._client.delete_model_version_tag(model, str(version), key)
        # The status last: a reader who sees it sees the rest of the verdict too.
        for key, value in sorted(tags.items(), key=lambda item: item[0] == STATUS_TAG):
            if current.get(key) != value:
                self._client.set_model_version_tag(model, str(version), key, value)
        cached = self._checks.get((model, version))
        if cached is not None:
            others = {k: v for k, v in cached.tags.items() if k not in _verdict_of(cached.tags)}
            cached.tags.clear()
            cached.tags.update({**others, **tags})


def _verdict_of(tags: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if canonical_alias(k).startswith(TAG_PREFIX)}


def _changed(model: str, version: int, before: tuple[Any, ...], after: tuple[Any, ...]) -> str:
    fields = ("run id", "source", "download location", "creation time")
    what = ", ".join(f for f, a, b in zip(fields, before, after, strict=True) if a != b)
    return (
        f"version {version} of {model!r} changed while it was verified ({what}: renamed, or "
        "deleted and re-created), so what was verified may not be what it serves; refused "
        "until it is verified again unchanged"
    )
