"""Reference models split across ranks, in one process: each rank's share, stored on rank
zero, gives `run_audit` the report of the single-process audit (DDP itself runs in
tests/integration/test_ddp_callback.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tiny_audit import load_data, make_model

from privacy_gate.errors import ConfigError, InputError
from privacy_gate.training import run_audit
from privacy_gate.training.backends import BatchedBackend
from privacy_gate.training.recipe import Recipe
from privacy_gate.training.shares import RankShare, share_of, store_shares, train_share

RECIPE = Recipe(epochs=2, batch_size=16, learning_rate=0.05)


@pytest.mark.parametrize(
    ("n", "group", "world", "expected"),
    [
        (8, 2, 2, [[0, 1, 4, 5], [2, 3, 6, 7]]),
        (6, 4, 2, [[0, 1, 2, 3], [4, 5]]),
        (4, 1, 3, [[0, 3], [1], [2]]),
        (2, 4, 3, [[0, 1], [], []]),
    ],
)
def test_shares_are_whole_groups_dealt_round_robin(
    n: int, group: int, world: int, expected: list[list[int]]
) -> None:
    shares = [share_of(n, group, rank, world) for rank in range(world)]
    assert shares == expected
    assert sorted(k for share in shares for k in share) == list(range(n))
    with pytest.raises(InputError, match="rank 2 is outside a world of 2"):
        share_of(n, group, 2, 2)


def _options(out: Path) -> dict[str, Any]:
    return {"recipe": RECIPE, "reference_models": 6, "backend": BatchedBackend(group_size=2),
            "seed": 3, "out_dir": out, "device": "cpu"}  # fmt: skip


def test_the_ranks_shares_give_the_single_process_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRIVACY_GATE_PSEUDONYM_KEY", "cd" * 16)
    data = load_data()
    shares = [
        train_share(make_model, data, rank=rank, world_size=2, **_options(tmp_path / f"rank{rank}"))
        for rank in (0, 1)
    ]
    assert [sorted(s.scores) for s in shares] == [[0, 1, 4, 5], [2, 3]]
    assert [s.trained_now for s in shares] == [4, 2]
    zero = tmp_path / "zero"
    assert store_shares(make_model, data, shares, **_options(zero)) == {
        "reference_models_by_rank": [4, 2],
        "trained_now_by_rank": [4, 2],
    }
    again = train_share(make_model, data, rank=1, world_size=2, **_options(tmp_path / "rank1"))
    assert again.trained_now == 0  # resumed per model from the rank's store
    gathered = run_audit(make_model, data, plots=False, **_options(zero))
    assert gathered.report.audit.training.trained_now == 0  # every model came from a rank
    single = run_audit(make_model, data, plots=False, **_options(tmp_path / "single"))
    assert single.report.audit.training.trained_now == 6
    assert gathered.report.summary == single.report.summary
    assert gathered.report.decision == single.report.decision


def test_a_model_missing_or_twice_is_an_error(tmp_path: Path) -> None:
    data = load_data()
    share = train_share(make_model, data, rank=1, world_size=2, **_options(tmp_path / "r1"))
    nothing = RankShare({}, 0)
    with pytest.raises(InputError, match=r"no rank trained reference models \[0, 1, 4, 5\]"):
        store_shares(make_model, data, [nothing, share], **_options(tmp_path / "a"))
    with pytest.raises(InputError, match="model 2 came from ranks 0 and 1"):
        store_shares(make_model, data, [share, share], **_options(tmp_path / "b"))


def test_an_adaptive_audit_is_refused_under_multiple_ranks(tmp_path: Path) -> None:
    options = {**_options(tmp_path), "reference_models": "auto"}
    with pytest.raises(InputError, match="fixed even K"):
        train_share(make_model, load_data(), rank=0, world_size=2, **options)


def test_the_callback_refuses_what_a_multi_process_fit_cannot_audit() -> None:
    from lightning_callbacks._distributed import check_distributed
    from lightning_callbacks._settings import validate_settings

    def settings(**changes: Any) -> Any:
        given: dict[str, Any] = {
            "config": None, "holdout": None, "patient_ids": None, "subgroups": None,
            "reference_models": 8, "backend": "auto", "seed": 0, "on_fail": "raise",
            "output_dir": None, "model_factory": None, "task": "multiclass", "plots": False,
        }  # fmt: skip
        return validate_settings(**{**given, **changes})

    two = SimpleNamespace(world_size=2, callbacks=[])
    check_distributed(two, settings())
    check_distributed(
        SimpleNamespace(world_size=1, callbacks=[]), settings(reference_models="auto")
    )
    with pytest.raises(ConfigError, match="needs a fixed K"):
        check_distributed(two, settings(reference_models="auto"))
    json.dumps(settings().backend_options)  # plain values: they broadcast
