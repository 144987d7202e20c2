"""Adaptive audits run as looks: reveal K reference models, audit, settle, repeat.

`privacy_gate.adaptive` decides what one look settles; this runs the looks of an
`AdaptivePlan`. The models come from ``reveal(k)``: the signals of the first ``k``
reference models of one nested plan (the training edge trains them when asked; tests
draw them), so the loop needs no torch and the same code runs for every backend.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from privacy_gate.adaptive import AdaptivePlan, settle
from privacy_gate.config import AuditConfig
from privacy_gate.errors import InputError
from privacy_gate.finish import AuditResult, SectionsOf, finish
from privacy_gate.pipeline import assess
from privacy_gate.records import RecordTable
from privacy_gate.report_model import Look, LookOutcome
from privacy_gate.signals import Signals

__all__ = ["audit_in_rounds", "look_line"]

_LOG = logging.getLogger("privacy_gate.adaptive")


def look_line(look: Look, number: int, planned: int) -> str:
    """One look in words, for the progress log ("look 2/5: K = 32, open: noise_floor")."""
    head = f"look {number}/{planned}: K = {look.reference_models}"
    if look.outcome is LookOutcome.FAIL_SETTLED:
        return f"{head}, fail settled by {', '.join(look.settled)}"
    if look.outcome is LookOutcome.PASS_SETTLED:
        return f"{head}, pass settled (every rule, the power rules included)"
    return f"{head}, open: {', '.join(look.violated) or '-'}"


def audit_in_rounds(
    reveal: Callable[[int], Signals],
    records: RecordTable,
    config: AuditConfig,
    plan: AdaptivePlan,
    *,
    sections_of: SectionsOf | None = None,
    **audit_options: Any,
) -> AuditResult:
    """Audit at each look of ``plan`` until one settles the verdict (or the maximum).

    Args:
        reveal: ``reveal(k)`` gives the signals of the first ``k`` reference models
            (trained on demand); ``k`` runs through ``plan.schedule``.
        records, config: as for `privacy_gate.pipeline.audit`.
        sections_of: what the caller adds to the last look's figures
            (`privacy_gate.finish.Sections`), as for `privacy_gate.pipeline.audit`.
        audit_options: passed to `privacy_gate.pipeline.assess` at every look.

    Returns:
        The last look's audit, with the ``adaptive`` section; an audit that reached the
        maximum unsettled carries a warning (its verdict is the last look's).
    """
    looks: list[Look] = []
    planned = len(plan.schedule)
    figures: AuditResult | None = None
    for k in plan.schedule:
        if looks:
            _LOG.info(
                "Adaptive audit, round %d/%d: training up to K = %d (open: %s).",
                len(looks) + 1,
                planned,
                k,
                ", ".join(looks[-1].violated) or "-",
            )
        signals = reveal(k)
        if signals.n_reference_models != k:
            raise InputError(
                f"reveal({k}) must give the signals of {k} reference models. Got "
                f"{signals.n_reference_models} instead."
            )
        figures = assess(signals, records, config, **audit_options)
        look = settle(finish(figures, config).report, config, plan)
        looks.append(look)
        _LOG.info("Adaptive audit, %s.", look_line(look, len(looks), planned))
        if look.outcome is not LookOutcome.OPEN:
            break
    assert figures is not None  # a schedule has at least one look
    # The report: the last look's figures with the looks, decided once on them (a settled
    # fail's power messages, an unsettled audit's caveat: `gate.evaluate_gate`).
    record = plan.record(tuple(looks), config)
    return finish(figures, config, sections_of=sections_of, adaptive=record)
