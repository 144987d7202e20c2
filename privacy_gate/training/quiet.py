"""Quiet a framework's per-run chatter while dozens of reference models train.

A Lightning or Hugging Face Trainer logs its set-up and data-loader hints once per fit;
one per reference model would bury the audit's own log. Shared by both callbacks.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence

__all__ = ["quiet_loggers"]


@contextlib.contextmanager
def quiet_loggers(loggers: Sequence[str], warning_patterns: Sequence[str] = ()) -> Iterator[None]:
    """Raise ``loggers`` to WARNING and ignore warnings whose message matches one of
    ``warning_patterns``, restoring both afterwards."""
    found = [logging.getLogger(name) for name in loggers]
    levels = [logger.level for logger in found]
    with warnings.catch_warnings():
        for pattern in warning_patterns:
            warnings.filterwarnings("ignore", message=pattern)
        try:
            for logger in found:
                logger.setLevel(logging.WARNING)
            yield
        finally:
            for logger, level in zip(found, levels, strict=True):
                logger.setLevel(level)
