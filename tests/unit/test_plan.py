"""The reference-model plan: balanced by patient, records of a patient together."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privacy_gate.errors import InputError
from privacy_gate.plan import draw_plan, plan_digest


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, 30), min_size=2, max_size=200),
    st.integers(1, 20).map(lambda h: 2 * h),
    st.integers(0, 2**31),
)
def test_each_patient_in_for_exactly_half_and_records_together(
    raw: list[int], k: int, seed: int
) -> None:
    _, patient_index = np.unique(raw, return_inverse=True)
    masks = draw_plan(patient_index, k, seed=seed)
    assert masks.shape == (k, len(raw)) and masks.dtype == bool
    assert (masks.sum(axis=0) == k // 2).all()
    for p in np.unique(patient_index):
        block = masks[:, patient_index == p]
        assert (block == block[:, :1]).all()


def test_seeded_and_digest_tracks_the_plan() -> None:
    index = np.arange(50) // 2
    a, b = draw_plan(index, 8, seed=3), draw_plan(index, 8, seed=3)
    c = draw_plan(index, 8, seed=4)
    assert (a == b).all() and plan_digest(a) == plan_digest(b)
    assert not (a == c).all() and plan_digest(a) != plan_digest(c)
    # Model subsets average half the pool (sizes vary by patient draw), and models differ.
    assert a.sum() == 4 * 50
    assert len({row.tobytes() for row in a}) == 8


@pytest.mark.parametrize("k", [0, 1, 3, 7, True, 2.0])
def test_bad_k(k: object) -> None:
    with pytest.raises(InputError):
        draw_plan(np.arange(4), k, seed=0)  # type: ignore[arg-type]
