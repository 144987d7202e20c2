"""Callbacks that change the weights at the end of a fit (weight averaging: Lightning's
``WeightAveraging`` and ``EMAWeightAveraging``, ``StochasticWeightAveraging``), in either
Lightning namespace.

They copy the averaged weights into the module in their own ``on_train_end``, so the
released model is the average. The audit therefore runs after them, whatever the order
in ``callbacks=[...]`` (`last_in_line`), and the averaging is part of the recipe: each
reference model trains with a Lightning Trainer and a fresh copy of the same callback
(`fresh_copies`), as the candidate did. The report names the averaging
(``audit.training.weight_averaging``).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

__all__ = [
    "averaging_callbacks",
    "describe",
    "fresh_copies",
    "last_in_line",
    "reason",
    "templates",
]

_AVERAGING = ("WeightAveraging", "StochasticWeightAveraging")
_NAMESPACES = ("lightning.pytorch.callbacks", "pytorch_lightning.callbacks")


def _is_averaging(callback: Any) -> bool:
    """Whether ``callback`` is (a subclass of) one of Lightning's weight averagers."""
    return any(
        base.__name__ in _AVERAGING and base.__module__.startswith(_NAMESPACES)
        for base in type(callback).__mro__
    )


def averaging_callbacks(trainer: Any) -> list[Any]:
    """The Trainer's weight-averaging callbacks, in order."""
    return [c for c in getattr(trainer, "callbacks", []) if _is_averaging(c)]


def last_in_line(trainer: Any, callback: Any) -> None:
    """Put ``callback`` after every other callback, so its ``on_train_end`` sees the
    weights the others leave (the Trainer is iterating its list when setup runs, so the
    list is replaced, not changed in place)."""
    callbacks = list(trainer.callbacks)
    if callbacks and callbacks[-1] is not callback and callback in callbacks:
        trainer.callbacks = [c for c in callbacks if c is not callback] + [callback]


_PLAIN = (bool, int, float, str, type(None))
_STATE = ("_average_model", "_latest", "_initialized", "_model_contains_batch_norm", "_momenta",
          "n_averaged", "_scheduler_state", "_swa_scheduler", "momenta")  # fmt: skip


def _plain(value: Any) -> Any:
    """A setting as plain data: values as they are, a function as its name and the plain
    values it closes over (EMA's ``decay`` lives in the ``multi_avg_fn`` closure)."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items()) if _plain(v) is not _SKIP}
    if inspect.ismethod(value):  # e.g. the Trainer's log/log_dict: not a setting
        return _SKIP
    if callable(value):
        value = inspect.unwrap(value)  # torch.no_grad() wraps EMA's update
    code, cells = getattr(value, "__code__", None), getattr(value, "__closure__", None) or ()
    if code is not None:
        closed = {
            name: cell.cell_contents
            for name, cell in zip(code.co_freevars, cells, strict=False)
            if isinstance(cell.cell_contents, _PLAIN)
        }
        return {"function": getattr(value, "__qualname__", type(value).__name__), **closed}
    return _SKIP


_SKIP = object()


def describe(callback: Any) -> dict[str, Any]:
    """The callback's class and its plain settings (for the report and the store key)."""
    settings = {}
    for name, value in sorted(vars(callback).items()):
        if name.startswith(_STATE):
            continue
        plain = _plain(value)
        if plain is not _SKIP:
            settings[name.lstrip("_")] = plain
    return {"class": f"{type(callback).__module__}.{type(callback).__qualname__}", **settings}


def templates(callbacks: list[Any]) -> list[Any]:
    """Copies of ``callbacks`` as they are before training (taken at setup: after the fit
    they hold its averaged model and step counters), without an averaged model already
    built (each reference fit builds its own in its setup)."""
    copies = []
    for callback in callbacks:
        # Not copied: an averaged model already built, and what the Trainer attached
        # (log/log_dict: bound methods of the module, which a deep copy would copy whole).
        state = vars(callback)
        left_out = {k: state.pop(k) for k in ("_average_model", "log", "log_dict") if k in state}
        try:
            copies.append(copy.deepcopy(callback))
        finally:
            state.update(left_out)
        if "_average_model" in left_out:
            copies[-1]._average_model = None
    return copies


def fresh_copies(callbacks: list[Any]) -> list[Any]:
    """Copies of ``callbacks`` to give one reference model's Trainer (each fit sets up
    its own averaged model)."""
    return [copy.deepcopy(callback) for callback in callbacks]


def reason(callbacks: list[Any]) -> str | None:
    """Why the batched engine cannot train this fit's reference models (None: no
    averaging)."""
    if not callbacks:
        return None
    names = ", ".join(type(c).__name__ for c in callbacks)
    return (
        f"the fit averages its weights ({names}): each reference model trains with a "
        "Lightning Trainer and a fresh copy of it"
    )
