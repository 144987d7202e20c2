"""``privacy-gate recommend``: DP-SGD settings for an existing report."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from privacy_gate.errors import InputError
from privacy_gate.render.recommendation import dp_recommendation_lines
from privacy_gate.report import load_audit_report
from privacy_gate.report_model.codec import encode


def add_recommend_command(commands: Any) -> None:
    recommend = commands.add_parser(
        "recommend",
        help="DP-SGD settings that keep a pipeline within a report's policy (needs Opacus)",
        description="Compute the DP-SGD retraining recommendation for an existing report "
        "(audit and the Lightning callback add it themselves; use this after 'score'). "
        "The noise multiplier is the smallest whose PRV AUC ceiling keeps the patient with "
        "the most records within the policy's patient-AUC limit for this training schedule.",
    )
    recommend.add_argument("report", type=Path, help="report.json")
    recommend.add_argument("--config", type=Path, help="policy YAML (default: the report's)")
    recommend.add_argument("--dataset-size", type=int, required=True, help="training records N")
    recommend.add_argument("--batch-size", type=int, required=True, help="(expected) batch size")
    recommend.add_argument("--epochs", type=int, required=True, help="training epochs")
    recommend.add_argument("--max-grad-norm", type=float, help="per-sample clipping norm")
    recommend.add_argument(
        "--max-records-per-patient",
        type=int,
        help="most records one patient has (default: from patients.csv beside the report)",
    )
    recommend.add_argument("--json", action="store_true", help="print the section as JSON")
    recommend.set_defaults(handler=run_recommend)


def _max_records_per_patient(args: argparse.Namespace) -> int:
    if args.max_records_per_patient is not None:
        if args.max_records_per_patient < 1:
            raise InputError(
                "The '--max-records-per-patient' option of recommend must be an integer >= 1. "
                f"Got {args.max_records_per_patient} instead."
            )
        return int(args.max_records_per_patient)
    patients = Path(args.report).with_name("patients.csv")
    try:
        with patients.open(newline="", encoding="utf-8") as handle:  # raw ids may be quoted
            return max(int(row["n_records"]) for row in csv.DictReader(handle))
    except (OSError, ValueError, KeyError, csv.Error) as exc:
        raise InputError(
            f"recommend needs the largest number of records per patient and cannot read it "
            f"from {str(patients)!r} ({exc}). HINT: pass --max-records-per-patient."
        ) from None


def run_recommend(args: argparse.Namespace) -> int:
    """``privacy-gate recommend``: 0 with settings, 2 on bad input or without Opacus."""
    from privacy_gate.dp.recommend import recommend_for_report
    from privacy_gate.pipeline import policy_for_check

    report = load_audit_report(args.report)
    section = recommend_for_report(
        report,
        policy_for_check(report, args.config),
        dataset_size=args.dataset_size,
        batch_size=args.batch_size,
        epochs=args.epochs,
        max_records_per_patient=_max_records_per_patient(args),
        max_grad_norm=args.max_grad_norm,
    )
    if args.json:
        print(json.dumps(encode(section), indent=2, sort_keys=True))
    else:
        print("\n".join(dp_recommendation_lines(section)))
    return 0 if section.recommended else 2
