"""run_audit and `privacy-gate audit` on a tiny real PyTorch model: plan, resume,
stale-model protection, bad input and exit codes."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from tiny_audit import FlakyFactory, load_data, make_model

from privacy_gate.cli import main
from privacy_gate.config import parse_config
from privacy_gate.errors import InputError
from privacy_gate.plan import draw_plan, plan_digest
from privacy_gate.training.audit import run_audit
from privacy_gate.training.backends import SequentialBackend
from privacy_gate.training.data import AuditData
from privacy_gate.training.recipe import Recipe
from privacy_gate.training.sequential import TrainingError

RECIPE = Recipe(epochs=2, batch_size=16, learning_rate=0.01)
POLICY = parse_config({"subgroups": ["site"], "risk": {"min_group_size": 5},
                       "gate": {"max_patient_auc": 1.0}})  # fmt: skip
REPO = Path(__file__).parents[2]


@pytest.fixture(autouse=True)
def _stable_pseudonyms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRIVACY_GATE_PSEUDONYM_KEY", "test-key")


def _audit(out: Path, factory: Any = make_model, **options: Any) -> Any:
    settings: dict[str, Any] = {"recipe": RECIPE, "config": POLICY, "reference_models": 4,
                                "backend": "sequential", "seed": 1, "out_dir": out,
                                "plots": False}  # fmt: skip
    settings.update(options)
    return run_audit(factory, load_data(), **settings)


def _records(out: Path) -> list[dict[str, str]]:
    with (out / "records.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_audit_writes_report_and_plan(tmp_path: Path) -> None:
    result = _audit(tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["audit"]["reference_models"] == 4
    assert report["audit"]["training"]["backend"] == "sequential"
    assert report["aggregate"] is not None  # the candidate was trained and attacked
    with np.load(tmp_path / "membership.npz") as plan:
        masks = plan["masks"]
        assert str(plan["sha256"]) == plan_digest(masks) == report["audit"]["plan"]["sha256"]
    # Every patient IN for exactly K/2 models, records of a patient together.
    assert (masks.sum(axis=0) == 2).all()
    patient_index, _ = load_data().record_table().patient_index()
    for p in np.unique(patient_index):
        columns = masks[:, patient_index == p]
        assert (columns == columns[:, :1]).all()
    assert len(_records(tmp_path)) == 160
    assert result.decision.status.value == "pass"  # max_patient_auc 1.0 cannot fail


def test_interrupted_audit_resumes_and_gives_the_same_report(tmp_path: Path) -> None:
    # Factory calls: 1-2 = model identity and starting point (seeds 0 and 1), then one
    # per reference model; the 5th call is the third reference model, so two are
    # finished when the run is interrupted.
    with pytest.raises(KeyboardInterrupt):
        _audit(tmp_path / "resumed", FlakyFactory(fail_at=5))
    cache = next((tmp_path / "resumed" / ".privacy_gate_cache").iterdir())
    assert sorted(p.name for p in cache.glob("reference_*.npy")) == [
        "reference_0000.npy", "reference_0001.npy"]  # fmt: skip
    resumed = _audit(tmp_path / "resumed", FlakyFactory())
    assert resumed.report.audit.training.resumed == 2
    assert resumed.report.audit.training.trained_now == 2
    fresh = _audit(tmp_path / "fresh", FlakyFactory())
    assert fresh.report.audit.training.trained_now == 4
    assert _records(tmp_path / "resumed") == _records(tmp_path / "fresh")
    assert resumed.report.summary == fresh.report.summary
    assert resumed.report.decision == fresh.report.decision


def test_changed_recipe_never_reuses_models(tmp_path: Path) -> None:
    _audit(tmp_path)
    again = _audit(tmp_path)
    assert again.report.audit.training.trained_now == 0
    changed = _audit(tmp_path, recipe=Recipe(epochs=3, batch_size=16, learning_rate=0.01))
    assert changed.report.audit.training.trained_now == 4


def _fine_tune(pretrained_seed: int) -> torch.nn.Module:
    """A fine-tune: the first layer loaded from a 'pretrained file' and frozen, the head
    initialised from the reference model's seed."""
    model = make_model()
    generator = torch.Generator().manual_seed(pretrained_seed)
    with torch.no_grad():
        for p in model[0].parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    model[0].requires_grad_(False)
    return model


def test_the_pretrained_start_is_named_and_keys_the_store(tmp_path: Path) -> None:
    from privacy_gate.training.weights import weights_sha256

    first = _audit(tmp_path, factory=functools.partial(_fine_tune, 1))
    start = first.report.audit.training.extra["starting_point"]
    pretrained = _fine_tune(1)[0].state_dict()
    # Only the pretrained layer is seed-independent: its digest, under its names.
    assert start == {
        "sha256": weights_sha256({f"0.{n}": t for n, t in pretrained.items()}),
        "seed_independent_values": 6 * 16 + 16,
        "values": 6 * 16 + 16 + 16 * 2 + 2,
    }
    again = _audit(tmp_path, factory=functools.partial(_fine_tune, 1))
    assert again.report.audit.training.trained_now == 0
    other = _audit(tmp_path, factory=functools.partial(_fine_tune, 2))  # another file
    assert other.report.audit.training.trained_now == 4
    assert other.report.audit.training.extra["starting_point"]["sha256"] != start["sha256"]
    scratch = _audit(tmp_path / "scratch").report.audit.training.extra["starting_point"]
    assert scratch == {"sha256": None, "seed_independent_values": 0, "values": 146}


@pytest.mark.parametrize("k", [3, 0, 1])
def test_odd_or_too_small_k_is_an_error(tmp_path: Path, k: int) -> None:
    with pytest.raises(InputError, match=r"'reference_models'.*even integer >= 2"):
        _audit(tmp_path, reference_models=k)


class _LogShift(torch.nn.Module):
    """``log(x + 10)``: finite for the pool's features, NaN for a feature below -10."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x + 10.0)


def _diverging_model() -> torch.nn.Module:
    return torch.nn.Sequential(_LogShift(), make_model())


def test_nan_loss_is_an_error_and_finished_models_are_kept(tmp_path: Path) -> None:
    """A record that makes the model's loss NaN (its inputs are finite: NaN or Inf inputs
    are refused before training) stops the audit at the first model that trains on it."""
    data = load_data()
    poisoned = data.train_inputs.clone()
    poisoned[3, 0] = -1e6
    bad = AuditData(poisoned, data.train_labels, data.holdout_inputs, data.holdout_labels,
                    patient_ids=data.patient_ids, columns=data.columns)  # fmt: skip
    with pytest.raises(TrainingError, match="loss became"):
        run_audit(_diverging_model, bad, recipe=RECIPE, config=POLICY, reference_models=4,
                  backend="sequential", seed=1, out_dir=tmp_path, plots=False)  # fmt: skip
    # Reference models before the first one that trains on the poisoned record are kept.
    patient_index, _ = bad.record_table().patient_index()
    masks = draw_plan(patient_index, 4, seed=1)
    first_bad = int(np.argmax(masks[:, 3]))
    cache = next((tmp_path / ".privacy_gate_cache").iterdir())
    assert len(list(cache.glob("reference_*.npy"))) == first_bad


def test_metadata_of_another_length_is_an_error() -> None:
    data = load_data()
    with pytest.raises(InputError, match="patient_ids has 3 values"):
        AuditData(data.train_inputs, data.train_labels, data.holdout_inputs,
                  data.holdout_labels, patient_ids=["a", "b", "c"])  # fmt: skip
    with pytest.raises(InputError, match="train inputs"):
        AuditData(data.train_inputs[:5], data.train_labels, data.holdout_inputs,
                  data.holdout_labels)  # fmt: skip


def test_model_that_cannot_train_is_an_error(tmp_path: Path) -> None:
    def no_parameters() -> torch.nn.Module:
        return torch.nn.Identity()

    with pytest.raises(InputError):
        _audit(tmp_path, no_parameters)


def _job(tmp_path: Path, **changes: Any) -> Path:
    job: dict[str, Any] = {
        "model": "tests.integration.tiny_audit:make_model",
        "data": "tests.integration.tiny_audit:load_data",
        "data_args": {"seed": 0},
        "recipe": {"epochs": 2, "batch_size": 16, "learning_rate": 0.01},
        "reference_models": 4,
        "backend": "sequential",
        "out": str(tmp_path / "out"),
        "policy": {"subgroups": ["site"], "risk": {"min_group_size": 5},
                   "gate": {"max_patient_auc": 1.0}},
    }  # fmt: skip
    job.update(changes)
    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_cli_audit_runs_and_writes_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    code = main(["-q", "audit", "--config", str(_job(tmp_path)), "--no-plots"])
    assert code == 0  # the job's only rule, max_patient_auc 1.0, cannot fail
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["decision"]["status"] == "pass"
    # --out overrides the file's 'out'.
    assert main(["-q", "audit", "--config", str(_job(tmp_path)), "--out",
                 str(tmp_path / "other"), "--no-plots"]) == code  # fmt: skip
    assert (tmp_path / "other" / "report.json").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"reference_models": 5}, "reference_models"),
        ({"backend": "gpu-farm"}, "backend"),
        ({"epochs": 3}, "Unknown key"),
        ({"model": "tests.integration.tiny_audit:no_such_factory"}, "Cannot import"),
        ({"recipe": {"optimizer": "lbfgs"}}, "optimizer"),
        (
            {
                "mlflow": {
                    "tracking_uri": "sqlite:///x.db",
                    "registered_model": "m",
                    "alias": "latest",
                }
            },
            "MLflow reserves",
        ),
        (
            {"mlflow": {"tracking_uri": "sqlite:///x.db", "alias": "champion"}},
            "given with registered_model",
        ),
        (
            {"mlflow": {"tracking_uri": "sqlite:///x.db", "registered_model": ""}},
            "a non-empty string",
        ),
    ],
)
def test_cli_audit_bad_config_exits_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    changes: dict[str, Any],
    message: str,
) -> None:
    monkeypatch.chdir(REPO)
    assert main(["audit", "--config", str(_job(tmp_path, **changes))]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_batched_resume_retrains_only_missing_groups_and_matches(tmp_path: Path) -> None:
    """Batched backend with dropout: an audit that lost its last group of reference
    models (an interruption) retrains only that group and gives the same report."""

    def dropout_model() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(),
                                   torch.nn.Dropout(0.2), torch.nn.Linear(16, 2))  # fmt: skip

    fresh = _audit(tmp_path / "fresh", dropout_model, backend="batched", reference_models=6)
    assert fresh.report.audit.training.backend == "batched"
    resumed_dir = tmp_path / "resumed"
    _audit(resumed_dir, dropout_model, backend="batched", reference_models=6)
    cache = next((resumed_dir / ".privacy_gate_cache").iterdir())
    (cache / "reference_0005.npy").unlink()  # lost with the interruption
    resumed = _audit(resumed_dir, dropout_model, backend="batched", reference_models=6)
    assert resumed.report.audit.training.trained_now == 1
    assert _records(resumed_dir) == _records(tmp_path / "fresh")
    assert resumed.report.summary == fresh.report.summary


def test_sequential_worker_processes_give_the_same_scores(tmp_path: Path) -> None:
    one = _audit(tmp_path / "one")
    two = _audit(tmp_path / "two", backend=SequentialBackend(workers=2))
    assert two.report.audit.training.trained_now == 4
    assert _records(tmp_path / "one") == _records(tmp_path / "two")
    assert one.report.summary == two.report.summary


def test_empty_subset_is_an_error(tmp_path: Path) -> None:
    """One patient in the whole pool: half of the reference models get no record."""
    data = load_data(n_records=8)
    single = AuditData(data.train_inputs, data.train_labels, data.holdout_inputs,
                       data.holdout_labels, patient_ids=["same"] * 8)  # fmt: skip
    with pytest.raises(TrainingError, match="empty training subset"):
        run_audit(make_model, single, recipe=RECIPE, config=POLICY, reference_models=2,
                  backend="sequential", out_dir=tmp_path, plots=False)  # fmt: skip


def test_report_names_the_audited_weights(tmp_path: Path) -> None:
    from privacy_gate.training.sequential import train_one
    from privacy_gate.training.weights import weights_sha256

    data = load_data()
    inputs, labels = data.pool()
    candidate = train_one(make_model, inputs, labels, np.arange(80), RECIPE, seed=5)
    given = _audit(tmp_path / "given", candidate=candidate)
    assert given.report.audit.model_sha256 == weights_sha256(candidate)
    with torch.no_grad():
        candidate[0].weight[0, 0] += 1e-3  # the weights changed after the audit
    assert given.report.audit.model_sha256 != weights_sha256(candidate)
    trained = _audit(tmp_path / "trained")
    digest = trained.report.audit.model_sha256
    assert isinstance(digest, str) and len(digest) == 64
    assert _audit(tmp_path / "trained").report.audit.model_sha256 == digest  # resumed


def test_cli_audit_logs_to_a_sqlite_mlflow_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(REPO)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = _job(tmp_path, mlflow={"tracking_uri": uri, "experiment": "ehr-audits"})
    code = main(["audit", "--config", str(job), "--no-plots"])
    assert code == 0
    out = capsys.readouterr().out
    assert f"mlflow ui --backend-store-uri {uri}" in out
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("ehr-audits")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert experiment.artifact_location.startswith((tmp_path / "mlartifacts").as_uri())
    assert not (REPO / "mlruns").exists()  # nothing scattered into the working directory
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert run.data.tags["privacy_gate.status"] == report["decision"]["status"]
    assert run.data.metrics["privacy_gate/patient_auc/max"] == pytest.approx(
        report["summary"]["patient_auc"]["max"]
    )
    assert main(["audit", "--config", str(_job(tmp_path, mlflow={"tracking_uri": "mlruns"}))]) == 2


def test_audit_leaves_the_callers_rng_and_working_directory_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reference models seed torch's global generator per model: the caller's state is
    restored afterwards. Without an out_dir the resumable cache goes to the user cache
    directory (PRIVACY_GATE_CACHE_DIR here), never the working directory."""
    work, cache = tmp_path / "work", tmp_path / "cache"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("PRIVACY_GATE_CACHE_DIR", str(cache))
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    expected_next = torch.rand(3)
    torch.set_rng_state(before)
    _audit(None)  # type: ignore[arg-type]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(torch.rand(3), expected_next)
    assert list(work.iterdir()) == []
    assert len(list(cache.iterdir())) == 1  # one keyed store of finished models
