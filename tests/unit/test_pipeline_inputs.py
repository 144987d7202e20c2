"""Records against signals, checked by the pipeline before any figure is computed."""

from __future__ import annotations

import pytest
from signal_arrays import N, balanced_arrays

from privacy_gate.errors import InputError
from privacy_gate.pipeline import audit
from privacy_gate.pseudonyms import Pseudonymizer
from privacy_gate.records import (
    records_from_columns,
)
from privacy_gate.signals import make_signals

# --- records vs signals (through the pipeline) -------------------------------------------


@pytest.mark.parametrize("n_rows", [N - 1, N + 1])
def test_row_count_differs_from_signals(n_rows: int) -> None:
    scores, masks = balanced_arrays()
    records = records_from_columns([f"r{i}" for i in range(n_rows)])
    with pytest.raises(InputError) as info:
        audit(make_signals(scores, masks), records, pseudonymizer=Pseudonymizer(key=b"k"))
    message = str(info.value)
    assert f"{n_rows} rows" in message
    assert f"{N} records" in message


def test_unknown_subgroup_column_through_the_pipeline() -> None:
    from privacy_gate.config import parse_config

    scores, masks = balanced_arrays()
    records = records_from_columns([f"r{i}" for i in range(N)], None, {"sex": ["F"] * N})
    config = parse_config({"subgroups": ["race"], "gate": {"max_patient_auc": 0.99}})
    with pytest.raises(InputError, match=r"'race'.*\['sex'\]"):
        audit(make_signals(scores, masks), records, config, pseudonymizer=Pseudonymizer(key=b"k"))
