"""End to end on a real cohort: reference models trained on the breast cancer data with
deliberately mislabeled records; the CLI must rank those records on top, fail the
example's strict policy and pass a lenient one."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from privacy_gate.cli import main

pytest.importorskip("sklearn")
EXAMPLE = Path(__file__).parents[2] / "examples" / "breast_cancer"


def _example() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "audit_breast_cancer", EXAMPLE / "audit_breast_cancer.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    out = tmp_path_factory.mktemp("breast_cancer")
    flipped = _example().build_inputs(out, n_models=32, n_mislabeled=6, seed=0)
    return out, flipped


def _score(inputs: Path, policy: str) -> tuple[int, dict[str, Any], Path]:
    """Run `privacy-gate score` on the example's inputs under one of its policies."""
    out = inputs / Path(policy).stem
    code = main(
        ["-q", "score", "--signals", str(inputs / "signals.npz"), "--records",
         str(inputs / "records.csv"), "--config", str(EXAMPLE / policy), "--out", str(out),
         "--no-plots"]
    )  # fmt: skip
    return code, json.loads((out / "report.json").read_text()), out


def test_mislabeled_records_rank_on_top(audited: tuple[Path, list[int]]) -> None:
    inputs, flipped = audited
    code, report, out = _score(inputs, "policy.yaml")
    assert code == 1
    with (out / "records.csv").open() as handle:
        auc = np.array([float(row["auc"]) for row in csv.DictReader(handle)])
    rank = np.argsort(np.argsort(-auc, kind="stable"), kind="stable")
    # All 6 planted records are among the 5% most exposed of 569, while the typical
    # record is near chance.
    assert rank[flipped].max() < 0.05 * len(auc), rank[flipped]
    assert auc[flipped].min() > 0.85
    assert np.median(auc) < 0.6
    rules = {v["rule"] for v in report["decision"]["violations"]}
    assert {"max_patient_auc", "max_patients_at_risk"} <= rules
    assert report["decision"]["status"] == "fail"


def test_lenient_policy_passes(audited: tuple[Path, list[int]]) -> None:
    code, report, out = _score(audited[0], "lenient.yaml")
    assert code == 0, report["decision"]
    assert report["decision"]["status"] == "pass"
    # The same figures, judged by the strict policy: check agrees without recomputing.
    assert main(["-q", "check", str(out / "report.json"), "--config",
                 str(EXAMPLE / "policy.yaml")]) == 1  # fmt: skip
