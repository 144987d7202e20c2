"""Train the SUPPORT2 MLP with Lightning; the callback audits it after fit.

Run from the repository root:  python examples/lightning/train.py [--out DIR]

When the gate refuses the model, the report recommends DP-SGD settings; retraining with
them is one option away (every reference model then trains with the same DP recipe):

    python examples/lightning/train.py --dp-from out/lightning/privacy_audit/report.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `examples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import lightning.pytorch as pl

from examples.lightning.data import SupportData
from examples.lightning.model import SupportModel
from lightning_callbacks.lightning import DPSGD, PrivacyAuditCallback


def dp_callback(report: Path) -> DPSGD:
    """`DPSGD` with the settings a failed audit's report recommends."""
    recommendation = json.loads(report.read_text("utf-8")).get("dp_recommendation") or {}
    if recommendation.get("status") != "recommended":
        raise SystemExit(f"{report} holds no DP-SGD recommendation: {recommendation}")
    return DPSGD(
        noise_multiplier=recommendation["noise_multiplier"],
        max_grad_norm=recommendation["max_grad_norm"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="out/lightning", help="Trainer root directory")
    parser.add_argument("--reference-models", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--dp-from", type=Path, help="report.json whose DP-SGD recommendation to train with"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    pl.seed_everything(0)
    data = SupportData(seed=0)
    audit = PrivacyAuditCallback(
        reference_models=args.reference_models,
        on_fail="warn",  # an example: report a failing gate instead of stopping
        patient_ids=data.patient_ids,
        subgroups=data.subgroups,  # the default policy, analysing these columns
        seed=0,
    )
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        callbacks=[audit] if args.dp_from is None else [dp_callback(args.dp_from), audit],
        default_root_dir=args.out if args.dp_from is None else f"{args.out}-dp",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(SupportModel(), datamodule=data)
    figures = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
    print({k: v for k, v in figures.items() if k.startswith("privacy_gate/")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
