"""`DPSGD`'s behaviour: train a LightningModule with Opacus DP-SGD, shared by both
Lightning namespaces (the public classes add the namespace's ``Callback`` base).

What Opacus' ``PrivacyEngine.make_private`` does, spread over the hooks where Lightning
exposes each piece: ``setup`` makes the module DP-compatible and makes the train
DataLoader Poisson-sampled (Opacus' ``DPDataLoader``) when Lightning asks for it;
``on_train_start`` wraps the module in a ``GradSampleModule`` (per-sample gradients) and
the configured optimizer in a ``DPOptimizer`` (per-sample clipping, Gaussian noise) with
a PRV accountant; every epoch logs epsilon. `PrivacyAuditCallback` finds this callback
and trains every reference model with the same DP recipe.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_callbacks._compat import release_grad_sample_module, train_data_source
from lightning_callbacks._releases import check_releases
from privacy_gate.errors import ConfigError, InputError, invalid_value
from privacy_gate.training.recipe import DPSettings

__all__ = ["DPSGD_DOC", "DPSGDBehaviour", "find_dpsgd"]

_LOG = logging.getLogger("lightning_callbacks")
_CLASS_ATTRIBUTE = object()  # the patched name was the class's method, not an instance's
OWNER = "DPSGD"
EPSILON_METRIC = "dp/epsilon"

DPSGD_DOC = """Train the LightningModule with DP-SGD (Opacus): per-sample clipping, noise,
Poisson sampling, and epsilon logged every epoch as ``dp/epsilon``.

Add it to the Trainer's callbacks; the module's own ``configure_optimizers`` optimizer and
the Trainer's train DataLoader are made private (``batch_size`` becomes the expected batch
size of Poisson sampling, ``1 / len(loader)`` per record). Layers Opacus cannot train
privately (BatchNorm) are replaced by Opacus' fixers, in place, with a warning. Together
with `PrivacyAuditCallback` every reference model is trained with the same DP recipe.

Args:
    noise_multiplier: noise standard deviation over ``max_grad_norm``.
    max_grad_norm: per-sample gradient clipping norm.
    delta: the delta of the logged epsilon (default ``1 / N`` of the train set).
    secure_mode: Opacus' cryptographically secure noise (use it for the release model;
        the audit's reference models use seeded noise so that a resumed audit repeats).
    seed: seeds the Poisson sampling and the noise (None: fresh randomness).
    log_epsilon: compute epsilon (one PRV composition) at every epoch's end and at the
        end of training.

Example:
    >>> dp = DPSGD(noise_multiplier=1.1, max_grad_norm=1.0)
    >>> dp.settings
    DPSettings(noise_multiplier=1.1, max_grad_norm=1.0)
"""


def _opacus() -> None:
    try:
        import opacus  # noqa: F401
    except ImportError:
        raise ImportError(
            f"{OWNER} needs Opacus. HINT: pip install 'privacy-gate[opacus]'."
        ) from None


def find_dpsgd(trainer: Any) -> DPSGDBehaviour | None:
    """The Trainer's `DPSGD` callback, if any (at most one is allowed)."""
    found = [c for c in getattr(trainer, "callbacks", []) if isinstance(c, DPSGDBehaviour)]
    if len(found) > 1:
        raise ConfigError(f"The Trainer has {len(found)} {OWNER} callbacks. HINT: keep one.")
    return found[0] if found else None


class DPSGDBehaviour:
    """Trains the fit's module with DP-SGD; see the public classes."""

    def __init__(
        self,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        delta: float | None = None,
        secure_mode: bool = False,
        seed: int | None = None,
        log_epsilon: bool = True,
    ) -> None:
        super().__init__()
        check_releases(type(self).__name__)
        try:
            self.settings = DPSettings(
                noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm
            )
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("recipe.dp", OWNER)) from None
        if delta is not None and not (
            isinstance(delta, float) and 0.0 < delta < 1.0 and not isinstance(delta, bool)
        ):
            raise ConfigError(invalid_value("delta", OWNER, "a float in (0, 1) or None", delta))
        if not isinstance(log_epsilon, bool):
            raise ConfigError(invalid_value("log_epsilon", OWNER, "True or False", log_epsilon))
        if not isinstance(secure_mode, bool):
            raise ConfigError(invalid_value("secure_mode", OWNER, "True or False", secure_mode))
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(invalid_value("seed", OWNER, "an integer or None", seed))
        if secure_mode and seed is not None:
            raise ConfigError(
                f"The 'seed' parameter of {OWNER} must be None with secure_mode=True (secure "
                f"noise cannot be seeded). Got {seed!r} instead."
            )
        self.delta = delta
        self.secure_mode = secure_mode
        self.seed = seed
        self.log_epsilon = log_epsilon
        self.history_: list[tuple[float, float, int]] = []
        self.epsilon_: float | None = None
        self.batch_size_: int | None = None
        self.dataset_size_: int | None = None
        self._loader: Any = None
        self._module: Any = None
        self._accountant: Any = None
        self._warnings: Any = None  # the warnings.catch_warnings() entered for training
        self._patched: tuple[Any, Any] | None = None  # (data source, its own dataloader)

    def reference_copy(self, seed: int) -> Any:
        """A fresh callback of this namespace with the same DP recipe and seeded noise,
        for one reference model of the audit."""
        return type(self)(
            noise_multiplier=self.settings.noise_multiplier,
            max_grad_norm=self.settings.max_grad_norm,
            delta=self.delta,
            seed=seed,
            log_epsilon=False,  # the audit recomputes the recipe's guarantee once
        )

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._check_trainer(trainer, pl_module)
            self._make_compatible(pl_module)
            self._make_loader_private(trainer)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._make_optimizer_private(trainer, pl_module)
        # Opacus' hooks on a first layer whose inputs need no gradient make torch warn
        # once per step; the message is expected and harmless here. The filter lives in a
        # catch_warnings() context, left at the end of training or on any exception.
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.filterwarnings("ignore", message="Full backward hook is firing")

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.log_epsilon:
            return
        self.epsilon_ = self._epsilon()
        if self.epsilon_ is not None:
            pl_module.log(EPSILON_METRIC, self.epsilon_, prog_bar=True)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._leave_warnings()
        if self.log_epsilon:
            self.epsilon_ = self._epsilon()
        if self.epsilon_ is not None:
            trainer.callback_metrics[EPSILON_METRIC] = torch.tensor(self.epsilon_)
            _LOG.info("DP-SGD: epsilon %.3f at delta %.3g", self.epsilon_, self._delta())
        self._release_module()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """A failed fit leaves the user's process as it found it."""
        self._leave_warnings()
        self._release_module()
        self._restore_loader()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._leave_warnings()
        self._restore_loader()

    def _leave_warnings(self) -> None:
        if self._warnings is not None:
            self._warnings.__exit__(None, None, None)
            self._warnings = None

    def _release_module(self) -> None:
        if self._module is not None:  # hooks and per-sample gradients off the trained module
            release_grad_sample_module(self._module)
            self._module = None

    def _restore_loader(self) -> None:
        """Lightning's data source gets its own ``dataloader`` back (it was patched)."""
        if self._patched is not None:
            source, original = self._patched
            if original is _CLASS_ATTRIBUTE:
                vars(source).pop("dataloader", None)  # the class's method shows again
            else:
                source.dataloader = original
            self._patched = None

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(step) for step in self.history_], "epsilon": self.epsilon_}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A resumed fit keeps counting the privacy spent before the checkpoint."""
        self.history_ = [(float(s), float(q), int(n)) for s, q, n in state_dict.get("history", [])]
        self.epsilon_ = state_dict.get("epsilon")

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the settings and the spent privacy, not the live Opacus objects."""
        live = ("_loader", "_module", "_accountant", "_warnings", "_patched")
        state = {k: v for k, v in self.__dict__.items() if k not in ("log", "log_dict")}
        return {**state, **dict.fromkeys(live)}

    # ------------------------------------------------------------------ steps
    def _check_trainer(self, trainer: Any, pl_module: Any) -> None:
        _opacus()
        if trainer.world_size > 1:
            raise ConfigError(
                f"{OWNER} trains on one device (got world_size={trainer.world_size}). HINT: "
                "use devices=1; distributed DP-SGD needs Opacus' DPDDP, which this callback "
                "does not set up."
            )
        if int(trainer.accumulate_grad_batches) != 1:
            raise ConfigError(
                f"{OWNER} cannot be combined with accumulate_grad_batches="
                f"{trainer.accumulate_grad_batches}: with Poisson sampling every optimizer "
                "step must see exactly one sampled batch, or the privacy accounting is wrong. "
                "HINT: set accumulate_grad_batches=1 and raise the DataLoader's batch_size."
            )
        if trainer.gradient_clip_val:
            raise ConfigError(
                f"{OWNER} clips each record's gradient itself; gradient_clip_val="
                f"{trainer.gradient_clip_val} would clip the already private batch gradient. "
                "HINT: remove gradient_clip_val and tune DPSGD(max_grad_norm=...)."
            )
        if not pl_module.automatic_optimization:
            raise ConfigError(
                f"{OWNER} supports automatic optimization only. HINT: remove "
                "self.automatic_optimization = False, or train with Opacus' PrivacyEngine "
                "directly."
            )

    def _make_compatible(self, pl_module: nn.Module) -> None:
        from privacy_gate.training.dp_sgd import make_dp_compatible

        make_dp_compatible(pl_module, f"{OWNER} ({type(pl_module).__name__})")

    def _make_loader_private(self, trainer: Any) -> None:
        """Make Lightning's request for the train DataLoader return a Poisson-sampled one."""
        source = train_data_source(trainer, OWNER)
        self._restore_loader()  # a second fit of the same Trainer: patch the original once
        original = source.dataloader
        behaviour = self

        def private_loader() -> Any:
            loader = original()
            if not isinstance(loader, DataLoader):
                raise InputError(
                    f"{OWNER} needs one torch DataLoader for training. Got "
                    f"{type(loader).__name__} instead. HINT: return a DataLoader from "
                    "train_dataloader()."
                )
            from opacus.data_loader import DPDataLoader

            if loader.batch_size is None:
                raise InputError(
                    f"{OWNER} needs the train DataLoader's batch_size (the expected batch "
                    "size of Poisson sampling). HINT: build it with DataLoader(dataset, "
                    "batch_size=...), without a custom batch_sampler."
                )
            generator = None
            if behaviour.seed is not None:
                generator = torch.Generator().manual_seed(behaviour.seed)
            behaviour.batch_size_ = int(loader.batch_size)
            behaviour.dataset_size_ = len(loader.dataset)  # type: ignore[arg-type]
            behaviour._loader = DPDataLoader.from_data_loader(loader, generator=generator)
            return behaviour._loader

        self._patched = (source, source.__dict__.get("dataloader", _CLASS_ATTRIBUTE))
        source.dataloader = private_loader

    def _make_optimizer_private(self, trainer: Any, pl_module: nn.Module) -> None:
        from opacus import GradSampleModule
        from opacus.accountants import PRVAccountant
        from opacus.optimizers import DPOptimizer

        if self._loader is None:
            raise InputError(
                f"{OWNER} did not see the train DataLoader being created. HINT: pass the "
                "train data through fit(), the LightningModule or a LightningDataModule."
            )
        optimizers = trainer.strategy.optimizers
        if len(optimizers) != 1:
            raise ConfigError(
                f"{OWNER} supports one optimizer; configure_optimizers returned "
                f"{len(optimizers)}. HINT: return a single optimizer."
            )
        sample_rate = float(self._loader.sample_rate)
        expected = max(1, round(sample_rate * len(self._loader.dataset)))
        noise_generator = None
        if self.seed is not None:
            noise_generator = torch.Generator().manual_seed(self.seed + 1)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            self._module = GradSampleModule(pl_module, batch_first=True, loss_reduction="mean")
            optimizer = DPOptimizer(
                optimizers[0],
                noise_multiplier=self.settings.noise_multiplier,
                max_grad_norm=self.settings.max_grad_norm,
                expected_batch_size=expected,
                loss_reduction="mean",
                generator=noise_generator,
                secure_mode=self.secure_mode,
            )
        self._accountant = PRVAccountant()
        self._accountant.history = [tuple(step) for step in self.history_]
        history = self.history_

        def account(_: Any) -> None:  # one step of the Poisson-subsampled Gaussian
            self._accountant.step(
                noise_multiplier=self.settings.noise_multiplier, sample_rate=sample_rate
            )
            history[:] = list(self._accountant.history)

        optimizer.attach_step_hook(account)
        trainer.strategy.optimizers = [optimizer]

    def _delta(self) -> float:
        if self.delta is not None:
            return self.delta
        return 1.0 / max(self.dataset_size_ or 1, 1)

    def _epsilon(self) -> float | None:
        if not self.history_:
            return None
        from privacy_gate.dp.accounting import history_epsilon

        return history_epsilon(self.history_, delta=self._delta())
