"""``reference_models: auto`` end to end on a tiny real PyTorch model: the looks, the
equality with a fixed-K audit of the same seed, resuming mid-round, and bad settings."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from tiny_audit import FlakyFactory, load_data, make_model

from privacy_gate.adaptive import AdaptivePlan
from privacy_gate.cli import main
from privacy_gate.config import parse_config
from privacy_gate.errors import InputError
from privacy_gate.training.audit import run_audit
from privacy_gate.training.recipe import Recipe

RECIPE = Recipe(epochs=2, batch_size=16, learning_rate=0.01)
# The power rule needs K = 22 for these 120 patients: the look at 16 stays open.
POLICY = parse_config({"subgroups": ["site"], "risk": {"min_group_size": 5},
                       "gate": {"max_patient_auc": 1.0, "max_detectable_auc": 0.9999}})  # fmt: skip
PLAN = AdaptivePlan(round_size=16, max_reference_models=64)
REPO = Path(__file__).parents[2]


@pytest.fixture(autouse=True)
def _stable_pseudonyms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIVACY_GATE_PSEUDONYM_KEY", "test-key")


def _audit(out: Path, factory: Any = make_model, **options: Any) -> Any:
    settings: dict[str, Any] = {"recipe": RECIPE, "config": POLICY, "reference_models": PLAN,
                                "backend": "sequential", "seed": 1, "out_dir": out,
                                "plots": False}  # fmt: skip
    settings.update(options)
    return run_audit(factory, load_data(), **settings)


def test_auto_passes_at_the_power_k_and_equals_the_fixed_k_audit(tmp_path: Path) -> None:
    auto = _audit(tmp_path / "auto")
    adaptive = auto.report.adaptive
    assert adaptive is not None and adaptive.stopped == "pass_settled"
    assert [look.reference_models for look in adaptive.looks] == [16, 32]
    assert adaptive.looks[0].violated == ("max_detectable_auc",)
    assert adaptive.reference_models_saved == 32
    assert auto.report.audit.reference_models == 32
    assert auto.report.audit.training is not None
    assert auto.report.audit.training.trained_now == 32  # 16 per round, none twice
    assert auto.decision.passed

    fixed = _audit(tmp_path / "fixed", reference_models=32)
    assert fixed.report.adaptive is None
    ours, theirs = auto.report.to_dict(), fixed.report.to_dict()
    for section in ("summary", "aggregate", "subgroups"):
        assert ours[section] == theirs[section], section  # the same models, the same figures
    assert ours["audit"]["plan"] == theirs["audit"]["plan"]
    with (
        np.load(tmp_path / "auto" / "membership.npz") as a,
        np.load(tmp_path / "fixed" / "membership.npz") as b,
    ):
        np.testing.assert_array_equal(a["masks"], b["masks"])


def test_an_interrupted_adaptive_audit_resumes_at_the_model_where_it_stopped(
    tmp_path: Path,
) -> None:
    """Factory calls: 1-2 = model identity and starting point, 3-18 the first round, 19
    the candidate, then the second round; the 26th call is its seventh model, so 22
    models are stored."""
    with pytest.raises(KeyboardInterrupt):
        _audit(tmp_path / "resumed", FlakyFactory(fail_at=26))
    cache = next((tmp_path / "resumed" / ".privacy_gate_cache").iterdir())
    stored = len(list(cache.glob("reference_*.npy")))
    assert stored == 22
    resumed = _audit(tmp_path / "resumed", FlakyFactory())
    assert resumed.report.audit.training.trained_now == 32 - stored
    fresh = _audit(tmp_path / "fresh")
    assert resumed.report.summary == fresh.report.summary
    assert resumed.report.adaptive == fresh.report.adaptive
    assert resumed.report.decision == fresh.report.decision


def test_rounds_must_hold_whole_batched_groups(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"multiples of the .batched. backend.s group size"):
        _audit(tmp_path, reference_models=AdaptivePlan(round_size=8, max_reference_models=32),
               backend="batched")  # fmt: skip


def _job(tmp_path: Path, **changes: Any) -> Path:
    job: dict[str, Any] = {
        "model": "tests.integration.tiny_audit:make_model",
        "data": "tests.integration.tiny_audit:load_data",
        "recipe": {"epochs": 2, "batch_size": 16, "learning_rate": 0.01},
        "reference_models": "auto",
        "max_reference_models": 32,
        "backend": "batched",
        "out": str(tmp_path / "out"),
        "policy": {"gate": {"max_patient_auc": 1.0, "max_detectable_auc": 0.9999}},
    }
    job.update(changes)
    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_cli_audit_with_auto_reports_its_looks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(REPO)
    assert main(["audit", "--config", str(_job(tmp_path))]) == 0  # passes at K = 32
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Adaptive audit" in report and "pass settled" in report
    assert "32 reference models: max patient AUC" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"max_reference_models": 8}, "'max_reference_models'.*at least one round"),
        ({"round_size": 15}, "'round_size'.*even"),
        ({"reference_models": 64, "max_reference_models": 128}, "only with reference_models"),
        ({"reference_models": "some"}, "'reference_models'.*'auto'"),
    ],
)
def test_bad_adaptive_settings_exit_2_naming_the_field(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    changes: dict[str, Any],
    needle: str,
) -> None:
    monkeypatch.chdir(REPO)
    assert main(["-q", "audit", "--config", str(_job(tmp_path, **changes))]) == 2

    assert re.search(needle, capsys.readouterr().err), needle
