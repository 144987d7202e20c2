"""What the webhook receiver does about a registry event: verify, revert, restore, record.

A webhook cannot block: MLflow commits the alias, then sends the event. So each event is
only a trigger, and the receiver acts on the registry as it is NOW (read back from the
server), never on what the event says happened. That is what makes a duplicate, a late or a
reordered delivery converge on one final state:

- ``model_version_alias.created`` of a protected alias: the version it names is verified
  (a verified one becomes a restore candidate, with the event's time); then the alias is
  reconciled (`Reactor.reconcile`): its holder now is verified with the gated store's own
  check (`privacy_gate.mlflow.server_audit.version_refusals`: the signed report of the
  version's run, the bytes of its files hashed against the signed manifest, no model
  loaded). A holder that does not verify gets the refusal tags with every reason and loses
  the alias; the newest candidate that still verifies NOW is put in its place, or the alias
  is left empty; an operator is notified. A holder the receiver itself put back is replaced
  by a newer verified candidate learned later; a verified holder someone chose is kept.
- ``model_version.created``: the version is verified and its verdict written as tags, so the
  registry shows the status before anyone asks for an alias.
- ``model_version_tag.set`` / ``.deleted`` of a ``privacy_gate.*`` key: on a registry without
  the gated store, any client can write those; the receiver puts its own verdict back.
- The same for a model tagged as a prompt (``mlflow.prompt.is_prompt``), whose events MLflow
  sends under other names (``prompt_alias.created``, ``prompt_version.created``,
  ``prompt_version_tag.*``): the server still serves its aliases, so it is gated alike.
  ``prompt_tag.*`` (a tag of such a model set or deleted, the prompt tag itself included)
  and ``*_alias.deleted`` reconcile the model's protected aliases.

Reconciliation (`Reactor.reconcile_all`: at start-up and every ``--reconcile-interval``)
also verifies again the files of every protected alias's holder (bytes overwritten through
the artifact proxy fire no event) and every version in a protected stage (a stage
transition fires no event either): one in a stage that does not verify is archived.

The tags are the gated store's (`privacy_gate.mlflow.promote`: ``privacy_gate.status``
``pass`` or ``refused``, ``privacy_gate.refusal``, ``privacy_gate.report_sha256``,
``privacy_gate.promoted_alias``, ``privacy_gate.verified_by``), with ``verified_by``
``webhook-receiver``. They are a record for people, never evidence: every decision reads the
signed audit again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from privacy_gate.mlflow.registry_settings import PROTECTED_STAGES, GateSettings, canonical_alias
from privacy_gate.mlflow.remedies import refusal_message
from privacy_gate.mlflow.server_audit import version_refusals
from privacy_gate.mlflow.webhook_registry import all_registered_models, versions_in_stages
from privacy_gate.mlflow.webhook_signature import DeliveryRefused, Event, Refusal
from privacy_gate.mlflow.webhook_state import WebhookState
from privacy_gate.mlflow.webhook_versions import (
    _GONE,
    TAG_PREFIX,
    VERIFIED_BY,
    Check,
    VersionBook,
)

__all__ = ["EVENTS", "URGENT", "VERIFIED_BY", "Check", "PriorityLock", "Reactor", "Revert"]

_LOG = logging.getLogger(__name__)
ALIAS_SET = ("model_version_alias.created", "prompt_alias.created")
ALIAS_DELETED = ("model_version_alias.deleted", "prompt_alias.deleted")
VERSION_CREATED = ("model_version.created", "prompt_version.created")
VERSION_TAG = (
    "model_version_tag.set",
    "model_version_tag.deleted",
    "prompt_version_tag.set",
    "prompt_version_tag.deleted",
)
MODEL_TAG = ("prompt_tag.set", "prompt_tag.deleted")
URGENT = (*ALIAS_SET, *ALIAS_DELETED, *MODEL_TAG)
"""The events handled before any other waiting (they can expose a protected alias)."""
EVENTS = (*VERSION_CREATED, *ALIAS_SET, *ALIAS_DELETED, *VERSION_TAG, *MODEL_TAG)
"""The MLflow webhook events the receiver subscribes to (``webhook register``): a model
tagged ``mlflow.prompt.is_prompt`` gets the ``prompt_*`` events instead of the model ones."""
MAX_RESTORE_CANDIDATES = 5
MAX_ATTEMPTS = 5
"""Holders of one alias checked in one reconciliation before the alias is removed."""


class PriorityLock:
    """One holder at a time; waiters for an urgent turn (alias events: the exposure) go
    before the others (new versions, tags, periodic reconciliation), so a flood of those
    does not delay a revert. FIFO is not kept within a class."""

    def __init__(self) -> None:
        self._turn = threading.Condition()
        self._held = False
        self._urgent_waiting = 0

    @contextlib.contextmanager
    def hold(self, *, urgent: bool) -> Iterator[None]:
        with self._turn:
            self._urgent_waiting += urgent
            try:
                while self._held or (not urgent and self._urgent_waiting):
                    self._turn.wait()
            finally:
                self._urgent_waiting -= urgent
            self._held = True
        try:
            yield
        finally:
            with self._turn:
                self._held = False
                self._turn.notify_all()


@dataclass(frozen=True)
class Revert:
    """A protected alias taken from a version that does not verify (for notifications)."""

    model: str
    alias: str
    version: int
    restored: int | None
    reasons: list[str]
    message: str = field(repr=False)


class Reactor(VersionBook):
    """Reacts to registry events through ``client`` (an ``MlflowClient`` with the rights to
    set aliases and version tags). Not thread-safe: the receiver calls it under ``lock``,
    alias events first (`PriorityLock`)."""

    def __init__(
        self,
        *,
        client: Any,
        tracking_uri: str,
        settings: GateSettings,
        state: WebhookState,
        notify: Callable[[Revert], None],
        verify: Callable[[tuple[Any, ...]], tuple[list[str], Any]] | None = None,
    ) -> None:
        # The gated store's own check; another only in tests of the reactor's logic.
        refusals = verify or (lambda pinned: version_refusals(pinned, tracking_uri, settings))
        super().__init__(client=client, settings=settings, state=state, refusals=refusals)
        self._notify = notify
        self.lock = PriorityLock()

    # ------------------------------------------------------------------ events

    def handle(self, event: Event, at: float) -> str:
        """The outcome of one event, in a word or two (the answer's body).

        Raises:
            DeliveryRefused: a signed event whose data lacks what its kind needs.
        """
        self._checks = {}  # verified once per event at most, never across events
        self._touched = set()  # the versions whose verdict this event wrote
        if event.name in ALIAS_SET:
            model, version, alias = self._require(event, "name", "version", "alias")
            if not self.protected(alias):
                return "ignored: not a protected alias"
            check = self._check(model, version)
            if check is not None and check.ok:
                self._state.add_verified(model, canonical_alias(alias), version, at)
            outcome = self.reconcile(model, alias)  # the alias first: it is the exposure
            if check is not None and (model, version) not in self._touched:
                self._record(model, version)  # every version named gets its verdict
            return outcome
        if event.name in VERSION_CREATED:
            model, version, _ = self._require(event, "name", "version")
            return self._record(model, version)
        if event.name in ALIAS_DELETED:
            model, _, alias = self._require(event, "name", "alias")
            return self.reconcile(model, alias) if self.protected(alias) else "ignored"
        if event.name in MODEL_TAG:
            model, _, _ = self._require(event, "name")
            return "; ".join(self.reconcile_model(model)) or "no protected alias"
        if event.name in VERSION_TAG:
            model, version, _ = self._require(event, "name", "version")
            if not canonical_alias(event.tag_key or "").startswith(TAG_PREFIX):
                return "ignored: not a privacy_gate tag"
            return self._restore_verdict(model, version)
        return f"ignored: {event.name}"

    @staticmethod
    def _require(event: Event, *fields: str) -> tuple[str, int, str]:
        values = {"name": event.model, "version": event.version, "alias": event.alias}
        missing = [f for f in fields if values[f] is None]
        if missing:
            raise DeliveryRefused(
                Refusal.MALFORMED, f"the {event.name} event has no data.{', data.'.join(missing)}"
            )
        return str(event.model), int(event.version or 0), str(event.alias or "")

    # ------------------------------------------------------------------ reconciliation

    def reconcile_all(self) -> list[str]:
        """Every protected alias held in the registry (prompts' too), and every one the
        receiver emptied, reconciled (start-up, and every ``--reconcile-interval``)."""
        pairs = set(self._state.vacated())
        for name, aliases in all_registered_models(self._client).items():
            pairs |= {(name, a) for a in aliases if self.protected(a)}
        outcomes = self._reconcile_pairs(pairs)
        for model, version, stage in versions_in_stages(self._client, PROTECTED_STAGES):
            self._checks = {}
            outcome = self._reconcile_stage(model, version, stage)
            outcomes.append(f"{model} version {version} in {stage}: {outcome}")
        return outcomes

    def _reconcile_stage(self, model: str, version: int, stage: str) -> str:
        """A version in a protected stage (no webhook event announces a stage transition)
        verified now; archived when it does not verify (fail closed: loading by that stage
        no longer finds it), tagged refused, an operator notified."""
        check = self._check(model, version)
        if check is None:
            return "gone"
        if check.ok:
            self._write_verdict(model, version, self._pass_tags(check))
            return "verified"
        self._client.transition_model_version_stage(model, str(version), "Archived", False)
        head = f"Archived version {version} of {model!r}, which was in the stage {stage!r}"
        self._write_verdict(model, version, self._refusal_tags(head, check.reasons))
        message = refusal_message(head, check.reasons, check.report, check.identity[0])
        self._notify(Revert(model, f"stage:{stage}", version, None, list(check.reasons), message))
        return "archived"

    def reconcile_model(self, model: str) -> list[str]:
        """Every protected alias of one model (and those the receiver emptied) reconciled."""
        pairs = {(m, a) for m, a in self._state.vacated() if m == model}
        try:
            aliases = getattr(self._client.get_registered_model(model), "aliases", None) or {}
        except Exception as exc:
            if getattr(exc, "error_code", None) not in _GONE:
                raise
            aliases = {}
        pairs |= {(model, a) for a in aliases if self.protected(a)}
        return self._reconcile_pairs(pairs)

    def _reconcile_pairs(self, pairs: set[tuple[str, str]]) -> list[str]:
        outcomes = []
        for model_name, alias in sorted(pairs):
            self._checks = {}
            outcome = self.reconcile(model_name, alias)
            outcomes.append(f"{model_name}@{alias}: {outcome}")
        return outcomes

    def reconcile(self, model: str, alias: str) -> str:
        """Make the protected ``alias`` of ``model`` hold a version that verifies now, or
        nothing (module docs); the outcome in a word or two.

        When the alias moves while it is being checked, its new holder is read and checked
        in turn: never given up. After `MAX_ATTEMPTS` holders the alias is removed (fail
        closed); every version refused on the way is tagged and notified."""
        refused: list[Check] = []
        for _ in range(MAX_ATTEMPTS):
            outcome = self._reconcile_once(model, alias, refused)
            if outcome is not None:
                break
        else:
            self._remove(model, alias)
            outcome = f"reverted, alias removed (it moved {MAX_ATTEMPTS} times while checked)"
        for check in refused:  # refused, but the alias had moved before it could be reverted
            head = f"Refused version {check.version} of {model!r} for the alias {alias!r}"
            message = refusal_message(
                f"{head} (moved meanwhile; then: {outcome})",
                check.reasons,
                check.report,
                check.identity[0],
            )
            self._notify(Revert(model, alias, check.version, None, list(check.reasons), message))
        return outcome

    def _reconcile_once(self, model: str, alias: str, refused: list[Check]) -> str | None:
        """One attempt; None when the alias moved meanwhile (``refused`` gets the holder
        refused then)."""
        holder = self._holder(model, alias)
        placed, placed_version = self._state.placed(model, canonical_alias(alias))
        if holder is None:
            if placed and placed_version is None:  # the receiver emptied it: fill it again
                return self._put_back(model, alias, vacant=True)
            return "vacant"
        check = self._check(model, holder)
        if check is None:
            return None  # deleted since the alias was read: read it again
        if not check.ok:
            outcome = self._revert(model, alias, check)
            if outcome is None:
                refused.append(check)
            return outcome
        self._write_verdict(model, holder, self._pass_tags(check))
        if placed and placed_version == holder:  # the receiver's choice: a newer one wins
            return self._put_back(model, alias, vacant=False, current=holder)
        self._state.clear_placed(
            model, canonical_alias(alias)
        )  # someone else's choice, verified: kept
        self._state.add_verified(model, canonical_alias(alias), holder, time.time())
        return "kept"

    def _remove(self, model: str, alias: str) -> None:
        try:
            self._client.delete_registered_model_alias(model, alias)
        except Exception as exc:
            if getattr(exc, "error_code", None) not in _GONE:
                raise
        self._state.set_placed(model, canonical_alias(alias), None)

    def _revert(self, model: str, alias: str, check: Check) -> str | None:
        """None when the alias moved before it could be reverted (the version is refused)."""
        version = check.version
        head = f"Reverted the alias {alias!r} of {model!r} from version {version}"
        refusal = self._refusal_tags(head, check.reasons)
        # Still a candidate: a version refused for a passing reason (its report could not be
        # read just now) is put back once it verifies again; a restore verifies it first.
        target = self._restore_target(model, alias, exclude=version)
        if self._holder(model, alias) != version:
            self._write_verdict(model, version, refusal)
            return None  # moved meanwhile: the new holder is checked next
        # The alias first (it is what consumers see), then the records.
        if target is not None:
            self._client.set_registered_model_alias(model, alias, str(target.version))
            self._state.set_placed(model, canonical_alias(alias), target.version)
        else:
            self._remove(model, alias)
        self._write_verdict(model, version, refusal)
        if target is not None:
            self._write_verdict(model, target.version, self._pass_tags(target, alias))
        restored = None if target is None else target.version
        where = f"restored version {restored}" if restored else "no verified version to restore"
        run_id = check.identity[0]
        message = refusal_message(f"{head} ({where})", check.reasons, check.report, run_id)
        self._notify(Revert(model, alias, version, restored, list(check.reasons), message))
        return f"reverted to {restored}" if restored else "reverted, alias removed"

    def _put_back(
        self, model: str, alias: str, *, vacant: bool, current: int | None = None
    ) -> str | None:
        """None when the alias moved meanwhile."""
        target = self._restore_target(model, alias, exclude=None)
        if target is None or target.version == current:
            return "vacant" if vacant else "kept"
        if self._holder(model, alias) != current:
            return None
        self._client.set_registered_model_alias(model, alias, str(target.version))
        self._state.set_placed(model, canonical_alias(alias), target.version)
        self._write_verdict(model, target.version, self._pass_tags(target, alias))
        displaced = None if current is None else self._checks.get((model, current))
        if displaced is not None:
            self._write_verdict(model, current or 0, self._pass_tags(displaced, without=alias))
        _LOG.warning("restored %r@%s to version %s", model, alias, target.version)
        return f"restored {target.version}"

    def _restore_target(self, model: str, alias: str, *, exclude: int | None) -> Check | None:
        """The newest restore candidate that verifies now (others are forgotten)."""
        candidates = self._state.verified_newest_first(model, canonical_alias(alias))
        for version in [v for v in candidates if v != exclude][:MAX_RESTORE_CANDIDATES]:
            check = self._check(model, version)
            if check is not None and check.ok and self._unchanged(model, check):
                return check
            self._state.forget_verified(model, canonical_alias(alias), version)
        return None
