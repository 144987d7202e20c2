"""The SUPPORT2 cohort as an audit pool: 9,105 seriously ill hospitalised adults.

SUPPORT (the Study to Understand Prognoses and Preferences for Outcomes and Risks of
Treatments) followed adults hospitalised with one of nine life-threatening diagnoses at
five US medical centres. The copy used here ships with SurvSet (dataset ``support2``) and
loads without a network. One row per patient.

The task is binary: ``event`` (death during follow-up), as two output logits trained with
cross-entropy (`Task.MULTICLASS`, labels are int64 class indices).

Columns that leak the outcome are never features: ``time`` (follow-up time),
``num_surv2m`` / ``num_surv6m`` (the study's own survival model estimates),
``fac_sfdm2`` (functional outcome at two months), ``num_hday`` (day in hospital at entry)
and ``fac_dnr`` (do-not-resuscitate order). ``fac_num_co`` is dropped as an exact copy of
``num_num_co``.

Preprocessing: every statistic (medians, means, standard deviations) is fitted on the
training split only, so nothing of the holdout leaks into the candidate's features. The
feature layout (which numeric columns get a missing indicator, the categories of each
factor) is fixed by the cohort's schema, so the input size does not depend on the seed.

- numeric: median-imputed, standardised; plus a 0/1 missing indicator for every numeric
  column that can be missing in SUPPORT2;
- categorical (``fac_*``): one-hot over the column's categories plus ``missing`` (which
  also takes values never seen in the schema).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd  # type: ignore[import-untyped,unused-ignore]
import torch
from numpy.typing import NDArray

from privacy_gate.signals import Task
from privacy_gate.training.data import AuditData

__all__ = [
    "CATEGORICAL_COLUMNS",
    "LEAKING_COLUMNS",
    "NUMERIC_COLUMNS",
    "SUBGROUPS",
    "Preprocessor",
    "age_band",
    "feature_names",
    "load_frame",
    "load_support2",
    "split_by_patient",
    "subgroup_columns",
]

MISSING = "missing"

#: Never features: they encode the outcome or were recorded after it.
LEAKING_COLUMNS = ("time", "num_surv2m", "num_surv6m", "num_hday", "fac_sfdm2", "fac_dnr")
#: Dropped as a duplicate (the comorbidity count is also ``num_num_co``).
REDUNDANT_COLUMNS = ("fac_num_co",)

NUMERIC_COLUMNS = (
    "num_age",
    "num_num_co",
    "num_edu",
    "num_scoma",
    "num_sps",
    "num_meanbp",
    "num_wblc",
    "num_hrt",
    "num_resp",
    "num_temp",
    "num_pafi",
    "num_alb",
    "num_bili",
    "num_crea",
    "num_sod",
    "num_ph",
    "num_glucose",
    "num_bun",
    "num_urine",
    "num_adlp",
    "num_adls",
)
#: Numeric columns with no missing value in SUPPORT2 (no indicator for them).
ALWAYS_OBSERVED = ("num_age", "num_num_co")
INDICATED_COLUMNS = tuple(c for c in NUMERIC_COLUMNS if c not in ALWAYS_OBSERVED)

#: Each factor's categories (the SurvSet schema), in a fixed order; ``missing`` is added.
CATEGORICAL_COLUMNS: dict[str, tuple[str, ...]] = {
    "fac_sex": ("female", "male"),
    "fac_dzgroup": (
        "ARF/MOSF w/Sepsis",
        "CHF",
        "COPD",
        "Cirrhosis",
        "Colon Cancer",
        "Coma",
        "Lung Cancer",
        "MOSF w/Malig",
    ),
    "fac_dzclass": ("ARF/MOSF", "COPD/CHF/Cirrhosis", "Cancer", "Coma"),
    "fac_race": ("asian", "black", "hispanic", "other", "white"),
    "fac_diabetes": ("0", "1"),
    "fac_dementia": ("0", "1"),
    "fac_ca": ("metastatic", "no", "yes"),
    "fac_income": ("$11-$25k", "$25-$50k", ">$50k", "under $11k"),
}

#: Subgroup columns of the audit pool and the cohort column each comes from.
SUBGROUPS = ("race", "sex", "income", "age_band")
AGE_BANDS = ("18-39", "40-49", "50-59", "60-69", "70-79", "80+")

_REQUIRED = ("pid", "event", *NUMERIC_COLUMNS, *CATEGORICAL_COLUMNS)


def feature_names() -> list[str]:
    """Names of the feature columns, in the order of the loader's feature matrix."""
    names = list(NUMERIC_COLUMNS)
    names += [f"{c}_missing" for c in INDICATED_COLUMNS]
    for column, categories in CATEGORICAL_COLUMNS.items():
        names += [f"{column}={value}" for value in (*categories, MISSING)]
    return names


def load_frame() -> pd.DataFrame:
    """The SUPPORT2 table from SurvSet (offline): ``pid``, ``event``, ``time``, ``num_*``,
    ``fac_*``; one row per patient."""
    try:
        from SurvSet.data import SurvLoader
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The SUPPORT2 example needs the SurvSet package. HINT: pip install SurvSet"
        ) from error
    with warnings.catch_warnings():  # SurvSet's pickles name numpy.core (NumPy 2 warns)
        warnings.filterwarnings("ignore", message=r"numpy\.core", category=DeprecationWarning)
        frame, _reference = SurvLoader().load_dataset(ds_name="support2").values()
    absent = [c for c in _REQUIRED if c not in frame.columns]
    if absent:
        raise ValueError(f"SurvSet's support2 lacks the column(s) {absent}.")
    return pd.DataFrame(frame).reset_index(drop=True)


def split_by_patient(
    patient_ids: Sequence[object] | pd.Series, *, seed: int, holdout_fraction: float
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Row positions of the training and holdout splits, each in dataset order.

    Patients (not rows) are drawn, seeded, so all rows of a patient fall on one side.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must lie in (0, 1). Got {holdout_fraction!r}.")
    ids = pd.Series(np.asarray(patient_ids, dtype=object)).astype(str)
    patients = ids.unique()
    if len(patients) < 2:
        raise ValueError("The split needs at least 2 patients.")
    n_holdout = min(max(round(len(patients) * holdout_fraction), 1), len(patients) - 1)
    order = np.random.default_rng(seed).permutation(len(patients))
    held = ids.isin(patients[order[:n_holdout]]).to_numpy()
    return np.flatnonzero(~held), np.flatnonzero(held)


def _categorical_strings(values: pd.Series) -> pd.Series:
    """A factor as strings with ``missing`` for NaN (integer codes as ``"0"``, ``"1"``)."""
    return values.astype(object).where(values.notna(), MISSING).astype(str)


@dataclass(frozen=True)
class Preprocessor:
    """Imputation and standardisation statistics, fitted on the training split only."""

    medians: NDArray[np.float64]
    means: NDArray[np.float64]
    stds: NDArray[np.float64]

    @classmethod
    def fit(cls, train: pd.DataFrame) -> Preprocessor:
        values = train[list(NUMERIC_COLUMNS)].to_numpy(dtype=np.float64)
        medians = np.nanmedian(values, axis=0)
        medians = np.where(np.isnan(medians), 0.0, medians)  # a column missing in all rows
        imputed = np.where(np.isnan(values), medians, values)
        means = imputed.mean(axis=0)
        stds = imputed.std(axis=0)
        return cls(medians=medians, means=means, stds=np.where(stds > 0, stds, 1.0))

    @property
    def feature_names(self) -> list[str]:
        return feature_names()

    def transform(self, frame: pd.DataFrame) -> NDArray[np.float32]:
        """``(len(frame), n_features)`` float32 features (see `feature_names`)."""
        values = frame[list(NUMERIC_COLUMNS)].to_numpy(dtype=np.float64)
        missing = np.isnan(values)
        imputed = np.where(missing, self.medians, values)
        blocks = [(imputed - self.means) / self.stds]
        indicated = [NUMERIC_COLUMNS.index(c) for c in INDICATED_COLUMNS]
        blocks.append(missing[:, indicated].astype(np.float64))
        for column, categories in CATEGORICAL_COLUMNS.items():
            strings = _categorical_strings(frame[column]).to_numpy()
            levels = np.array([*categories, MISSING], dtype=object)
            known = np.isin(strings, levels[:-1])
            strings = np.where(known, strings, MISSING)
            blocks.append((strings[:, None] == levels[None, :]).astype(np.float64))
        features = np.concatenate(blocks, axis=1).astype(np.float32)
        assert features.shape[1] == len(feature_names())
        return features


def age_band(ages: NDArray[np.floating] | pd.Series) -> NDArray[np.str_]:
    """Age in years -> ``18-39``, ``40-49``, ..., ``80+`` (the cohort is adults only)."""
    index = np.digitize(np.asarray(ages, dtype=np.float64), [40, 50, 60, 70, 80])
    return np.asarray(AGE_BANDS)[index]


def subgroup_columns(frame: pd.DataFrame) -> dict[str, list[str]]:
    """The audit's subgroup columns of ``frame``'s rows; missing values read ``missing``."""
    return {
        "race": _categorical_strings(frame["fac_race"]).tolist(),
        "sex": _categorical_strings(frame["fac_sex"]).tolist(),
        "income": _categorical_strings(frame["fac_income"]).tolist(),
        "age_band": age_band(frame["num_age"]).tolist(),
    }


def load_support2(*, seed: int = 0, holdout_fraction: float = 0.5) -> AuditData:
    """SUPPORT2 split by patient into the candidate's training records and a holdout.

    Args:
        seed: seed of the patient split.
        holdout_fraction: share of patients held out (non-members of the candidate).

    Returns:
        `AuditData` with float32 features (`feature_names`), int64 labels (1 = died during
        follow-up), patient ids ``str(pid)`` and the subgroup columns ``race``, ``sex``,
        ``income``, ``age_band``, aligned with the pool (train rows, then holdout rows).
    """
    frame = load_frame()
    train_rows, holdout_rows = split_by_patient(
        frame["pid"], seed=seed, holdout_fraction=holdout_fraction
    )
    train, holdout = frame.iloc[train_rows], frame.iloc[holdout_rows]
    preprocessor = Preprocessor.fit(train)
    pool = pd.concat([train, holdout])
    return AuditData(
        train_inputs=torch.from_numpy(preprocessor.transform(train)),
        train_labels=torch.from_numpy(train["event"].to_numpy(dtype=np.int64, copy=True)),
        holdout_inputs=torch.from_numpy(preprocessor.transform(holdout)),
        holdout_labels=torch.from_numpy(holdout["event"].to_numpy(dtype=np.int64, copy=True)),
        task=Task.MULTICLASS,
        patient_ids=pool["pid"].astype(str).tolist(),
        columns=subgroup_columns(pool),
    )
