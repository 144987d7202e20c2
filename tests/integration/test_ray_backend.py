"""The ray backend on a real local Ray instance (``ray.init(num_cpus=2)``, one for the
module): the same report as the local backends, a worker killed mid-training is retried
without changing the result, a task that fails for good keeps the finished models, a
rerun trains only the missing ones, and what cannot reach the workers fails at setup.

Tiny models (tests/integration/tiny_audit.py), K = 4, 2 epochs.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import json
import math
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from ray_workers import batchnorm_model, crashing_model, dropout_model
from tiny_audit import load_data, make_model

from privacy_gate.adaptive import AdaptivePlan
from privacy_gate.cli import main
from privacy_gate.config import parse_config
from privacy_gate.errors import ConfigError
from privacy_gate.plan import draw_plan
from privacy_gate.training.audit import run_audit
from privacy_gate.training.backends import make_backend, train_reference_models
from privacy_gate.training.job import parse_job
from privacy_gate.training.ray_backend import (
    RayBackend,
    RayOptions,
    parse_ray_options,
    training_bytes_per_model,
)
from privacy_gate.training.recipe import DPSettings, Optimizer, Recipe
from privacy_gate.training.reference import ReferenceJob, TrainingPlan, derived_seed
from privacy_gate.training.store import ScoreStore

ray = pytest.importorskip("ray")

RECIPE = Recipe(epochs=2, batch_size=16, learning_rate=0.01)
POLICY = parse_config({"subgroups": ["site"], "risk": {"min_group_size": 5},
                       "gate": {"max_patient_auc": 1.0}})  # fmt: skip
HERE = Path(__file__).parent
REPO = HERE.parents[1]
SEED = 1


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Any]:
    """One real local Ray instance for the module; its workers import the test helpers
    (tiny_audit, ray_workers) and the repository through PYTHONPATH."""
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), str(REPO), *([before] if before else [])]
    )
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before


@pytest.fixture(autouse=True)
def _stable_pseudonyms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIVACY_GATE_PSEUDONYM_KEY", "test-key")


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch's threads of a task with num_cpus=1: summation order, hence float rounding,
    depends on the thread count, and Adam amplifies rounding differences in training."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _audit(out: Path, factory: Any = make_model, **options: Any) -> Any:
    settings: dict[str, Any] = {"recipe": RECIPE, "config": POLICY, "reference_models": 4,
                                "seed": SEED, "out_dir": out, "plots": False}  # fmt: skip
    settings.update(options)
    # Backend options travel with the backend (make_backend: a name plus its options).
    settings["backend"] = make_backend(
        settings.pop("backend", "auto"), ray=settings.pop("ray", None)
    )
    return run_audit(factory, load_data(), **settings)


def _records(out: Path) -> list[dict[str, str]]:
    with (out / "records.csv").open() as handle:
        return list(csv.DictReader(handle))


def _assert_close(a: Any, b: Any, where: str = "report") -> None:
    """Equal structure, numbers equal up to float rounding."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and sorted(a) == sorted(b), where
        for key in a:
            _assert_close(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and not isinstance(b, bool):
        assert isinstance(b, int | float), where
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) or (
            math.isnan(a) and math.isnan(b)
        ), f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _assert_same_report(one: Any, other: Any, out_one: Path, out_other: Path) -> None:
    for section in ("summary", "aggregate", "subgroups", "decision"):
        _assert_close(one.report.to_dict()[section], other.report.to_dict()[section], section)
    rows_one, rows_other = _records(out_one), _records(out_other)
    assert [r["record_id"] for r in rows_one] == [r["record_id"] for r in rows_other]
    np.testing.assert_allclose(
        [float(r["auc"]) for r in rows_one], [float(r["auc"]) for r in rows_other], rtol=1e-6
    )


def _stored(out: Path) -> list[str]:
    cache = next((out / ".privacy_gate_cache").iterdir())
    return sorted(p.name for p in cache.glob("reference_*.npy"))


# Without a cluster: configuration and estimates.


def test_ray_section_is_validated_like_the_rest_of_the_config() -> None:
    job = {"model": "m:f", "data": "d:g", "backend": "ray",
           "ray": {"num_cpus": 2, "memory": "2GiB", "models_per_task": 4, "max_retries": 1,
                   "runtime_env": {"working_dir": "."}}}  # fmt: skip
    options = parse_job(job).backend_options["ray"]
    assert options == RayOptions(num_cpus=2, memory=2 * 2**30, models_per_task=4,
                                 max_retries=1, runtime_env={"working_dir": "."})  # fmt: skip
    alone = parse_job({**job, "ray": None})  # backend: ray alone takes the defaults
    assert make_backend(alone.backend, **alone.backend_options) == RayBackend(RayOptions())
    with pytest.raises(ConfigError, match=r"Unknown key\(s\) \['gpus'\] in ray. Valid keys"):
        parse_job({**job, "ray": {"gpus": 1}})
    with pytest.raises(ConfigError, match="'models_per_task' parameter of ray"):
        parse_job({**job, "ray": {"models_per_task": 0}})
    with pytest.raises(ConfigError, match=r"'memory' parameter of ray.*Got '2 lots'"):
        parse_job({**job, "ray": {"memory": "2 lots"}})
    with pytest.raises(ConfigError, match=r"option 'ray' does not apply to the 'auto' backend"):
        parse_job({**job, "backend": "auto"})
    with pytest.raises(ConfigError, match="'max_retries'"):
        parse_ray_options({"max_retries": -1})


def test_training_memory_estimate_of_a_linear_model() -> None:
    """One Linear(6, 2) with Adam, batch 16 (float32): parameters 14 x 4 B, six times
    (model, copy, gradient, step, two moments); its output 16 x 2 x 4 B three times;
    the batch 16 x 6 x 4 B."""
    inputs = torch.zeros(40, 6)
    estimate = training_bytes_per_model(lambda: torch.nn.Linear(6, 2), inputs, RECIPE)
    assert estimate == 14 * 4 * 6 + 3 * (16 * 2 * 4) + 16 * 6 * 4
    sgd = Recipe(epochs=1, batch_size=16, optimizer=Optimizer.SGD, learning_rate=0.1)
    assert (
        training_bytes_per_model(lambda: torch.nn.Linear(6, 2), inputs, sgd)
        == estimate - 14 * 4 * 2
    )


# On the local Ray instance.


def test_ray_report_equals_the_local_batched_one(local_ray: Any, tmp_path: Path) -> None:
    with one_thread():  # the candidate, trained here, too
        local = _audit(tmp_path / "local", backend="batched")
        on_ray = _audit(tmp_path / "ray", backend="ray")
    training = on_ray.report.to_dict()["audit"]["training"]
    assert training["backend"] == "ray" and training["trained_now"] == 4
    # "auto" fits 16 tiny models in a task: the local backend's group, hence its report.
    assert training["ray"]["models_per_task"] == 16 and training["ray"]["tasks"] == 1
    _assert_same_report(local, on_ray, tmp_path / "local", tmp_path / "ray")


def test_dp_recipe_is_batched_in_a_task_like_the_local_backend(
    local_ray: Any, tmp_path: Path
) -> None:
    """DP-SGD reference models: one batched task, the local batched report (the Poisson
    batches and noise come from each model's seeds, wherever it trains)."""
    pytest.importorskip("opacus")
    dp = dataclasses.replace(RECIPE, dp=DPSettings(noise_multiplier=1.0, max_grad_norm=1.0))
    with one_thread():
        local = _audit(tmp_path / "local", backend="batched", recipe=dp)
        on_ray = _audit(tmp_path / "ray", backend="ray", recipe=dp)
    training = on_ray.report.to_dict()["audit"]["training"]
    assert training["fallback_reason"] is None and training["ray"]["tasks"] == 1
    _assert_same_report(local, on_ray, tmp_path / "local", tmp_path / "ray")


def test_unbatchable_model_trains_one_per_task_like_the_sequential_backend(
    local_ray: Any, tmp_path: Path
) -> None:
    with one_thread():
        local = _audit(tmp_path / "local", batchnorm_model, backend="sequential")
        on_ray = _audit(tmp_path / "ray", batchnorm_model, backend="ray")
    training = on_ray.report.to_dict()["audit"]["training"]
    assert "BatchNorm" in training["fallback_reason"]
    assert training["ray"]["tasks"] == 4
    _assert_same_report(local, on_ray, tmp_path / "local", tmp_path / "ray")


def test_groups_are_the_local_batched_groups(local_ray: Any, tmp_path: Path) -> None:
    """Two models per task give the scores of the local batched backend with groups of
    two, dropout streams included (they come from the group's seeds)."""
    data = load_data()
    patient_index, _ = data.record_table().patient_index()
    plan = TrainingPlan(draw_plan(patient_index, 4, seed=SEED),
                        tuple(derived_seed(SEED, k) for k in range(4)), SEED)  # fmt: skip

    def train(name: str, **options: Any) -> np.ndarray:
        store = ScoreStore(tmp_path / name, {"run": name}, data.n_records)
        job = ReferenceJob(dropout_model, data, plan, RECIPE, store)
        scores, _ = train_reference_models(job, make_backend(group_size=2, **options))
        return scores

    with one_thread():
        local = train("local", backend="batched")
    on_ray = train("ray", backend="ray", ray=RayOptions(models_per_task=2))
    np.testing.assert_allclose(on_ray, local, rtol=1e-5, atol=1e-6)
    regrouped = train("ray4", backend="ray", ray=RayOptions(models_per_task=4))
    assert not np.allclose(regrouped, local, rtol=1e-5, atol=1e-6)  # other groups, other masks


def test_worker_killed_mid_training_is_retried_and_the_report_is_unchanged(
    local_ray: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "crashed"
    crashing = functools.partial(
        crashing_model, marker=str(marker), crash_seed=derived_seed(SEED, 2), driver_pid=os.getpid()
    )
    options = RayOptions(models_per_task=2, max_retries=2)
    disturbed = _audit(tmp_path / "disturbed", crashing, backend="ray", ray=options)
    assert marker.exists() and int(marker.read_text()) != os.getpid()  # a worker died
    undisturbed = _audit(tmp_path / "undisturbed", crashing_model, backend="ray", ray=options)
    assert disturbed.report.audit.training.trained_now == 4
    _assert_same_report(undisturbed, disturbed, tmp_path / "undisturbed", tmp_path / "disturbed")


def test_cli_task_that_fails_for_good_exits_2_and_a_rerun_trains_only_the_missing(
    local_ray: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """max_retries 0: the killed task fails the audit (exit 2) while the other group's
    models are stored; the rerun trains exactly the failed group (counted on the
    workers) and gives the undisturbed report."""
    monkeypatch.chdir(REPO)
    calls = tmp_path / "calls.txt"
    job = {
        "model": "ray_workers:crashing_model",
        "model_args": {"marker": str(tmp_path / "crashed"), "crash_seed": derived_seed(SEED, 2),
                       "driver_pid": os.getpid(), "calls": str(calls)},
        "data": "tiny_audit:load_data",
        "recipe": {"epochs": 2, "batch_size": 16, "learning_rate": 0.01},
        "reference_models": 4,
        "seed": SEED,
        "backend": "ray",
        "ray": {"models_per_task": 2, "max_retries": 0, "num_cpus": 1},
        "out": str(tmp_path / "out"),
        "policy": {"subgroups": ["site"], "risk": {"min_group_size": 5},
                   "gate": {"max_patient_auc": 1.0}},
    }  # fmt: skip
    config = tmp_path / "audit.yaml"
    config.write_text(yaml.safe_dump(job))
    assert main(["audit", "--config", str(config), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "Ray task(s) failed after their retries (reference models [2, 3])" in err
    assert "WorkerCrashedError" in err and "2 of 4 reference models are finished" in err
    assert _stored(tmp_path / "out") == ["reference_0000.npy", "reference_0001.npy"]

    calls.write_text("")
    assert main(["-q", "audit", "--config", str(config), "--no-plots"]) == 0  # cannot fail
    trained = {int(line) for line in calls.read_text().split()} - {0}  # 0: the setup probe
    assert trained == {derived_seed(SEED, 2), derived_seed(SEED, 3)}
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["audit"]["training"]["resumed"] == 2
    assert report["audit"]["training"]["trained_now"] == 2

    undisturbed = _audit(tmp_path / "undisturbed", crashing_model, backend="ray",
                         ray=RayOptions(models_per_task=2))  # fmt: skip
    for section in ("summary", "decision"):
        _assert_close(report[section], undisturbed.report.to_dict()[section], section)


def test_what_cannot_reach_the_workers_fails_before_training(
    local_ray: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = threading.Lock()

    def train_fn(subset: np.ndarray, seed: int) -> torch.nn.Module:
        with lock:
            return make_model()

    with pytest.raises(ConfigError, match=r"train_fn cannot be sent to Ray workers.*lock"):
        _audit(tmp_path / "closure", backend="ray", train_fn=train_fn)
    assert _stored(tmp_path / "closure") == []

    # A factory the driver imports from a path the workers do not have.
    (tmp_path / "private_models.py").write_text(
        "from torch import nn\n\ndef make():\n    return nn.Linear(6, 2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import private_models

    with pytest.raises(ConfigError, match=r"workers cannot load.*private_models.*working_dir"):
        _audit(tmp_path / "private", private_models.make, backend="ray")
    assert _stored(tmp_path / "private") == []
    sys.modules.pop("private_models", None)


def test_infeasible_resource_request_is_refused(local_ray: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No node of the Ray cluster can run a task"):
        _audit(tmp_path, backend="ray", ray=RayOptions(num_gpus=1))


def test_resume_skips_the_cluster_when_everything_is_stored(tmp_path: Path) -> None:
    """Finished models are reused whichever backend trained them; with nothing left to
    train, no Ray task runs."""
    _audit(tmp_path, backend="batched")
    again = _audit(tmp_path, backend="ray")
    training = again.report.to_dict()["audit"]["training"]
    assert training["resumed"] == 4 and training["trained_now"] == 0
    assert training["ray"]["tasks"] == 0


# The Lightning callback.


@pytest.fixture
def lightning_fit() -> Any:
    pytest.importorskip("pytorch_lightning")
    from test_lightning_callback import fit

    return fit


def test_lightning_callback_with_ray_equals_the_local_audit(
    local_ray: Any, tmp_path: Path, write_config: Any, lightning_fit: Any
) -> None:
    lenient = write_config("gate:\n  max_patient_auc: 1.0\n")
    with one_thread():
        lightning_fit(tmp_path / "local", config=lenient, backend="auto")
        lightning_fit(tmp_path / "ray", config=lenient, backend="ray")
    local, on_ray = (json.loads((tmp_path / name / "audit" / "report.json").read_text())
                     for name in ("local", "ray"))  # fmt: skip
    training = on_ray["audit"]["training"]
    assert training["backend"] == "ray" and training["trained_now"] == 4
    assert training["ray"]["tasks"] == 1  # the recipe's batched group
    for section in ("summary", "aggregate", "decision"):
        _assert_close(local[section], on_ray[section], section)


def test_lightning_trainer_per_task_when_the_recipe_cannot_be_batched(
    local_ray: Any, tmp_path: Path, write_config: Any, lightning_fit: Any
) -> None:
    """BatchNorm: each task fits the user's LightningModule (a class local to a test
    function, sent by value) with a fresh Trainer on the worker."""
    lenient = write_config("gate:\n  max_patient_auc: 1.0\n")
    lightning_fit(tmp_path, config=lenient, backend="ray",
                  module_kwargs={"norm_layer": "subclassed"},
                  backend_options={"ray": {"max_retries": 1}})  # fmt: skip
    training = json.loads((tmp_path / "audit" / "report.json").read_text())["audit"]["training"]
    assert training["backend"] == "ray" and training["trained_now"] == 4
    assert "BatchNorm" in training["fallback_reason"] and training["ray"]["tasks"] == 4


def test_lightning_callback_refuses_what_ray_cannot_run(tmp_path: Path, lightning_fit: Any) -> None:
    with pytest.raises(
        ConfigError, match="option 'ray' does not apply to the 'auto' backend of Priv"
    ):
        lightning_fit(tmp_path, backend="auto", backend_options={"ray": {"num_cpus": 1}})
    with pytest.raises(ConfigError, match=r"Unknown key\(s\) \['cpus'\] in ray"):
        lightning_fit(tmp_path, backend="ray", backend_options={"ray": {"cpus": 1}})
    from test_lightning_callback import namespace_classes

    module_class = namespace_classes("pytorch_lightning")["module"]
    lock = threading.Lock()

    def factory() -> Any:  # builds modules here, but the lock cannot be pickled
        with lock:
            return module_class()

    with pytest.raises(ConfigError, match=r"model factory.*cannot be sent to Ray workers"):
        lightning_fit(tmp_path, backend="ray", model_factory=factory)
    assert not (tmp_path / "audit").exists()  # refused before training and auditing


def test_an_adaptive_audit_on_ray_takes_the_looks_of_the_local_one(
    local_ray: Any, tmp_path: Path
) -> None:
    """A round is a set of Ray tasks: the adaptive audit on the cluster trains the same
    models per look as the local batched backend, so its looks and report agree."""
    policy = parse_config(
        {"subgroups": ["site"], "risk": {"min_group_size": 5},
         "gate": {"max_patient_auc": 1.0, "max_detectable_auc": 0.9999}}
    )  # fmt: skip
    plan = AdaptivePlan(round_size=16, max_reference_models=32)
    with one_thread():
        local = _audit(tmp_path / "local", backend="batched", reference_models=plan, config=policy)
        on_ray = _audit(tmp_path / "ray", backend="ray", reference_models=plan, config=policy)
    assert on_ray.report.adaptive is not None
    assert [look.reference_models for look in on_ray.report.adaptive.looks] == [16, 32]
    assert on_ray.report.adaptive == local.report.adaptive
    assert on_ray.report.to_dict()["audit"]["training"]["ray"]["tasks"] == 2  # one per round
    _assert_same_report(local, on_ray, tmp_path / "local", tmp_path / "ray")
