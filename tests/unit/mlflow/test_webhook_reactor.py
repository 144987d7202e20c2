"""The webhook receiver's decisions (`privacy_gate.mlflow.webhook_reactor`) over every order
of deliveries, on an in-memory registry with the client methods the reactor calls; the
verification is replaced by a fixed verdict per version (the real one, the gated store's,
runs against a real server in tests/integration/test_mlflow_webhooks.py)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privacy_gate.mlflow.registry_settings import GateSettings
from privacy_gate.mlflow.webhook_reactor import EVENTS, MAX_ATTEMPTS, Reactor, Revert
from privacy_gate.mlflow.webhook_registry import PROMPT_FILTER
from privacy_gate.mlflow.webhook_signature import Event
from privacy_gate.mlflow.webhook_state import WebhookState

MODEL = "m"
NO_AUDIT = "no privacy audit was found for this model version"


class Missing(Exception):
    error_code = "RESOURCE_DOES_NOT_EXIST"


@dataclass
class _Version:
    version: str
    run_id: str
    source: str
    creation_timestamp: int
    tags: dict[str, str]
    aliases: list[str]


class Page(list):  # type: ignore[type-arg]
    token = None


@dataclass
class FakeRegistry:
    """Versions 1..n of one model, their tags and the model's aliases; `good` verify."""

    good: set[int]
    n: int = 3
    tags: dict[int, dict[str, str]] = field(default_factory=dict)
    aliases: dict[str, int] = field(default_factory=dict)
    stages: dict[int, str] = field(default_factory=dict)
    prompt: bool = False  # the model is tagged mlflow.prompt.is_prompt=true

    def get_model_version(self, name: str, version: str) -> _Version:
        number = int(version)
        if name != MODEL or not 1 <= number <= self.n:
            raise Missing(version)
        held = [a for a, v in self.aliases.items() if v == number]
        tags = dict(self.tags.get(number, {}))
        return _Version(version, f"run{number}", f"models:/m-{number}", number, tags, held)

    def get_model_version_download_uri(self, name: str, version: str) -> str:
        return f"mem:/{name}/{version}"

    def get_model_version_by_alias(self, name: str, alias: str) -> _Version:
        if alias not in self.aliases:
            raise Missing(alias)
        return self.get_model_version(name, str(self.aliases[alias]))

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self.aliases[alias] = int(version)

    def delete_registered_model_alias(self, name: str, alias: str) -> None:
        del self.aliases[alias]

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self.tags.setdefault(int(version), {})[key] = value

    def delete_model_version_tag(self, name: str, version: str, key: str) -> None:
        del self.tags[int(version)][key]

    def get_registered_model(self, name: str) -> Any:
        return type("Model", (), {"name": MODEL, "aliases": dict(self.aliases)})()

    def search_registered_models(self, filter_string: str | None = None, **_: Any) -> Page:
        """As MLflow's: a model tagged as a prompt only when the filter names the tag."""
        if self.prompt != (filter_string == PROMPT_FILTER):
            return Page([])
        return Page([self.get_registered_model(MODEL)])

    def search_model_versions(self, filter_string: str | None = None, **_: Any) -> Page:
        if self.prompt != (filter_string == PROMPT_FILTER):
            return Page([])
        found = [{"name": MODEL, "version": str(n), "current_stage": self.stages.get(n, "None")}
                 for n in range(1, self.n + 1)]  # fmt: skip
        return Page([type("V", (), fields)() for fields in found])

    def transition_model_version_stage(
        self, name: str, version: str, stage: str, archive_existing_versions: bool = False
    ) -> None:
        self.stages[int(version)] = stage

    def verify(self, pinned: tuple[Any, ...]) -> tuple[list[str], Any]:
        number = int(pinned[0].removeprefix("run"))
        return ([] if number in self.good else [NO_AUDIT]), {"audit": {"run_id": pinned[0]}}


SETTINGS = GateSettings(
    protected_aliases=frozenset({"champion"}),
    policy_sha256=None,
    allow_pickle=False,
    public_key_fingerprint="f",
    public_key_problem=None,
)


def _reactor(registry: FakeRegistry, directory: Path, notes: list[Revert]) -> Reactor:
    return Reactor(
        client=registry,
        tracking_uri="mem:",
        settings=SETTINGS,
        state=WebhookState(directory),
        notify=notes.append,
        verify=registry.verify,
    )


def _alias_event(version: int) -> tuple[Event, float]:
    event = Event("model_version_alias.created", "", MODEL, str(version), "champion", None)
    return event, float(version)  # MLflow's event time: the order they were set in


def test_every_order_of_deliveries_with_duplicates_ends_the_same(tmp_path: Path) -> None:
    """Champion was set on 1, then 2 (both verify), then 3 (no audit), all committed before
    any delivery: in every order, with the bad one delivered twice, champion ends on 2
    (the newest verified), 3 is refused, and the tags are the same."""
    finals = set()
    orders = set(itertools.permutations([1, 2, 3, 3]))
    for i, order in enumerate(sorted(orders)):
        registry = FakeRegistry(good={1, 2}, aliases={"champion": 3})
        notes: list[Revert] = []
        reactor = _reactor(registry, tmp_path / str(i), notes)
        for version in order:
            reactor.handle(*_alias_event(version))
        final = (
            tuple(sorted(registry.aliases.items())),
            tuple(sorted((v, tuple(sorted(t.items()))) for v, t in registry.tags.items())),
        )
        finals.add(final)
        assert registry.aliases == {"champion": 2}, order
        assert registry.tags[3]["privacy_gate.status"] == "refused", order
        assert NO_AUDIT in registry.tags[3]["privacy_gate.refusal"], order
        assert registry.tags[2]["privacy_gate.promoted_alias"] == "champion", order
        assert [n.version for n in notes] == [3], order  # one revert, one notification
        # Delivered all over again: nothing changes.
        for version in order:
            reactor.handle(*_alias_event(version))
        assert (registry.aliases, len(notes)) == ({"champion": 2}, 1), order
    assert len(finals) == 1, finals


def test_a_verified_choice_is_kept_and_only_the_receivers_own_choice_is_replaced(
    tmp_path: Path,
) -> None:
    registry = FakeRegistry(good={1, 2}, aliases={"champion": 2})
    reactor = _reactor(registry, tmp_path, [])
    assert reactor.handle(*_alias_event(2)) == "kept"
    registry.aliases["champion"] = 1  # someone rolls back to 1, which verifies: kept
    assert reactor.handle(*_alias_event(1)) == "kept"
    assert reactor.handle(*_alias_event(2)) == "kept"  # a stale delivery of 2 changes nothing
    assert registry.aliases == {"champion": 1}


def test_no_verified_version_to_restore_removes_the_alias(tmp_path: Path) -> None:
    registry = FakeRegistry(good=set(), aliases={"champion": 3})
    notes: list[Revert] = []
    reactor = _reactor(registry, tmp_path, notes)
    assert reactor.handle(*_alias_event(3)) == "reverted, alias removed"
    assert registry.aliases == {} and notes[0].restored is None
    assert "What to do:" in notes[0].message


def test_a_restore_candidate_is_verified_again_before_it_is_restored(tmp_path: Path) -> None:
    registry = FakeRegistry(good={1, 2}, aliases={"champion": 2})
    reactor = _reactor(registry, tmp_path, [])
    reactor.handle(*_alias_event(1))
    reactor.handle(*_alias_event(2))
    registry.good.discard(2)  # 2's files changed since it was verified
    registry.aliases["champion"] = 3
    assert reactor.handle(*_alias_event(3)) == "reverted to 1"
    assert registry.aliases == {"champion": 1}


def test_forged_verdict_tags_are_put_back(tmp_path: Path) -> None:
    registry = FakeRegistry(good={2}, aliases={})
    reactor = _reactor(registry, tmp_path, [])
    created = Event("model_version.created", "", MODEL, "3", None, None)
    assert reactor.handle(created, 0.0) == "refused"
    written = dict(registry.tags[3])
    registry.tags[3]["privacy_gate.status"] = "pass"  # a client forges the verdict
    forged = Event("model_version_tag.set", "", MODEL, "3", None, "privacy_gate.status")
    assert reactor.handle(forged, 0.0) == "verdict restored"
    assert registry.tags[3] == written
    assert reactor.handle(forged, 0.0) == "unchanged"  # the event of its own write


def test_start_up_reconciles_what_happened_while_it_was_down(tmp_path: Path) -> None:
    registry = FakeRegistry(good={1}, aliases={"champion": 1})
    _reactor(registry, tmp_path, []).handle(*_alias_event(1))
    registry.aliases["champion"] = 3  # set while the receiver was down: no delivery
    restarted = _reactor(registry, tmp_path, [])  # the same state directory
    assert restarted.reconcile_all() == ["m@champion: reverted to 1"]
    assert registry.aliases == {"champion": 1}


def test_a_champion_refused_for_a_passing_reason_comes_back_once_it_verifies(
    tmp_path: Path,
) -> None:
    """Fail closed, then heal: a report that cannot be read just now refuses (as in the
    gated store); the next reconciliation puts the champion back when it verifies again."""
    registry = FakeRegistry(good={1, 2}, aliases={"champion": 1})
    reactor = _reactor(registry, tmp_path, [])
    reactor.handle(*_alias_event(1))
    registry.aliases["champion"] = 2
    reactor.handle(*_alias_event(2))
    registry.good.discard(2)  # e.g. the artifact store did not answer
    assert reactor.reconcile_all() == ["m@champion: reverted to 1"]
    registry.good.add(2)
    assert reactor.reconcile_all() == ["m@champion: restored 2"]
    assert registry.aliases == {"champion": 2}
    assert registry.tags[2]["privacy_gate.status"] == "pass"


def test_a_model_tagged_as_a_prompt_is_gated_like_any_model(tmp_path: Path) -> None:
    """MLflow sends prompt_* events for a model tagged mlflow.prompt.is_prompt=true and its
    default searches leave it out, while the server still serves models:/m@champion."""
    assert {"prompt_alias.created", "prompt_tag.set", "prompt_version_tag.set"} <= set(EVENTS)
    registry = FakeRegistry(good={1}, aliases={"champion": 1}, prompt=True)
    notes: list[Revert] = []
    reactor = _reactor(registry, tmp_path, notes)
    registry.aliases["champion"] = 3
    event = Event("prompt_alias.created", "", MODEL, "3", "champion", None)
    assert reactor.handle(event, 3.0) == "reverted, alias removed"
    assert registry.aliases == {} and [n.version for n in notes] == [3]
    # Set while the receiver was down: the periodic reconciliation finds the prompt too.
    registry.aliases["champion"] = 2
    assert reactor.reconcile_all() == ["m@champion: reverted, alias removed"]
    assert registry.aliases == {}
    assert registry.tags[2]["privacy_gate.status"] == "refused"
    # Tagging the model as a prompt (a prompt_tag event) reconciles its aliases.
    registry.aliases["champion"] = 3
    tagged = Event("prompt_tag.set", "", MODEL, None, None, "mlflow.prompt.is_prompt")
    assert reactor.handle(tagged, 4.0) == "m@champion: reverted, alias removed"
    assert registry.aliases == {}
    # A forged verdict on a prompt's version is put back.
    registry.tags[3]["privacy_gate.status"] = "pass"
    forged = Event("prompt_version_tag.set", "", MODEL, "3", None, "privacy_gate.status")
    assert reactor.handle(forged, 5.0) == "verdict restored"
    assert registry.tags[3]["privacy_gate.status"] == "refused"


@dataclass
class MovingRegistry(FakeRegistry):
    """An attacker who moves the alias to a fresh unverified version at each of the first
    ``moves`` reads of it (every read when None)."""

    moves: int | None = None
    reads: int = 0

    def get_model_version_by_alias(self, name: str, alias: str) -> _Version:
        self.reads += 1
        if alias in self.aliases and (self.moves is None or self.reads <= self.moves):
            self.n += 1  # a new version, without an audit
            self.aliases[alias] = self.n
        return super().get_model_version_by_alias(name, alias)


def test_an_alias_moved_during_every_check_is_removed_and_every_refusal_notified(
    tmp_path: Path,
) -> None:
    registry = MovingRegistry(good={1}, aliases={"champion": 1}, moves=0)
    notes: list[Revert] = []
    reactor = _reactor(registry, tmp_path, notes)
    reactor.handle(*_alias_event(1))  # 1 verified: a restore candidate
    registry.aliases["champion"] = 2
    registry.moves = None  # the attack: a new unverified holder at every read
    outcome = reactor.handle(*_alias_event(2))
    assert outcome.startswith("reverted, alias removed (it moved"), outcome
    assert "champion" not in registry.aliases  # fail closed
    refused = {v for v, t in registry.tags.items() if t.get("privacy_gate.status") == "refused"}
    notified = {n.version for n in notes}
    # Every holder checked was refused and notified (2, named by the event, had already
    # moved when read: it is tagged refused as every version named is).
    assert len(notified) == MAX_ATTEMPTS and notified <= refused <= notified | {2}, notes
    assert all(n.version not in registry.good for n in notes)
    # Once the attacker stops, the next reconciliation puts the verified version back.
    registry.moves = 0
    assert reactor.reconcile_all() == ["m@champion: restored 1"]
    assert registry.aliases == {"champion": 1}


def test_an_alias_moved_a_few_times_ends_on_the_verified_version(tmp_path: Path) -> None:
    registry = MovingRegistry(good={1}, aliases={"champion": 1}, moves=0)
    notes: list[Revert] = []
    reactor = _reactor(registry, tmp_path, notes)
    reactor.handle(*_alias_event(1))
    registry.aliases["champion"] = 2
    registry.moves, registry.reads = 3, 0  # moved at the first three reads only
    assert reactor.handle(*_alias_event(2)) == "reverted to 1"
    assert registry.aliases == {"champion": 1}
    refused = {v for v, t in registry.tags.items() if t.get("privacy_gate.status") == "refused"}
    notified = {n.version for n in notes}
    assert len(notified) >= 2 and notified <= refused <= notified | {2}, notes
    assert [n.restored for n in notes].count(1) == 1  # the last holder reverted, to 1


def test_reconciliation_archives_an_unverified_version_in_a_protected_stage(
    tmp_path: Path,
) -> None:
    """No webhook event announces a stage transition: reconciliation finds it."""
    registry = FakeRegistry(good={1}, stages={1: "Staging", 3: "Production", 2: "Archived"})
    notes: list[Revert] = []
    reactor = _reactor(registry, tmp_path, notes)
    assert reactor.reconcile_all() == [
        "m version 1 in Staging: verified",
        "m version 3 in Production: archived",
    ]
    assert registry.stages == {1: "Staging", 3: "Archived", 2: "Archived"}
    assert registry.tags[3]["privacy_gate.status"] == "refused"
    assert [(n.version, n.alias) for n in notes] == [(3, "stage:Production")]


def test_reconciliation_verifies_the_files_of_a_kept_holder_again(tmp_path: Path) -> None:
    """Files overwritten in place fire no event: each reconciliation verifies them."""
    registry = FakeRegistry(good={1, 2}, aliases={"champion": 2})
    reactor = _reactor(registry, tmp_path, [])
    reactor.handle(*_alias_event(1))
    registry.aliases["champion"] = 2
    assert reactor.reconcile_all() == ["m@champion: kept"]
    registry.good.discard(2)  # its bytes overwritten through the artifact proxy
    assert reactor.reconcile_all() == ["m@champion: reverted to 1"]


def test_periodic_reconciliation_is_on_by_default() -> None:
    import argparse

    from privacy_gate.cli.webhook import add_webhook_commands
    from privacy_gate.mlflow.webhook_app import ReceiverConfig

    parser = argparse.ArgumentParser()
    add_webhook_commands(parser.add_subparsers())
    args = parser.parse_args(["webhook", "serve", "--state-dir", "x"])
    assert args.reconcile_interval == 300.0
    assert ReceiverConfig.__dataclass_fields__["reconcile_interval_s"].default == 300.0


@dataclass
class SwappingRegistry(FakeRegistry):
    """Between two reads of version 3, another version (the good 1's run and files) is
    renamed into its place: a rename race."""

    swap_after: int = 1
    reads: int = 0

    def get_model_version(self, name: str, version: str) -> _Version:
        found = super().get_model_version(name, version)
        if int(version) == 3:
            self.reads += 1
            if self.reads > self.swap_after:
                found.run_id, found.source, found.creation_timestamp = "run1", "models:/m-1", 1
        return found


def test_a_version_whose_identity_changes_while_it_is_verified_is_refused(
    tmp_path: Path,
) -> None:
    registry = SwappingRegistry(good={1, 3}, aliases={"champion": 3})
    notes: list[Revert] = []
    reactor = _reactor(registry, tmp_path, notes)
    assert reactor.handle(*_alias_event(3)) == "reverted, alias removed"
    assert (
        "changed while it was verified (run id, source, creation time"
        in (registry.tags[3]["privacy_gate.refusal"])
    )
    assert [n.version for n in notes] == [3]


def test_alias_events_go_before_other_waiting_work() -> None:
    """A flood of version or tag events queued first does not delay an alias event."""
    import threading
    import time

    from privacy_gate.mlflow.webhook_reactor import URGENT, PriorityLock

    assert "model_version_alias.created" in URGENT and "model_version.created" not in URGENT
    lock, order = PriorityLock(), []

    def take(name: str, urgent: bool) -> None:
        with lock.hold(urgent=urgent):
            order.append(name)

    with lock.hold(urgent=False):  # busy: everything below waits
        waiting = [threading.Thread(target=take, args=(f"tag{i}", False)) for i in range(5)]
        for thread in waiting:
            thread.start()
        time.sleep(0.2)  # the tag events are waiting first
        alias = threading.Thread(target=take, args=("alias", True))
        alias.start()
        time.sleep(0.2)
    for thread in [*waiting, alias]:
        thread.join(timeout=10)
    assert order[0] == "alias" and sorted(order[1:]) == [f"tag{i}" for i in range(5)], order


def test_the_state_keys_an_alias_as_protection_matches_it(tmp_path: Path) -> None:
    """'Champion' is protected as 'champion' is: one record of candidates for both."""
    registry = FakeRegistry(good={1}, aliases={"Champion": 1})
    reactor = _reactor(registry, tmp_path, [])
    event = Event("model_version_alias.created", "", MODEL, "1", "Champion", None)
    assert reactor.handle(event, 1.0) == "kept"
    state = WebhookState(tmp_path)
    assert state.verified_newest_first(MODEL, "champion") == [1]
    assert state.verified_newest_first(MODEL, "Champion") == []
    registry.aliases = {"champion": 3}  # the lower-case one, on an unaudited version
    assert reactor.handle(*_alias_event(3)) == "reverted to 1"
