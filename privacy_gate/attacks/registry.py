"""The list of aggregate attacks on the release candidate and how they run: each attack is
one `AttackSpec` (name, scorer, what it needs); `run_attacks` scores every applicable one
and keeps its ROC summary. Adding an attack is one `register_attack` call."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from privacy_gate.attacks.roc import AttackResult, attack_result
from privacy_gate.record_stats import RecordMoments

__all__ = [
    "ATTACKS",
    "AggregateResult",
    "AttackInputs",
    "AttackSpec",
    "register_attack",
    "run_attacks",
    "unregister_attack",
]

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


@dataclass
class AttackInputs:
    """What an attack may read: the candidate's scores and membership, the reference
    models' scores, masks and per-record moments, the attack settings of ``risk``, and a
    per-run cache for work that attacks share (`shared`)."""

    target: FloatArray
    is_member: BoolArray
    moments: RecordMoments
    reference_scores: NDArray[np.floating[Any]]
    reference_masks: BoolArray
    single_label: bool
    gamma: float = 2.0
    offline_a: float | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def shared(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per run under ``key`` (e.g. RMIA's priors, used by both of
        its variants)."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]


@dataclass(frozen=True)
class AttackSpec:
    """One attack.

    Attributes:
        name: its key in the report (``aggregate.attacks``) and in metric keys.
        score: the membership score of every record (higher: more likely a member).
        single_label_only: it assumes one true label per record (not multilabel).
        parameters: the settings it used, as the report's ``aggregate`` section states
            them (e.g. RMIA's offline ``a`` and how it was chosen).
    """

    name: str
    score: Callable[[AttackInputs], FloatArray]
    single_label_only: bool = False
    parameters: Callable[[AttackInputs], Mapping[str, Any]] | None = None

    def applies(self, inputs: AttackInputs) -> bool:
        return inputs.single_label or not self.single_label_only


ATTACKS: dict[str, AttackSpec] = {}
"""Every attack, by name, in the report's order."""


def register_attack(spec: AttackSpec) -> AttackSpec:
    """Add an attack (its name must be new and an identifier: it is a metric-key part)."""
    if not spec.name.isidentifier() or spec.name in ATTACKS:
        raise ValueError(f"An attack needs a new identifier as its name; got {spec.name!r}.")
    ATTACKS[spec.name] = spec
    return spec


def unregister_attack(name: str) -> None:
    """Remove an attack (for tests that register a throwaway one)."""
    del ATTACKS[name]


@dataclass(frozen=True)
class AggregateResult:
    """All attacks on the release candidate, and the settings they used (``parameters``:
    ``rmia_offline_a``, the offline RMIA ``a``, and ``rmia_offline_a_source``, how it was
    chosen: "tuned", "given" or "fallback"; absent without RMIA)."""

    attacks: Mapping[str, AttackResult]
    members: int
    non_members: int
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def strongest(self) -> str:
        return max(self.attacks, key=lambda a: self.attacks[a].auc)

    @property
    def max_auc(self) -> float:
        return max(r.auc for r in self.attacks.values())

    def max_tpr_at(self, fpr: float) -> float:
        return max(r.tpr_at_fpr[fpr] for r in self.attacks.values())


def run_attacks(
    target: FloatArray,
    is_member: BoolArray,
    moments: RecordMoments,
    reference_scores: NDArray[np.floating[Any]],
    reference_masks: BoolArray,
    *,
    fprs: tuple[float, ...],
    single_label: bool,
    gamma: float = 2.0,
    offline_a: float | None = None,
) -> AggregateResult:
    """Run every registered attack that applies on the release candidate.

    Args:
        target: ``(n_records,)`` scores under the release candidate.
        is_member: ``(n_records,)`` True for the candidate's training records.
        moments: reference-model moments per record.
        single_label: one true label per record (attacks that assume it run only then).
        offline_a: RMIA's offline ``a``; None tunes it.
    """
    inputs = AttackInputs(
        target=target,
        is_member=is_member,
        moments=moments,
        reference_scores=reference_scores,
        reference_masks=reference_masks,
        single_label=single_label,
        gamma=gamma,
        offline_a=offline_a,
    )
    applicable = [spec for spec in ATTACKS.values() if spec.applies(inputs)]
    parameters: dict[str, Any] = {}
    for spec in applicable:
        if spec.parameters is not None:
            parameters.update(spec.parameters(inputs))
    return AggregateResult(
        attacks={
            spec.name: attack_result(spec.score(inputs), is_member, fprs) for spec in applicable
        },
        members=int(is_member.sum()),
        non_members=int((~is_member).sum()),
        parameters=parameters,
    )
