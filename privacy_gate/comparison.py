"""Two audits of the same pool, compared: what a release changes against what is deployed.

`compare_reports(before, after)` answers the reviewer's question "what changed against
the champion": the worst patient, the confidently-at-risk count and the strongest
aggregate attack (each before, after and the change), the patients newly at risk and no
longer at risk (by pseudonymous key, only where both audits used the same pseudonym key),
and how each subgroup's share of the exposed tail moved.

Symmetry: ``compare_reports(b, a)`` negates every change and swaps the newly and no
longer at-risk patients of ``compare_reports(a, b)``.

The pool is the audited population: the training audits' ``data_sha256`` (the pool's
tensors) or, for audits of signals you bring, ``records_sha256`` (records.csv). Audits of
different pools answer different questions, so comparing them is an error that names
both digests (`PoolMismatchError`).
"""

from __future__ import annotations

from dataclasses import dataclass

from privacy_gate.config import parse_config
from privacy_gate.errors import InputError
from privacy_gate.report_model import AuditReport
from privacy_gate.subgroups import GroupResult, GroupStatus

__all__ = [
    "POOL_DIGESTS",
    "AuditComparison",
    "Change",
    "PoolMismatchError",
    "SubgroupShift",
    "compare_reports",
    "comparison_to_dict",
    "pool_digest",
]

POOL_DIGESTS = ("data_sha256", "records_sha256")
"""The ``audit.inputs`` digests that identify the audited pool, in order of preference."""


class PoolMismatchError(InputError):
    """The two audits are of different pools (or one names no pool)."""


@dataclass(frozen=True)
class Change:
    """A figure in the earlier (``before``) and the later (``after``) audit."""

    before: float | None
    after: float | None

    @property
    def change(self) -> float | None:
        """``after - before``; None when either is unknown."""
        if self.before is None or self.after is None:
            return None
        return self.after - self.before


@dataclass(frozen=True)
class SubgroupShift:
    """One subgroup's place in the exposed tail in both audits.

    Attributes:
        tail_rate: share of the group's patients that are in the tail.
        relative_change: observed over expected tail patients, minus 1 (the gate's figure).
        significant: whether the gate's test found the group over-represented
            (Bonferroni-adjusted p at most the policy's ``subgroup_alpha``).
    """

    column: str
    group: str
    tail_rate: Change
    relative_change: Change
    max_patient_auc: Change
    significant_before: bool
    significant_after: bool


@dataclass(frozen=True)
class AuditComparison:
    """What changed from ``before`` (e.g. the champion) to ``after`` (the candidate).

    Attributes:
        pool: ``(digest name, value)`` both audits share.
        patients_matched: whether patient keys mean the same patients in both audits;
            when False, ``newly_at_risk`` and ``no_longer_at_risk`` are empty and
            ``unmatched_reason`` says why.
        newly_at_risk: keys confidently at risk after, not before (sorted).
        no_longer_at_risk: keys confidently at risk before, not after (sorted).
        still_at_risk: how many are at risk in both.
    """

    pool: tuple[str, str]
    worst_patient_auc: Change
    patients_at_risk: Change
    aggregate_auc: Change
    patients_matched: bool
    unmatched_reason: str | None
    newly_at_risk: tuple[str, ...]
    no_longer_at_risk: tuple[str, ...]
    still_at_risk: int
    subgroups: tuple[SubgroupShift, ...]


def pool_digest(report: AuditReport) -> tuple[str, str] | None:
    """The digest that names the audited pool (`POOL_DIGESTS`), or None."""
    for name in POOL_DIGESTS:
        value = report.audit.inputs.get(name)
        if value:
            return name, str(value)
    return None


def _shared_pool(before: AuditReport, after: AuditReport) -> tuple[str, str]:
    a, b = pool_digest(before), pool_digest(after)
    if a is None or b is None:
        missing = "the earlier" if a is None else "the later"
        raise PoolMismatchError(
            f"Cannot compare the audits: {missing} names no pool digest (audit.inputs has "
            f"none of {list(POOL_DIGESTS)}). Got earlier {a}, later {b}. HINT: compare "
            "audits written by 'privacy-gate audit', 'score' or the Lightning callback."
        )
    if a != b:
        raise PoolMismatchError(
            f"Cannot compare audits of different pools: the earlier audit's {a[0]} is "
            f"{a[1]}, the later one's {b[0]} is {b[1]}. HINT: a diff compares two models "
            "audited on the same records; audit both on the same data."
        )
    return a


def _key_mismatch(before: AuditReport, after: AuditReport) -> str | None:
    """Why patient keys of the two audits cannot be matched, or None when they can."""
    schemes = (before.audit.pseudonyms, after.audit.pseudonyms)
    if schemes[0] != schemes[1]:
        return f"the audits use different patient keys ({schemes[0]} and {schemes[1]})"
    if schemes[0] == "raw":
        return None
    ids = (before.audit.pseudonym_key_id, after.audit.pseudonym_key_id)
    if ids[0] is None or ids[1] is None:
        return (
            "an audit's pseudonyms use a random, unstored key, so its patient keys match "
            "no other audit. HINT: set the same PRIVACY_GATE_PSEUDONYM_KEY for both audits"
        )
    if ids[0] != ids[1]:
        return (
            f"the audits' pseudonym keys differ (key ids {ids[0]} and {ids[1]}). HINT: set "
            "the same PRIVACY_GATE_PSEUDONYM_KEY for both audits"
        )
    return None


def _at_risk(report: AuditReport) -> frozenset[str] | None:
    keys = report.summary.at_risk_patients
    return None if keys is None else frozenset(keys)


def _strongest_auc(report: AuditReport) -> float | None:
    attack = report.aggregate.strongest_attack if report.aggregate else None
    return attack.auc if attack else None


def _tested_groups(report: AuditReport) -> dict[tuple[str, str], GroupResult]:
    """Groups the audit tested (the others carry no figures: too small, missing)."""
    return {
        (column, group): result
        for column, col in report.subgroups.items()
        for group, result in col.groups.items()
        if result.status is GroupStatus.TESTED
    }


def _figure(result: GroupResult | None, name: str) -> float | None:
    value = getattr(result, name) if result is not None else None
    return None if value is None else float(value)


def _subgroup_shifts(before: AuditReport, after: AuditReport) -> tuple[SubgroupShift, ...]:
    """Every group either audit tested, largest tail-rate change first."""
    old, new = _tested_groups(before), _tested_groups(after)
    gate_old = parse_config(before.audit.config, source="earlier audit's config").gate
    gate_new = parse_config(after.audit.config, source="later audit's config").gate

    def significant(result: GroupResult | None, alpha: float, family: int) -> bool:
        return result is not None and result.significant_at(alpha, family)

    shifts = []
    for column, group in sorted(old.keys() | new.keys()):
        a, b = old.get((column, group)), new.get((column, group))
        shifts.append(
            SubgroupShift(
                column=column,
                group=group,
                tail_rate=Change(_figure(a, "tail_rate"), _figure(b, "tail_rate")),
                relative_change=Change(
                    _figure(a, "relative_change"), _figure(b, "relative_change")
                ),
                max_patient_auc=Change(
                    _figure(a, "max_patient_auc"), _figure(b, "max_patient_auc")
                ),
                significant_before=significant(a, gate_old.subgroup_alpha, len(old)),
                significant_after=significant(b, gate_new.subgroup_alpha, len(new)),
            )
        )
    return tuple(sorted(shifts, key=lambda s: -abs(s.tail_rate.change or 0.0)))


def compare_reports(before: AuditReport, after: AuditReport) -> AuditComparison:
    """Compare two audits of the same pool (``before``: e.g. the champion's).

    Raises:
        PoolMismatchError: the audits are of different pools, or one names none.
    """
    pool = _shared_pool(before, after)
    reason = _key_mismatch(before, after)
    old, new = _at_risk(before), _at_risk(after)
    if reason is None and (old is None or new is None):
        reason = (
            "an audit predates the list of at-risk patients (report schema 2.1 or older). "
            "HINT: re-audit with this version"
        )
    newly: tuple[str, ...] = ()
    gone: tuple[str, ...] = ()
    still = 0
    if reason is None and old is not None and new is not None:
        newly, gone, still = tuple(sorted(new - old)), tuple(sorted(old - new)), len(old & new)
    return AuditComparison(
        pool=pool,
        worst_patient_auc=Change(before.summary.patient_auc.max, after.summary.patient_auc.max),
        patients_at_risk=Change(before.summary.patients_at_risk, after.summary.patients_at_risk),
        aggregate_auc=Change(_strongest_auc(before), _strongest_auc(after)),
        patients_matched=reason is None,
        unmatched_reason=reason,
        newly_at_risk=newly,
        no_longer_at_risk=gone,
        still_at_risk=still,
        subgroups=_subgroup_shifts(before, after),
    )


def _change_dict(change: Change) -> dict[str, float | None]:
    return {"before": change.before, "after": change.after, "change": change.change}


def comparison_to_dict(diff: AuditComparison) -> dict[str, object]:
    """The comparison as JSON-safe data (``comparison.json`` of ``privacy-gate diff``)."""
    return {
        "pool": {"digest": diff.pool[0], "value": diff.pool[1]},
        "worst_patient_auc": _change_dict(diff.worst_patient_auc),
        "patients_at_risk": _change_dict(diff.patients_at_risk),
        "aggregate_auc": _change_dict(diff.aggregate_auc),
        "patients_matched": diff.patients_matched,
        "unmatched_reason": diff.unmatched_reason,
        "newly_at_risk": list(diff.newly_at_risk),
        "no_longer_at_risk": list(diff.no_longer_at_risk),
        "still_at_risk": diff.still_at_risk,
        "subgroups": [
            {
                "column": s.column,
                "group": s.group,
                "tail_rate": _change_dict(s.tail_rate),
                "relative_change": _change_dict(s.relative_change),
                "max_patient_auc": _change_dict(s.max_patient_auc),
                "significant_before": s.significant_before,
                "significant_after": s.significant_after,
            }
            for s in diff.subgroups
        ],
    }
