"""Every registered training backend keeps the contract: it trains the same small case to
the same report as ``sequential`` (within float rounding), and a backend registered in one
place (here, in the test) is reachable from audit.yaml and `run_audit` by its name."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from test_ray_backend import (  # the helpers and the module's local Ray instance
    RECIPE,
    _assert_same_report,
    _audit,
    _records,
    _stable_pseudonyms,
    local_ray,
    one_thread,
)

from privacy_gate.errors import ConfigError, InputError
from privacy_gate.training.backends import (
    BACKENDS,
    BackendSpec,
    Supports,
    check_supported,
    register_backend,
    unregister_backend,
)
from privacy_gate.training.job import parse_job
from privacy_gate.training.progress import Progress
from privacy_gate.training.recipe import DPSettings
from privacy_gate.training.reference import (
    ReferenceJob,
    TrainingBackend,
    TrainingRun,
    reference_name,
    train_and_score,
)

DP_RECIPE = replace(RECIPE, dp=DPSettings(noise_multiplier=1.0, max_grad_norm=1.0))

__all__ = ["_stable_pseudonyms", "local_ray"]  # fixtures: used by name, one autouse


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_backend_trains_the_report_of_the_sequential_one(
    name: str, local_ray: Any, tmp_path: Path
) -> None:
    with one_thread():
        sequential = _audit(tmp_path / "sequential", backend="sequential")
        other = _audit(tmp_path / name, backend=name)
    _assert_equivalent(sequential, other, tmp_path / "sequential", tmp_path / name)
    assert other.report.audit.training.backend in BACKENDS


def _assert_equivalent(one: Any, other: Any, out_one: Path, out_other: Path) -> None:
    """The same figures up to the rounding of another summation order (batched matrix
    products: record AUCs differ by about 3e-7 here), so near-tied patients may swap
    places in the top list; the same verdict on the same rules."""
    rows_one, rows_other = _records(out_one), _records(out_other)
    assert [r["record_id"] for r in rows_one] == [r["record_id"] for r in rows_other]
    np.testing.assert_allclose(
        [float(r["auc"]) for r in rows_one], [float(r["auc"]) for r in rows_other], atol=1e-5
    )
    a, b = one.report, other.report
    for figure in ("max", "mean", "median", "q90", "q99"):
        assert getattr(a.summary.patient_auc, figure) == pytest.approx(
            getattr(b.summary.patient_auc, figure), abs=1e-5
        ), figure
    assert a.summary.noise_floor.max_patient_auc_q95 == pytest.approx(
        b.summary.noise_floor.max_patient_auc_q95, abs=1e-5
    )
    assert a.aggregate is not None and b.aggregate is not None
    for attack, figures in a.aggregate.attacks.items():
        assert figures.auc == pytest.approx(b.aggregate.attacks[attack].auc, abs=1e-5), attack
    assert a.decision.status == b.decision.status
    assert [v.rule for v in a.decision.violations] == [v.rule for v in b.decision.violations]


@dataclass(frozen=True)
class NewestFirst:
    """Trains the missing reference models one at a time, the last-planned first (each
    model's seed and subset are its own, so the order changes no figure)."""

    pause_s: float = 0.0
    name: ClassVar[str] = "newest_first"

    def train(self, job: ReferenceJob) -> TrainingRun:
        inputs, labels = job.data.pool()
        todo = job.todo()
        started = time.perf_counter()
        with Progress(job.plan.n_models, initial=job.plan.n_models - len(todo)) as progress:
            for k in reversed(todo):
                scores = train_and_score(
                    job.factory, inputs, labels, job.plan.subset(k), job.recipe,
                    job.plan.seeds[k], f"reference model {k}", job.data.task,
                    job.augmentations, device=job.device,
                )  # fmt: skip
                job.store.save(reference_name(k), scores)
                time.sleep(self.pause_s)
                progress.update()
        return TrainingRun(
            backend=self.name,
            fallback_reason=None,
            trained_now=len(todo),
            resumed=job.plan.n_models - len(todo),
            training_seconds=round(time.perf_counter() - started, 3),
            details={"device": str(job.device)},
        )


def _pause(value: Any, owner: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InputError(f"The 'pause_s' parameter of {owner} must be seconds >= 0. Got {value!r}.")
    return float(value)


class _NewestFirstSpec(BackendSpec):
    name = "newest_first"
    options: ClassVar[dict[str, Any]] = {"pause_s": _pause}

    def build(self, **options: Any) -> TrainingBackend:
        return NewestFirst(**options)


@pytest.fixture
def newest_first() -> Iterator[BackendSpec]:
    spec = register_backend(_NewestFirstSpec())
    try:
        yield spec
    finally:
        unregister_backend(spec.name)


def test_a_backend_registered_in_one_place_runs_an_audit(
    newest_first: BackendSpec, tmp_path: Path
) -> None:
    job = {"model": "m:f", "data": "d:g", "backend": "newest_first", "pause_s": 0.01}
    assert parse_job(job).backend_options == {"pause_s": 0.01}
    with pytest.raises(ConfigError, match="'pause_s' parameter of audit config"):
        parse_job({**job, "pause_s": -1})
    with pytest.raises(ConfigError, match="applies to backend 'newest_first'"):
        parse_job({**job, "backend": "auto"})

    with one_thread():
        sequential = _audit(tmp_path / "sequential", backend="sequential")
        newest = _audit(tmp_path / "newest", backend="newest_first")
    _assert_same_report(sequential, newest, tmp_path / "sequential", tmp_path / "newest")
    assert newest.report.audit.training.backend == "newest_first"


def test_a_backend_name_must_be_new_and_an_identifier(newest_first: BackendSpec) -> None:
    with pytest.raises(ValueError, match="newest_first"):
        register_backend(_NewestFirstSpec())
    assert "newest_first" in BACKENDS


@dataclass(frozen=True)
class CpuOnce(NewestFirst):
    name: ClassVar[str] = "cpu_once"


class _CpuOnceSpec(_NewestFirstSpec):
    """The same backend, declaring less: no DP-SGD, no rounds, CPU only."""

    name = "cpu_once"

    def build(self, **options: Any) -> TrainingBackend:
        return CpuOnce(**options)

    supports: ClassVar[Supports] = Supports(
        dp_sgd=False, adaptive=False, devices=frozenset({"cpu"})
    )


def test_what_a_backend_does_not_support_is_refused_before_training(tmp_path: Path) -> None:
    spec = register_backend(_CpuOnceSpec())
    try:
        backend = spec.build()
        asked = {
            "dp_sgd": "a backend that trains with DP-SGD",
            "rounds": "a backend that trains in rounds",
        }
        with pytest.raises(InputError, match=asked["dp_sgd"]) as refused:
            check_supported(backend, dp_sgd=True, rounds=None, device_type="cpu", owner="x")
        assert "'cpu_once'" in str(refused.value)
        with pytest.raises(InputError, match=asked["rounds"]):
            check_supported(backend, dp_sgd=False, rounds=(8, 16), device_type="cpu", owner="x")
        with pytest.raises(InputError, match="one of \\['cpu'\\] for backend 'cpu_once'"):
            check_supported(backend, dp_sgd=False, rounds=None, device_type="cuda", owner="x")
        # Through run_audit: refused before a model trains (nothing stored).
        with pytest.raises(InputError, match=asked["rounds"]):
            _audit(tmp_path / "auto", backend="cpu_once", reference_models="auto")
        with pytest.raises(InputError, match=asked["dp_sgd"]):
            _audit(tmp_path / "dp", backend="cpu_once", recipe=DP_RECIPE)
        assert not (tmp_path / "auto").exists() and not (tmp_path / "dp").exists()
        check_supported(backend, dp_sgd=False, rounds=None, device_type="cpu", owner="x")
    finally:
        unregister_backend(spec.name)


def test_the_built_in_backends_declare_what_they_support() -> None:
    """Every built-in trains DP-SGD recipes and adaptive rounds; the local ones train on
    the audit's device, Ray's tasks place their own models."""
    for name, spec in BACKENDS.items():
        assert spec.supports.dp_sgd and spec.supports.adaptive, name
        expected = frozenset() if name == "ray" else frozenset({"cpu", "cuda"})
        assert spec.supports.devices == expected, name
