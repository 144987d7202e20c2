"""DP-SGD training of one model with Opacus: the recipe's loop, made private.

Used for the release candidate and for every reference model when the recipe has a
``dp`` section, so the audit measures the DP-trained model's real risk. Opacus hooks
one ``nn.Module`` at a time (it cannot hook a vmapped ensemble), so DP reference models
always train on the sequential path.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from privacy_gate.errors import InputError
from privacy_gate.training.recipe import DPSettings, Recipe
from privacy_gate.training.steps import TrainingError, compute_loss, make_optimizer

__all__ = ["make_dp_compatible", "train_one_dp"]

_LOG = logging.getLogger("privacy_gate.training")


def _opacus() -> None:
    try:
        import opacus  # noqa: F401
    except ImportError:
        raise InputError(
            "The recipe trains with DP-SGD ('dp') and needs Opacus. "
            "HINT: pip install 'privacy-gate[opacus]'."
        ) from None


def make_dp_compatible(model: nn.Module, name: str) -> nn.Module:
    """``model`` with the layers Opacus cannot train privately (BatchNorm -> GroupNorm, ...)
    replaced by Opacus' own fixers, with a warning.

    Submodules are replaced in place, since a Lightning Trainer holds this very module;
    a model that is itself such a layer is returned fixed.

    Raises:
        InputError: a layer Opacus can neither train privately nor replace.
    """
    _opacus()
    from opacus.validators import ModuleValidator

    replaced: list[str] = []
    for path, child in list(model.named_modules()):
        fixer = ModuleValidator.FIXERS.get(type(child))
        if fixer is None:
            continue
        fixed: nn.Module = fixer(child)
        parameter = next(child.parameters(), None)
        if parameter is not None:
            fixed.to(parameter.device)
        replaced.append(f"{path or 'the model'} ({type(child).__name__})")
        if not path:
            model = fixed
            break
        parent_path, _, attribute = path.rpartition(".")
        setattr(model.get_submodule(parent_path), attribute, fixed)
    if replaced:
        message = (
            f"{name}: replaced layers Opacus cannot train privately with Opacus' fixers: "
            f"{', '.join(replaced)}; the model now differs from its factory's."
        )
        warnings.warn(message, UserWarning, stacklevel=3)
        _LOG.warning(message)
    remaining = ModuleValidator.validate(model, strict=False)
    if remaining:
        raise InputError(
            f"{name} cannot be trained with DP-SGD: {remaining[0]}. HINT: replace the layer "
            "(e.g. BatchNorm with GroupNorm) in the model."
        )
    return model


def train_one_dp(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    subset: NDArray[np.intp],
    recipe: Recipe,
    *,
    seed: int,
    model_name: str = "model",
    device: torch.device | None = None,
) -> nn.Module:
    """Train ``model`` (freshly initialised, on ``device``) on ``inputs[subset]`` with
    DP-SGD.

    Poisson sampling (Opacus' ``DPDataLoader``), per-sample clipping and Gaussian noise
    from generators seeded by ``seed``, so a resumed audit retrains identically.
    """

    dp = recipe.dp
    if not isinstance(dp, DPSettings):
        raise TypeError("train_one_dp needs a recipe with a 'dp' section")
    _opacus()
    from opacus import PrivacyEngine

    model = make_dp_compatible(model, model_name)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(parameters, recipe)
    index = torch.from_numpy(np.asarray(subset, dtype=np.int64))
    dataset = TensorDataset(inputs[index], labels[index])
    loader = DataLoader(
        dataset,
        batch_size=recipe.batch_size,
        generator=torch.Generator().manual_seed(seed),
    )
    with warnings.catch_warnings():  # Opacus warns about secure_mode; seeded RNG is the point
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="prv")
        model, optimizer, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=dp.noise_multiplier,
            max_grad_norm=dp.max_grad_norm,
            poisson_sampling=True,
            noise_generator=torch.Generator(device=device or "cpu").manual_seed(seed + 1),
        )
    model.train()
    with warnings.catch_warnings():
        # the first layer's inputs need no gradient; Opacus' hooks still see its outputs
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        _dp_epochs(model, optimizer, loader, recipe, model_name, device)
    from opacus import GradSampleModule

    if isinstance(model, GradSampleModule):  # the plain module, hooks and grad samples removed
        standard: nn.Module = model.to_standard_module()
        return standard
    return model


def _dp_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader[tuple[torch.Tensor, ...]],
    recipe: Recipe,
    model_name: str,
    device: torch.device | None,
) -> None:
    for epoch in range(recipe.epochs):
        for batch_inputs, batch_labels in loader:
            if device is not None:
                batch_inputs, batch_labels = batch_inputs.to(device), batch_labels.to(device)
            optimizer.zero_grad(set_to_none=True)
            logits = model(batch_inputs)
            if len(batch_inputs) == 0:  # Poisson sampling drew no record: a noise-only step
                loss = logits.sum() * 0.0
            else:
                loss = compute_loss(logits, batch_labels, recipe.loss)
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"{model_name}: the loss became {float(loss.detach())} in epoch "
                        f"{epoch} of DP-SGD. HINT: lower the learning rate or check the inputs."
                    )
            loss.backward()
            optimizer.step()
