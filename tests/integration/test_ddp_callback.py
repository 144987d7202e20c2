"""`PrivacyAuditCallback` in a real two-process DDP fit (gloo, CPU; `ddp_fit.py` runs as
Lightning's launcher needs a script): the ranks split the reference models, rank zero's
audit equals the single-process audit figure for figure, and a rank that fails stops
every rank, with the reason, without a hang."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pytorch_lightning")
pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("ddp_fit.py")
VOLATILE = {"created_at", "trained_now", "resumed", "training_seconds", "cache_key",
            "distributed", "trainer"}  # fmt: skip


def _run(
    out: Path, *arguments: str, namespace: str = "pytorch_lightning"
) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "DDP_FIT_NAMESPACE": namespace,
        "PRIVACY_GATE_PSEUDONYM_KEY": "ab" * 16,
        "PYTHONWARNINGS": "ignore",
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(out), *arguments],
        capture_output=True, text=True, timeout=300, env=environment, check=False,
    )  # fmt: skip


def _figures(value: Any) -> Any:
    """The report without what says how (not what) the models were trained."""
    if isinstance(value, dict):
        return {k: _figures(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_figures(v) for v in value]
    return value


@pytest.mark.parametrize(
    ("models", "group", "by_rank"),
    [(8, 2, [4, 4]), (6, 2, [4, 2])],
    ids=["even", "uneven"],
)
def test_ranks_split_the_reference_models_and_rank_zero_reports_the_single_process_audit(
    tmp_path: Path, models: int, group: int, by_rank: list[int]
) -> None:
    done = _run(tmp_path, "--models", str(models), "--group-size", str(group))
    assert done.returncode == 0, done.stderr[-3000:]
    distributed = json.loads((tmp_path / "audit" / "report.json").read_text())
    single = json.loads((tmp_path / "single" / "report.json").read_text())
    training = distributed["audit"]["training"]
    assert training["distributed"] == {
        "world_size": 2, "reference_models_by_rank": by_rank, "trained_now_by_rank": by_rank,
        "strategy": "DDPStrategy",
    }  # fmt: skip
    assert training["recipe"]["batch_size"] == 32  # 16 a rank, gradients averaged over 2
    assert distributed["audit"]["reference_models"] == models
    assert _figures(distributed) == _figures(single)  # bit for bit: same groups, same streams
    outcome = json.loads((tmp_path / "outcome.json").read_text())
    assert outcome["status"] == distributed["decision"]["status"]
    # Run again into the same directory: every rank resumes its share per model.
    again = _run(tmp_path, "--models", str(models), "--group-size", str(group))
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((tmp_path / "audit" / "report.json").read_text())
    assert resumed["audit"]["training"]["distributed"]["trained_now_by_rank"] == [0, 0]
    assert _figures(resumed) == _figures(distributed)


def test_the_lightning_namespace_splits_the_models_too(tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    done = _run(tmp_path, "--models", "4", "--group-size", "2", namespace="lightning.pytorch")
    assert done.returncode == 0, done.stderr[-3000:]
    distributed = json.loads((tmp_path / "audit" / "report.json").read_text())
    single = json.loads((tmp_path / "single" / "report.json").read_text())
    assert distributed["audit"]["training"]["distributed"]["reference_models_by_rank"] == [2, 2]
    assert _figures(distributed) == _figures(single)


def test_a_failing_verdict_raises_on_every_rank(tmp_path: Path) -> None:
    """on_fail='raise': PrivacyGateFailed on both ranks, so no rank goes on to release."""
    done = _run(tmp_path, "--models", "4", "--group-size", "2", "--strict")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    for rank in (0, 1):
        assert f"[rank{rank}]: privacy_gate.errors.PrivacyGateFailed" in output, rank
    assert (
        json.loads((tmp_path / "audit" / "report.json").read_text())["decision"]["status"] == "fail"
    )


def test_a_rank_that_fails_stops_every_rank_with_the_reason(tmp_path: Path) -> None:
    done = _run(tmp_path, "--models", "8", "--group-size", "2", "--fail-rank", "1")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "[rank0]: RuntimeError: The privacy audit's reference models failed on rank 1" in output
    assert "[rank1]: RuntimeError: simulated failure on rank 1" in output
    assert not (tmp_path / "audit" / "report.json").exists()
    assert not (tmp_path / "outcome.json").exists()
