"""The Hugging Face callback's arguments fail at construction, with the package's error
contract (the field, the value, a HINT), and its datasets before training."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

from privacy_gate.errors import ConfigError, InputError
from privacy_gate.integrations.transformers import PrivacyAuditCallback
from privacy_gate.integrations.transformers._data import dataset_tensors


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"holdout": 5}, "holdout"),
        ({"factory": "bert-base"}, "factory"),
        ({"input_key": ""}, "input_key"),
        ({"reference_models": 3}, "reference_models"),
        ({"seed": -1}, "seed"),
        ({"on_fail": "explode"}, "on_fail"),
        ({"task": "regression"}, "task"),
        ({"plots": "yes"}, "plots"),
        ({"backend": "nope"}, "backend"),
        ({"config": 123}, "config"),
        ({"subgroups": {"": [1]}}, "subgroups"),
        ({"patient_ids": "p1"}, "patient_ids"),
        ({"output_dir": 3.5}, "output_dir"),
        ({"backend_options": {"workers": 0}}, "workers"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"'{field}'")):
        PrivacyAuditCallback(**kwargs)


def test_the_error_names_the_value_and_a_hint() -> None:
    with pytest.raises(ConfigError) as caught:
        PrivacyAuditCallback(factory="bert-base")
    message = str(caught.value)
    assert "The 'factory' parameter of PrivacyAuditCallback must be" in message
    assert "Got 'bert-base' instead." in message and "HINT:" in message


def test_a_policy_column_must_be_given(tmp_path: Any) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("gate:\n  max_patient_auc: 0.9\nsubgroups: [sex]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"'subgroups'.*add the column\(s\) \['sex'\]"):
        PrivacyAuditCallback(config=policy)
    PrivacyAuditCallback(config=policy, subgroups={"sex": lambda split, i: "F"})


class Examples(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self, **columns: torch.Tensor) -> None:
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.columns.items()}


def test_the_input_key_is_found_and_records_stack() -> None:
    data = Examples(pixel_values=torch.randn(5, 1, 4, 4), labels=torch.arange(5) % 2)
    x, y, key = dataset_tensors(data, "train_dataset", None, {"pixel_values", "labels"})
    assert key == "pixel_values" and x.shape == (5, 1, 4, 4) and y.tolist() == [0, 1, 0, 1, 0]


def test_a_second_model_input_is_refused() -> None:
    data = Examples(
        input_ids=torch.ones(4, 6, dtype=torch.long),
        attention_mask=torch.ones(4, 6, dtype=torch.long),
        labels=torch.zeros(4, dtype=torch.long),
    )
    keys = {"input_ids", "attention_mask", "labels"}
    with pytest.raises(InputError, match=r"\['attention_mask'\] besides the input 'input_ids'"):
        dataset_tensors(data, "train_dataset", None, keys)


def test_examples_must_be_dicts_with_a_label() -> None:
    pairs = torch.utils.data.TensorDataset(torch.randn(3, 2), torch.zeros(3))
    with pytest.raises(InputError, match="one dict per example"):
        dataset_tensors(pairs, "holdout", None, set())
    with pytest.raises(InputError, match="no label"):
        dataset_tensors(Examples(x=torch.randn(3, 2)), "holdout", None, {"x"})
    with pytest.raises(InputError, match="HINT: pass input_key"):
        dataset_tensors(Examples(feats=torch.randn(3, 2), labels=torch.zeros(3)), "h", None, set())
