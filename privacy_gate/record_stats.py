"""Per-record statistics: record AUC, its standard error, TPR at FPR and GDP mu.

All formulas are the closed forms of docs/statistics.md ("Definitions"): binormal record AUC from
the IN/OUT score moments (population std, ddof=0), Hanley & McNeil (1982) standard error,
the binormal ROC and the empirical Gaussian-DP parameter.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import special

__all__ = [
    "AUC_CEILING",
    "SD_FLOOR",
    "RecordMoments",
    "RecordStats",
    "binormal_auc",
    "binormal_tpr",
    "compute_record_stats",
    "gdp_mu",
    "hanley_mcneil_se",
    "masked_moments_exact",
    "plain_auc",
    "record_moments",
]

SD_FLOOR = 1e-6
"""Standard deviation given to a record whose IN (or OUT) scores are all exactly equal
(saturated models). Only exactly-constant score sets get it, so no record with real
variance moves; it keeps every figure finite, and equal means still give AUC 0.5."""

AUC_CEILING = 1.0 - 1e-10
"""Record AUCs are clipped to [0.5, AUC_CEILING] so that GDP mu stays finite."""

_CHUNK_ELEMENTS = 1 << 17  # ~1 MiB of float64: a chunk's passes stay in cache
_MIN_CHUNKS_PER_THREAD = 8  # smaller inputs run in the calling thread
_MAX_THREADS = 8

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class RecordMoments:
    """IN/OUT score moments per record; every array is ``(n_records,)``."""

    mu_in: FloatArray
    sd_in: FloatArray
    mu_out: FloatArray
    sd_out: FloatArray
    n_in: NDArray[np.int64]
    n_out: NDArray[np.int64]


@dataclass(frozen=True)
class RecordStats:
    """Risk figures per record.

    Attributes:
        moments: the IN/OUT moments the figures come from.
        auc: ``(n_records,)`` record AUC in [0.5, 1 - 1e-10].
        auc_se: ``(n_records,)`` Hanley-McNeil standard error of ``auc``.
        tpr: ``(n_fpr, n_records)`` binormal TPR at each FPR in ``fpr``.
        fpr: ``(n_fpr,)`` the false-positive rates of ``tpr``.
        mu: ``(n_records,)`` empirical Gaussian-DP parameter.
    """

    moments: RecordMoments
    auc: FloatArray
    auc_se: FloatArray
    tpr: FloatArray
    fpr: FloatArray
    mu: FloatArray


def _chunks(n_models: int, n_records: int) -> range:
    width = max(1, _CHUNK_ELEMENTS // max(n_models, 1))
    return range(0, n_records, width)


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _for_each_chunk(
    n_models: int,
    n_records: int,
    n_buffers: int,
    work: Callable[[slice, list[FloatArray]], None],
) -> None:
    """Call ``work(columns, buffers)`` for every column chunk of a ``(n_models, n_records)``
    input, with ``n_buffers`` float64 scratch arrays of at least a chunk's size.

    Chunks are independent and each writes its own columns, so large inputs are split
    over the usable cores (NumPy and SciPy release the GIL in their loops); every
    number is the same whichever thread computes it.
    """
    # NumPy sums a one-column array over axis 0 in another order (pairwise) than a wider
    # one (row by row), so no chunk is one column wide: the numbers then do not depend
    # on the chunking at all.
    width = max(2, _chunks(n_models, n_records).step)
    starts = list(range(0, n_records, width))
    if len(starts) > 1 and n_records - starts[-1] == 1:
        starts.pop()
    chunks = [slice(a, b) for a, b in zip(starts, [*starts[1:], n_records], strict=True)]
    size = n_models * min(width + 1, n_records)
    threads = max(1, min(_usable_cores(), _MAX_THREADS, len(chunks) // _MIN_CHUNKS_PER_THREAD))

    def run(part: list[slice]) -> None:
        buffers = [np.empty(size) for _ in range(n_buffers)]
        for columns in part:
            work(columns, buffers)

    if threads == 1:
        run(chunks)
        return
    with ThreadPoolExecutor(threads) as pool:
        # Each part runs in a copy of the caller's context (NumPy's errstate lives there).
        parts = [chunks[i::threads] for i in range(threads)]
        for future in [pool.submit(contextvars.copy_context().run, run, p) for p in parts]:
            future.result()


def masked_moments_exact(
    scores: FloatArray, selected: NDArray[np.bool_], count: NDArray[np.int64]
) -> tuple[FloatArray, FloatArray]:
    """The definition of `_masked_moments`, for the few columns it cannot shortcut."""
    mean = np.where(selected, scores, 0.0).sum(axis=0) / count
    largest = np.where(selected, scores, -np.inf).max(axis=0)
    constant = largest == np.where(selected, scores, np.inf).min(axis=0)
    mean = np.where(constant, largest, mean)
    centred = np.where(selected, scores - mean, 0.0)
    sd = np.sqrt(np.einsum("ij,ij->j", centred, centred) / count)
    return mean, np.where(constant | (sd == 0.0), SD_FLOOR, sd)


def _masked_moments(
    scores: FloatArray, selected: FloatArray, count: NDArray[np.int64], work: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Mean and population std per column over the selected entries.

    ``selected`` is 1.0 where an entry belongs to the set and 0.0 elsewhere; ``work`` is
    scratch space of the shape of ``scores``. A set whose values are all exactly equal gets
    its exact value as mean (so equal constant sets compare equal) and `SD_FLOOR` as std;
    so does a variance that underflows to 0.

    Same numbers as `masked_moments_exact`, bit for bit, in fewer passes: a product with
    1.0 or 0.0 is exact and the sums run over the rows in the same order. A constant set
    has ``|x - mean| <= count * eps * |x|`` after rounding, so its std is far below
    ``1e-9 * |mean|``; only such columns (and any non-finite one) can differ, and they are
    recomputed by the definition.
    """
    with np.errstate(all="ignore"):  # the columns that warn are redone (and warn) below
        np.multiply(scores, selected, out=work)
        mean = work.sum(axis=0) / count
        np.subtract(scores, mean, out=work)
        work *= selected
        sd = np.sqrt(np.einsum("ij,ij->j", work, work) / count)
        clear = (sd > 1e-9 * np.abs(mean) + 1e-300) & np.isfinite(mean)
    if not clear.all():
        redo = np.flatnonzero(~clear)
        # C order and two columns at least, so that NumPy sums them row by row like the
        # others (it sums a column in memory order pairwise).
        cols = np.r_[redo, redo] if len(redo) == 1 < scores.shape[1] else redo
        redo_mean, redo_sd = masked_moments_exact(
            np.ascontiguousarray(scores[:, cols]),
            np.ascontiguousarray(selected[:, cols] != 0.0),
            count[cols],
        )
        mean[redo], sd[redo] = redo_mean[: len(redo)], redo_sd[: len(redo)]
    return mean, sd


def record_moments(scores: NDArray[np.floating[Any]], masks: NDArray[np.bool_]) -> RecordMoments:
    """Mean and population std of each record's IN and OUT scores.

    Works in column chunks small enough to stay in the CPU cache, so memory stays near
    the size of the inputs. Score sets that are exactly constant get `SD_FLOOR` instead
    of 0.

    Args:
        scores: ``(n_reference_models, n_records)`` membership scores.
        masks: ``(n_reference_models, n_records)`` True where the record was IN.
    """
    n_models, n_records = scores.shape
    n_in = masks.sum(axis=0, dtype=np.int64)
    n_out = n_models - n_in
    mu_in, sd_in = np.empty(n_records), np.empty(n_records)
    mu_out, sd_out = np.empty(n_records), np.empty(n_records)

    def work(cols: slice, buffers: list[FloatArray]) -> None:
        shape = (n_models, cols.stop - cols.start)
        s, is_in, is_out, scratch = (b[: shape[0] * shape[1]].reshape(shape) for b in buffers)
        np.copyto(s, scores[:, cols], casting="unsafe")
        np.copyto(is_in, masks[:, cols])
        np.subtract(1.0, is_in, out=is_out)
        mu_in[cols], sd_in[cols] = _masked_moments(s, is_in, n_in[cols], scratch)
        mu_out[cols], sd_out[cols] = _masked_moments(s, is_out, n_out[cols], scratch)

    _for_each_chunk(n_models, n_records, 4, work)
    return RecordMoments(mu_in, sd_in, mu_out, sd_out, n_in, n_out)


def binormal_auc(
    mu_in: FloatArray, sd_in: FloatArray, mu_out: FloatArray, sd_out: FloatArray
) -> FloatArray:
    """``Phi((mu_in - mu_out) / sqrt(sd_in^2 + sd_out^2))`` clipped to [0.5, 1 - 1e-10].

    >>> float(binormal_auc(np.array([1.0]), np.array([1.0]), np.array([0.0]), np.array([0.0]))[0])
    0.8413447460685429
    """
    z = (mu_in - mu_out) / np.sqrt(sd_in**2 + sd_out**2)
    return np.clip(np.asarray(special.ndtr(z), dtype=np.float64), 0.5, AUC_CEILING)


def hanley_mcneil_se(
    auc: FloatArray, n_in: NDArray[np.integer[Any]], n_out: NDArray[np.integer[Any]]
) -> FloatArray:
    """Hanley & McNeil (1982) standard error of an AUC from ``n_in`` positives and
    ``n_out`` negatives.

    >>> round(float(hanley_mcneil_se(np.array([0.5]), np.array([1]), np.array([1]))[0]), 3)
    0.5
    """
    q0 = auc / (2.0 - auc)
    q1 = 2.0 * auc**2 / (1.0 + auc)
    variance = (auc * (1.0 - auc) + (n_in - 1) * (q0 - auc**2) + (n_out - 1) * (q1 - auc**2)) / (
        n_in * n_out
    )
    return np.sqrt(np.maximum(variance, 0.0))


def binormal_tpr(
    mu_in: FloatArray, sd_in: FloatArray, mu_out: FloatArray, sd_out: FloatArray, fpr: FloatArray
) -> FloatArray:
    """TPR of the record's binormal ROC at each FPR: ``Phi(a + b * Phi^-1(f))`` with
    ``a = (mu_in - mu_out) / sd_in`` and ``b = sd_out / sd_in``.

    Returns:
        ``(n_fpr, n_records)``.
    """
    a = (mu_in - mu_out) / sd_in
    b = sd_out / sd_in
    z = a[None, :] + b[None, :] * special.ndtri(fpr)[:, None]
    return np.asarray(special.ndtr(z), dtype=np.float64)


def gdp_mu(auc: FloatArray) -> FloatArray:
    """Empirical Gaussian-DP parameter ``sqrt(2) * Phi^-1(auc)`` (0 at AUC 0.5)."""
    return np.asarray(np.sqrt(2.0) * special.ndtri(auc), dtype=np.float64)


def plain_auc(m: RecordMoments) -> FloatArray:
    """The record AUC from the plain sample moments."""
    return binormal_auc(m.mu_in, m.sd_in, m.mu_out, m.sd_out)


def compute_record_stats(
    scores: NDArray[np.floating[Any]],
    masks: NDArray[np.bool_],
    fpr: tuple[float, ...] | FloatArray,
    *,
    estimate: Callable[[RecordMoments], RecordMoments] | None = None,
) -> RecordStats:
    """All per-record figures from reference-model signals.

    Args:
        scores: ``(n_reference_models, n_records)``.
        masks: ``(n_reference_models, n_records)``.
        fpr: the FPRs at which to report the record's TPR.
        estimate: the moments the AUC and TPR are computed from (e.g. shrunk variances,
            `privacy_gate.variance`); ``moments`` keeps the plain ones either way.
    """
    moments = record_moments(scores, masks)
    used = moments if estimate is None else estimate(moments)
    auc = plain_auc(used)
    fpr_array = np.asarray(fpr, dtype=np.float64)
    return RecordStats(
        moments=moments,
        auc=auc,
        auc_se=hanley_mcneil_se(auc, moments.n_in, moments.n_out),
        tpr=binormal_tpr(used.mu_in, used.sd_in, used.mu_out, used.sd_out, fpr_array),
        fpr=fpr_array,
        mu=gdp_mu(auc),
    )
