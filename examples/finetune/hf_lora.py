"""The LoRA fine-tune through the Hugging Face Trainer, audited by its callback.

The pretrained ECG encoder (examples/finetune/pretrain.py) gets rank-4 PEFT LoRA adapters
on its three convolutions and a new five-class head; `transformers.Trainer` fine-tunes
it on the pool's 1,500 training beats, and `PrivacyAuditCallback` audits it at the end of
`train()`: the arguments map exactly onto a recipe (constant learning rate, AdamW without
weight decay, gradient clipping at 1.0), so the K reference models train as one batched
ensemble with the encoder held once. The run is logged to a local MLflow store.

Run from the repository root:  python examples/finetune/hf_lora.py [--reference-models K]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments
from transformers.modeling_outputs import SequenceClassifierOutput

from examples.finetune.data import load_finetune_pool
from examples.finetune.model import PRETRAINED, EcgNet, load_encoder
from privacy_gate.config import load_config
from privacy_gate.integrations.transformers import PrivacyAuditCallback

HERE = Path(__file__).resolve().parent


class EcgForClassification(nn.Module):
    """`EcgNet` as the Trainer calls it: ``input_values`` (and ``labels``) in, an output
    with ``loss`` and ``logits``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = load_encoder(EcgNet(), PRETRAINED)

    def forward(
        self, input_values: torch.Tensor, labels: torch.Tensor | None = None
    ) -> SequenceClassifierOutput:
        logits = self.net(input_values)
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def model_init() -> nn.Module:
    """The candidate's and every reference model's start: the pretrained encoder with
    fresh adapters and a fresh head (both from the seed)."""
    import peft

    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["net.encoder.0", "net.encoder.3", "net.encoder.6"],
        modules_to_save=["net.head"], init_lora_weights="gaussian",
    )  # fmt: skip
    return peft.get_peft_model(EcgForClassification(), config)


class Beats(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_values": self.inputs[index], "labels": self.labels[index]}


def _experiment_beside(out: Path) -> None:
    """The MLflow experiment the Trainer logs to, its artifacts under ``out`` (a SQLite
    store's default artifact root is ./mlruns in the working directory)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    # HF's MLflowCallback uses a process-wide URI when one is set, else the environment's:
    # make them one, so the experiment is created where the run will be.
    if os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    client = MlflowClient(tracking_uri=mlflow.get_tracking_uri())
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "finetune-hf-lora")
    if client.get_experiment_by_name(name) is None:
        client.create_experiment(name, artifact_location=(out / "mlartifacts").resolve().as_uri())


def run(out: Path, reference_models: int, epochs: int, max_records: int | None) -> Any:
    """Fine-tune and audit; the callback (its ``status_`` and ``outcome_``)."""
    data = load_finetune_pool(seed=0, max_records=max_records)
    train, holdout = (
        Beats(data.train_inputs, data.train_labels),
        Beats(data.holdout_inputs, data.holdout_labels),
    )
    policy = load_config(HERE / "policy.yaml")
    audit = PrivacyAuditCallback(
        holdout=holdout,
        subgroups={"rhythm": data.columns["rhythm"]},
        config=policy,
        reference_models=reference_models,
        on_fail="warn",  # an example: report the verdict instead of raising
        output_dir=str(out / "privacy_audit"),
    )
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        num_train_epochs=epochs,
        per_device_train_batch_size=32,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        seed=0,
        report_to="mlflow",
        save_strategy="no",
        logging_strategy="epoch",
        use_cpu=True,
        disable_tqdm=True,
    )
    _experiment_beside(out)
    trainer = Trainer(model_init=model_init, args=args, train_dataset=train, callbacks=[audit])
    trainer.train()
    return audit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/finetune-hf-lora"))
    parser.add_argument("--reference-models", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--max-records", type=int, default=None, help="quick runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    tracking = f"sqlite:///{(args.out / 'mlflow.db').resolve()}"
    os.environ.setdefault("MLFLOW_TRACKING_URI", tracking)
    os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "finetune-hf-lora")
    audit = run(args.out, args.reference_models, args.epochs, args.max_records)
    print(f"verdict: {audit.status_}; report: {args.out / 'privacy_audit' / 'report.html'}; "
          f"MLflow: {os.environ['MLFLOW_TRACKING_URI']}")  # fmt: skip


if __name__ == "__main__":
    main()
