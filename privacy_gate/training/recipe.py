"""The training recipe shared by the release candidate and its reference models.

Reference models must be trained exactly like the candidate, or the audit measures
another model's risk; the recipe is therefore one frozen object, validated up front
and hashed into the key of every finished reference model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from enum import Enum
from typing import Any

from privacy_gate.errors import ConfigError, check_known_keys, coerce_choice, invalid_value

__all__ = ["DPSettings", "Loss", "Optimizer", "Precision", "Recipe", "parse_recipe"]


class Optimizer(str, Enum):
    SGD = "sgd"
    ADAM = "adam"
    ADAMW = "adamw"


class Loss(str, Enum):
    CROSS_ENTROPY = "cross_entropy"  # multi-class: integer labels, logits (N, C)
    BINARY_CROSS_ENTROPY = "binary_cross_entropy"  # binary/multi-label: float 0/1 targets


class Precision(str, Enum):
    """Lightning's names: float32, or mixed precision (``torch.autocast``) in bfloat16 or
    float16 (float16 with dynamic loss scaling, ``torch.amp.GradScaler``)."""

    FLOAT32 = "32-true"
    BF16_MIXED = "bf16-mixed"
    FP16_MIXED = "16-mixed"


@dataclass(frozen=True, kw_only=True)
class DPSettings:
    """DP-SGD (Opacus): per-sample clipping to ``max_grad_norm``, Gaussian noise of
    ``noise_multiplier * max_grad_norm`` per step, Poisson sampling of each batch with
    rate ``1 / ceil(N / batch_size)``."""

    noise_multiplier: float
    max_grad_norm: float

    def __post_init__(self) -> None:
        for name in ("noise_multiplier", "max_grad_norm"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (0 < value < math.inf)
            ):
                raise ConfigError(invalid_value(name, "recipe.dp", "a number > 0", value))


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How a model is trained: the same for the candidate and every reference model.

    ``max_grad_norm`` clips each model's gradient (all parameters together) as
    ``torch.nn.utils.clip_grad_norm_`` does.
    """

    epochs: int = 10
    batch_size: int = 64
    optimizer: Optimizer = Optimizer.ADAM
    learning_rate: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float | None = None
    loss: Loss = Loss.CROSS_ENTROPY
    dp: DPSettings | None = None
    precision: Precision = Precision.FLOAT32

    def __post_init__(self) -> None:
        # The Python API takes YAML's strings too: Recipe(optimizer="adam", loss="...").
        object.__setattr__(
            self, "optimizer", coerce_choice(Optimizer, self.optimizer, "optimizer", "recipe")
        )
        object.__setattr__(self, "loss", coerce_choice(Loss, self.loss, "loss", "recipe"))
        object.__setattr__(
            self, "precision", coerce_choice(Precision, self.precision, "precision", "recipe")
        )
        betas: Any = self.betas
        if isinstance(betas, list):  # users (and YAML) write lists
            object.__setattr__(self, "betas", tuple(betas))
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        for name in ("learning_rate", "eps"):
            _positive_float(name, getattr(self, name))
        for name in ("momentum", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < math.inf:
                raise ConfigError(invalid_value(name, "recipe", "a number >= 0", value))
        if self.max_grad_norm is not None:
            _positive_float("max_grad_norm", self.max_grad_norm)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(invalid_value("betas", "recipe", "two numbers in [0, 1)", self.betas))
        if self.dp is not None and self.max_grad_norm is not None:
            raise ConfigError(
                "The recipe sets both 'max_grad_norm' (clipping the batch gradient) and 'dp' "
                "(DP-SGD clips each record's gradient). HINT: drop 'max_grad_norm' and set "
                "'dp.max_grad_norm'."
            )
        if self.dp is not None and self.precision is not Precision.FLOAT32:
            raise ConfigError(
                f"The recipe sets 'dp' and precision {self.precision.value!r}: the audit's "
                "DP-SGD loop (Opacus) trains in float32. HINT: drop 'precision' or 'dp'."
            )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["optimizer"] = self.optimizer.value
        data["loss"] = self.loss.value
        data["betas"] = list(self.betas)
        data["precision"] = self.precision.value
        if self.dp is None:
            del data["dp"]  # recipes without DP keep the cache keys they always had
        if self.precision is Precision.FLOAT32:
            del data["precision"]  # as do float32 recipes
        return data


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(invalid_value(name, "recipe", "an integer >= 1", value))


def _positive_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(invalid_value(name, "recipe", "a number > 0", value))


def parse_recipe(data: Mapping[str, Any] | None) -> Recipe:
    """Build a `Recipe` from a YAML mapping, rejecting unknown keys.

    >>> parse_recipe({"epochs": 3, "optimizer": "sgd"}).optimizer
    <Optimizer.SGD: 'sgd'>
    """
    data = dict(data or {})
    check_known_keys(data, [f.name for f in fields(Recipe)], "recipe")
    for name, kind in (("optimizer", Optimizer), ("loss", Loss), ("precision", Precision)):
        if name in data:
            try:
                data[name] = kind(data[name])
            except ValueError:
                raise ConfigError(
                    invalid_value(name, "recipe", f"one of {[k.value for k in kind]}", data[name])
                ) from None
    if "betas" in data:
        betas = data["betas"]
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise ConfigError(invalid_value("betas", "recipe", "two numbers in [0, 1)", betas))
        data["betas"] = (float(betas[0]), float(betas[1]))
    if data.get("dp") is not None:
        data["dp"] = parse_dp_settings(data["dp"])
    return Recipe(**data)


def parse_dp_settings(data: Any) -> DPSettings:
    """``recipe.dp`` from YAML: ``{noise_multiplier: 1.1, max_grad_norm: 1.0}``.

    >>> parse_dp_settings({"noise_multiplier": 1.1, "max_grad_norm": 1}).max_grad_norm
    1
    """
    valid = [f.name for f in fields(DPSettings)]
    if not isinstance(data, Mapping):
        raise ConfigError(invalid_value("dp", "recipe", f"a mapping with keys {valid}", data))
    unknown = sorted(set(data) - set(valid))
    missing = sorted(set(valid) - set(data))
    if unknown or missing:
        raise ConfigError(
            f"The 'dp' section of the recipe has unknown key(s) {unknown} and lacks {missing}. "
            f"Valid keys are: {valid}. HINT: privacy-gate's DP-SGD recommendation prints both."
        )
    return DPSettings(**data)
