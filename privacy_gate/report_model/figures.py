"""The report's ``summary`` section: patient-level figures, the noise floor, the audit's
power and the exposed tail, as typed fields (names are the JSON keys)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from privacy_gate.noise_floor import NoiseFloor
from privacy_gate.report_model.codec import OMIT_NONE

__all__ = ["Distribution", "Histogram", "Power", "Summary", "Survival", "Tail", "TopPatient"]


@dataclass(frozen=True)
class Distribution:
    """Max, mean, median and upper quantiles of a set of AUCs (None when not finite)."""

    max: float | None
    mean: float | None
    median: float | None
    q90: float | None
    q99: float | None


@dataclass(frozen=True)
class Histogram:
    """Counts of patient AUCs in ``len(edges) - 1`` bins over [0.5, 1]."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]


@dataclass(frozen=True)
class Survival:
    """Share of patients with AUC at least each grid point, with a 95% band."""

    auc: tuple[float, ...]
    share: tuple[float, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]


@dataclass(frozen=True)
class Tail:
    """The exposed patient tail of the subgroup analysis (ties at the boundary in)."""

    quantile: float
    target: int
    patients: int
    threshold: float | None


@dataclass(frozen=True)
class Power:
    """What the at-risk test can detect at this K, and the K the policy's power rules need.

    Attributes:
        alpha: the level one exposed patient must reach (``fdr / n_patients``).
        detectable_auc: smallest true record AUC found with ``power``, at the least
            favourable IN/OUT counts ``n_in``, ``n_out``.
        count_pairs: every distinct ``[n_in, n_out, n_records]`` of the audit.
        reference_models_needed: None when no K up to 4096 suffices.
        max_records, detectable_auc_max_records: the most records of one patient, and the
            detectable AUC of one leaking record of such a patient (its p-value is
            multiplied by the record count); absent when every patient has one record.
        beta: the Berger-Boos ``beta`` of the at-risk p-values (`privacy_gate.at_risk`);
            absent in reports of schema 2.3 and older (their test used Welch's df).
    """

    alpha: float
    power: float
    detectable_auc: float
    n_in: int
    n_out: int
    count_pairs: tuple[tuple[int, ...], ...]
    reference_models_needed: int | None
    max_records: int | None = field(default=None, metadata=OMIT_NONE)
    detectable_auc_max_records: float | None = field(default=None, metadata=OMIT_NONE)
    beta: float | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True)
class TopPatient:
    """One of the most exposed patients, under its pseudonym."""

    patient_key: str
    n_records: int
    auc_max: float | None
    auc_mean: float | None
    auc_se: float | None


@dataclass(frozen=True)
class Summary:
    """Patient-level risk.

    Attributes:
        patients_at_risk: patients confidently above ``at_risk_auc`` (BH at ``fdr``).
        patients_at_risk_raw: patients whose point estimate is above it (untested).
        at_risk_p_values: sorted patient p-values up to 0.5 (the gate re-counts at its FDR).
        tail_counts: patients with AUC at least each level (the level as a string).
        at_risk_patients: the keys of the ``patients_at_risk`` patients, most significant
            first (None in reports of schema 2.1 and older); a diff against another audit
            of the pool (`privacy_gate.comparison`) matches them.
    """

    patient_auc: Distribution
    patient_auc_mean: Distribution
    record_auc: Distribution
    tail_counts: Mapping[str, int]
    at_risk_auc: float
    fdr: float
    patients_at_risk: int
    patients_at_risk_raw: int
    fraction_at_risk: float
    at_risk_test: str
    at_risk_p_values: tuple[float, ...]
    tail: Tail
    noise_floor: NoiseFloor
    power: Power
    histogram: Histogram
    survival: Survival
    top_patients: tuple[TopPatient, ...]
    at_risk_patients: tuple[str, ...] | None = field(default=None, metadata=OMIT_NONE)
