"""Aggregate attacks on the release candidate: LiRA (online, offline, fixed variance)
and RMIA, each scored as a ROC over the candidate's members vs non-members.

Every attack maps a record's score under the release candidate to a membership score
(higher means more likely a member), using that record's reference-model moments. The
strongest attack (highest AUC; highest TPR at each FPR) is the one the gate sees. Each
attack is one `AttackSpec` in `ATTACKS`; a new one is one `register_attack` call.
"""

from __future__ import annotations

from privacy_gate.attacks import lira_attack, rmia_attack
from privacy_gate.attacks.lira_attack import lira_offline, lira_online
from privacy_gate.attacks.registry import (
    ATTACKS,
    AggregateResult,
    AttackInputs,
    AttackSpec,
    register_attack,
    run_attacks,
    unregister_attack,
)
from privacy_gate.attacks.rmia_attack import (
    RMIA_OFFLINE_A_FALLBACK,
    RMIA_OFFLINE_A_GRID,
    rmia,
    tune_rmia_offline_a,
)
from privacy_gate.attacks.roc import AttackResult, roc_auc, roc_curve, tpr_at_fpr

__all__ = [
    "ATTACKS",
    "RMIA_OFFLINE_A_FALLBACK",
    "RMIA_OFFLINE_A_GRID",
    "AggregateResult",
    "AttackInputs",
    "AttackResult",
    "AttackSpec",
    "lira_offline",
    "lira_online",
    "register_attack",
    "rmia",
    "roc_auc",
    "roc_curve",
    "run_attacks",
    "tpr_at_fpr",
    "tune_rmia_offline_a",
    "unregister_attack",
]

for _spec in (*lira_attack.SPECS, *rmia_attack.SPECS):
    register_attack(_spec)
