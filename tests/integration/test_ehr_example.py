"""The SUPPORT2 example (examples/ehr): loader, preprocessing, model factory, config."""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("SurvSet")
torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # examples/ is importable from the repository root
    sys.path.insert(0, str(ROOT))

from examples.ehr import data as ehr_data  # noqa: E402
from examples.ehr.model import N_FEATURES, make_model  # noqa: E402
from privacy_gate.config import default_config, parse_config  # noqa: E402
from privacy_gate.signals import Task  # noqa: E402
from privacy_gate.training.data import AuditData  # noqa: E402
from privacy_gate.training.recipe import parse_recipe  # noqa: E402
from privacy_gate.training.sequential import train_one  # noqa: E402

N_PATIENTS = 9105


@pytest.fixture(scope="module")
def audit_data() -> AuditData:
    return ehr_data.load_support2(seed=0)


@pytest.fixture(scope="module")
def frame():  # type: ignore[no-untyped-def]
    return ehr_data.load_frame()


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_split_by_patient_about_half(audit_data: AuditData) -> None:
    n_train, n_holdout = len(audit_data.train_inputs), len(audit_data.holdout_inputs)
    assert n_train + n_holdout == audit_data.n_records == N_PATIENTS
    assert abs(n_train - n_holdout) <= 1
    ids = list(audit_data.patient_ids or [])
    assert len(ids) == N_PATIENTS and len(set(ids)) == N_PATIENTS
    assert not set(ids[:n_train]) & set(ids[n_train:])
    assert all(isinstance(p, str) for p in ids)
    assert audit_data.task is Task.MULTICLASS


def test_split_is_seeded_and_keeps_dataset_order(frame) -> None:  # type: ignore[no-untyped-def]
    train, holdout = ehr_data.split_by_patient(frame["pid"], seed=3, holdout_fraction=0.5)
    again, _ = ehr_data.split_by_patient(frame["pid"], seed=3, holdout_fraction=0.5)
    other, _ = ehr_data.split_by_patient(frame["pid"], seed=4, holdout_fraction=0.5)
    np.testing.assert_array_equal(train, again)
    assert not np.array_equal(train, other)
    assert np.all(np.diff(train) > 0) and np.all(np.diff(holdout) > 0)
    assert sorted(np.r_[train, holdout].tolist()) == list(range(N_PATIENTS))
    quarter, _ = ehr_data.split_by_patient(frame["pid"], seed=0, holdout_fraction=0.25)
    assert len(quarter) == N_PATIENTS - round(N_PATIENTS * 0.25)


def test_patients_with_several_rows_stay_together() -> None:
    ids = ["a", "a", "b", "c", "c", "c", "d", "e"]
    for seed in range(10):
        train, holdout = ehr_data.split_by_patient(ids, seed=seed, holdout_fraction=0.5)
        assert not {ids[i] for i in train} & {ids[i] for i in holdout}


def test_no_leaking_column_is_a_feature(audit_data: AuditData) -> None:
    names = ehr_data.feature_names()
    assert len(names) == len(set(names)) == N_FEATURES == audit_data.train_inputs.shape[1]
    sources = {name.split("=")[0].removesuffix("_missing") for name in names}
    leaking = {*ehr_data.LEAKING_COLUMNS, "pid", "event"}
    assert not sources & leaking
    assert all(source.startswith(("num_", "fac_")) for source in sources)


def test_missing_indicators_cover_the_missing_columns(frame) -> None:  # type: ignore[no-untyped-def]
    numeric = frame[list(ehr_data.NUMERIC_COLUMNS)]
    with_missing = tuple(c for c in ehr_data.NUMERIC_COLUMNS if numeric[c].isna().any())
    assert with_missing == ehr_data.INDICATED_COLUMNS
    for column, categories in ehr_data.CATEGORICAL_COLUMNS.items():
        values = set(frame[column].astype(str)) - {ehr_data.MISSING}
        assert values == set(categories), column


def test_features_are_finite_float32(audit_data: AuditData) -> None:
    for features in (audit_data.train_inputs, audit_data.holdout_inputs):
        assert features.dtype == torch.float32
        assert bool(torch.isfinite(features).all())
    for labels in (audit_data.train_labels, audit_data.holdout_labels):
        assert labels.dtype == torch.int64
        assert set(labels.tolist()) == {0, 1}


def test_standardisation_is_fitted_on_train_only(audit_data: AuditData) -> None:
    n_numeric = len(ehr_data.NUMERIC_COLUMNS)
    train = audit_data.train_inputs[:, :n_numeric].double()
    holdout = audit_data.holdout_inputs[:, :n_numeric].double()
    torch.testing.assert_close(train.mean(0), torch.zeros(n_numeric, dtype=torch.float64))
    torch.testing.assert_close(train.std(0, unbiased=False), torch.ones(n_numeric).double())
    assert bool((holdout.mean(0).abs() > 1e-4).all())
    # one-hot blocks and indicators are 0/1
    rest = audit_data.train_inputs[:, n_numeric:]
    assert bool(((rest == 0) | (rest == 1)).all())


def test_preprocessor_ignores_the_holdout(frame) -> None:  # type: ignore[no-untyped-def]
    train, holdout = ehr_data.split_by_patient(frame["pid"], seed=0, holdout_fraction=0.5)
    fitted = ehr_data.Preprocessor.fit(frame.iloc[train])
    shifted = frame.copy()
    shifted.loc[shifted.index[holdout], "num_age"] += 100.0
    refitted = ehr_data.Preprocessor.fit(shifted.iloc[train])
    np.testing.assert_array_equal(fitted.means, refitted.means)
    np.testing.assert_array_equal(fitted.medians, refitted.medians)


def test_subgroups_aligned_with_the_pool(audit_data: AuditData, frame) -> None:  # type: ignore[no-untyped-def]
    columns = audit_data.columns
    assert set(columns) == set(ehr_data.SUBGROUPS)
    assert all(len(v) == N_PATIENTS for v in columns.values())
    assert set(columns["race"]) == {"white", "black", "hispanic", "other", "asian", "missing"}
    assert Counter(columns["race"])["missing"] == 42
    assert set(columns["sex"]) == {"female", "male"}
    assert set(columns["income"]) == {
        "under $11k",
        "$11-$25k",
        "$25-$50k",
        ">$50k",
        "missing",
    }
    assert set(columns["age_band"]) == set(ehr_data.AGE_BANDS)
    by_pid = frame.set_index(frame["pid"].astype(str))
    pool_ids = list(audit_data.patient_ids or [])
    rows = by_pid.loc[pool_ids]
    assert columns["sex"] == rows["fac_sex"].astype(str).tolist()
    assert columns["race"] == rows["fac_race"].astype(str).tolist()
    ages = rows["num_age"].to_numpy()
    bands = np.asarray(columns["age_band"])
    assert ages[bands == "18-39"].max() < 40 and ages[bands == "80+"].min() >= 80
    assert ((ages[bands == "60-69"] >= 60) & (ages[bands == "60-69"] < 70)).all()
    # the labels follow the same order
    pool_labels = torch.cat([audit_data.train_labels, audit_data.holdout_labels])
    assert pool_labels.tolist() == rows["event"].tolist()


def test_make_model_fits_the_features(audit_data: AuditData) -> None:
    model = make_model()
    model.eval()
    with torch.no_grad():
        logits = model(audit_data.holdout_inputs[:17])
    assert logits.shape == (17, 2)
    assert make_model(hidden=(8,), dropout=0.0)(audit_data.train_inputs[:3]).shape == (3, 2)


def test_quick_training_beats_the_majority_class(audit_data: AuditData, one_thread: None) -> None:
    inputs, labels = audit_data.pool()
    n_train = len(audit_data.train_inputs)
    recipe = parse_recipe({"epochs": 3, "batch_size": 128, "learning_rate": 0.001})
    model = train_one(make_model, inputs, labels, np.arange(n_train), recipe, seed=0)
    model.eval()
    with torch.no_grad():
        predicted = model(audit_data.holdout_inputs).argmax(1)
    accuracy = float((predicted == audit_data.holdout_labels).float().mean())
    rate = float(audit_data.holdout_labels.float().mean())
    majority = max(rate, 1 - rate)
    assert accuracy > majority + 0.03, (accuracy, majority)


def test_audit_config_uses_the_default_rules() -> None:
    config = yaml.safe_load((ROOT / "examples/ehr/audit.yaml").read_text(encoding="utf-8"))
    assert config["model"] == "examples.ehr.model:make_model"
    assert config["data"] == "examples.ehr.data:load_support2"
    assert config["reference_models"] >= 32
    parse_recipe(config["recipe"])
    policy = parse_config(config["policy"]).to_dict()
    default = default_config().to_dict()
    assert policy["subgroups"] == ["race", "sex", "age_band", "income"]
    assert policy["risk"] == default["risk"]
    # The default rules plus the subgroup rule, which needs the example's columns.
    subgroup_rule = {"max_subgroup_relative_change": 1.0, "subgroup_alpha": 0.05}
    assert policy["gate"] == {**default["gate"], **subgroup_rule}
