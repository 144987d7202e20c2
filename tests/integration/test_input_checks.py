"""Every malformed pool or model stops the audit with exit 2, the field named, before any
reference model trains (issue 25): through the CLI, `run_audit` and the callback."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from malformed_pool import DEFECTS, load

from privacy_gate.cli import main
from privacy_gate.errors import InputError
from privacy_gate.training import Recipe, run_audit

REPO = Path(__file__).resolve().parents[2]

#: the model and recipe each defect is audited with (the pool's defects use a valid pair)
MODEL_ARGS = {
    "one_logit_multiclass": {"outputs": 1},
    "two_logits_binary": {"outputs": 2},
    "loss_mismatch": {"outputs": 1},
    "forward_mismatch": {"n_features": 5},
}
BCE = {"binary_label_two", "binary_soft_label", "multilabel_vector", "two_logits_binary"}


def _job(defect: str, seed: int, out: Path) -> dict[str, Any]:
    outputs = 1 if defect in ("binary_label_two", "binary_soft_label") else 2
    return {
        "model": "tests.integration.malformed_pool:make_model",
        "model_args": MODEL_ARGS.get(defect, {"outputs": outputs}),
        "data": "tests.integration.malformed_pool:load",
        "data_args": {"defect": defect, "seed": seed},
        "recipe": {
            "epochs": 1,
            "batch_size": 8,
            "loss": "binary_cross_entropy" if defect in BCE else "cross_entropy",
        },
        "reference_models": 4,
        "backend": "sequential",
        "out": str(out),
    }


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(defect=st.sampled_from(sorted(DEFECTS)), seed=st.integers(0, 10_000))
def test_a_malformed_pool_exits_2_naming_the_field_before_training(
    defect: str, seed: int, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    monkeypatch.chdir(REPO)  # the job's model and data are tests.integration.malformed_pool
    out = tmp_path / f"{defect}-{seed}"
    config = tmp_path / f"{defect}-{seed}.yaml"
    config.write_text(yaml.safe_dump(_job(defect, seed, out)))
    code = main(["audit", "--config", str(config)])
    captured = capsys.readouterr()
    assert code == 2, captured
    assert DEFECTS[defect] in captured.err, captured.err
    assert "unexpected" not in captured.err  # a named input error, not a crash
    assert "reference models trained" not in captured.err + captured.out
    assert not (out / ".privacy_gate_cache").exists()  # nothing trained, nothing stored


def test_float_labels_are_never_truncated() -> None:
    """The report's case: labels 0.9/0 were truncated to all-zero labels by ``.long()``."""
    with pytest.raises(InputError, match=r"dtype torch.float32.*soft or smoothed"):
        load("fractional_float_labels")


def test_run_audit_checks_the_model_before_training(tmp_path: Path) -> None:
    """A 2-logit model under task 'binary': the error names the model's output shape for
    the probe records, not a batch size inside a training loop."""
    from malformed_pool import make_model

    data = load("two_logits_binary")
    with pytest.raises(InputError, match=r"shape \(2, 2\) for 2 records.*one logit per record"):
        run_audit(
            lambda: make_model(outputs=2),
            data,
            recipe=Recipe(epochs=1, batch_size=8, loss="binary_cross_entropy"),  # type: ignore[arg-type]
            reference_models=4,
            out_dir=tmp_path,
        )
    assert not (tmp_path / ".privacy_gate_cache").exists()


def test_the_probe_forward_keeps_the_callers_rng() -> None:
    """Checking a model's outputs is one eval forward pass: the caller's RNG, the
    model's mode and its weights are as they were."""
    from malformed_pool import make_model

    from privacy_gate.signals import Task
    from privacy_gate.training.inputs import check_model_outputs

    model = make_model()
    model.train()
    data = load("none")
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_model_outputs(model, *data.pool(), Task.MULTICLASS, "the model")
    assert torch.equal(torch.rand(3), expected)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_an_unreadable_signing_key_stops_the_audit_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report file is signed at the end; a key that cannot be read must not cost the
    training first."""
    from malformed_pool import make_model

    from privacy_gate.signing import SIGNING_KEY_ENVIRONMENT_VARIABLE

    (tmp_path / "key.pem").write_text("not a key", "utf-8")
    monkeypatch.setenv(SIGNING_KEY_ENVIRONMENT_VARIABLE, str(tmp_path / "key.pem"))
    with pytest.raises(InputError, match="not a PEM private key"):
        run_audit(
            make_model,
            load("none"),
            recipe=Recipe(epochs=1, batch_size=8),
            reference_models=4,
            out_dir=tmp_path / "out",
        )
    assert not (tmp_path / "out" / ".privacy_gate_cache").exists()
