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
    """Counts finished reference models; shows a bar on a terminal, logs otherwise."""

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        description: str = "reference models",
        enabled: bool = True,
    ) -> None:
        self.total, self.done, self.description = total, initial, description
        self._initial = initial
        self._start = time.monotonic()
        self._bar: Any = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, initial=initial, desc=description, unit="model")
            except ImportError:
                self._bar = None
        if initial:
            _LOG.info(
                "%d of %d %s already finished (stored; resumed or an earlier round).",
                initial,
                total,
                description,
            )

    def update(self, count: int = 1) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
            return
        elapsed = time.monotonic() - self._start
        rate = (self.done - self._initial) / elapsed if elapsed > 0 else 0.0
        remaining = (self.total - self.done) / rate if rate > 0 else float("nan")
        _LOG.info(
            "%d/%d %s trained (elapsed %.0f s, ETA %.0f s)",
            self.done,
            self.total,
            self.description,
            elapsed,
            remaining,
        )

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
