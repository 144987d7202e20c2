"""A progress bar with ETA for long trainings (tqdm when installed, else log lines)."""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Any

__all__ = ["Progress"]

_LOG = logging.getLogger("privacy_gate.training")


class Progress:
    """Counts finished reference models, and the epochs of those in training (a batched
    group reports each epoch, so a long round is not silent); shows a bar on a terminal,
    logs otherwise. The ETA is over model-epochs."""

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        description: str = "reference models",
        enabled: bool = True,
        epochs: int = 1,
    ) -> None:
        self.total, self.done, self.description = total, initial, description
        self.epochs = max(1, epochs)
        self._initial = initial
        self._partial = 0  # model-epochs of models still training
        self._start = time.monotonic()
        self._bar: Any = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm

                self._bar = tqdm(
                    total=total * self.epochs,
                    initial=initial * self.epochs,
                    desc=description,
                    unit="model-epoch",
                )
            except ImportError:
                self._bar = None
        if initial:
            _LOG.info(
                "%d of %d %s already finished (stored; resumed or an earlier round).",
                initial,
                total,
                description,
            )

    def epoch_done(self, models: int) -> None:
        """``models`` models still in training finished one more epoch."""
        self._partial += models
        if self._bar is not None:
            self._bar.update(models)
            return
        units = self.done * self.epochs + self._partial
        _LOG.info(
            "%d/%d model-epochs of the %s (%d/%d models done; elapsed %.0f s, ETA %.0f s)",
            units,
            self.total * self.epochs,
            self.description,
            self.done,
            self.total,
            *self._times(),
        )

    def update(self, count: int = 1) -> None:
        """``count`` models finished (their epochs reported or not)."""
        credited = min(self._partial, count * self.epochs)
        self._partial -= credited
        self.done += count
        if self._bar is not None:
            self._bar.update(count * self.epochs - credited)
            return
        _LOG.info(
            "%d/%d %s trained (elapsed %.0f s, ETA %.0f s)",
            self.done,
            self.total,
            self.description,
            *self._times(),
        )

    def _times(self) -> tuple[float, float]:
        """Elapsed seconds, and the estimate of those left (NaN before any progress)."""
        elapsed = time.monotonic() - self._start
        units = (self.done - self._initial) * self.epochs + self._partial
        rate = units / elapsed if elapsed > 0 else 0.0
        if rate <= 0:
            return elapsed, float("nan")
        return elapsed, ((self.total - self.done) * self.epochs - self._partial) / rate

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.close()
