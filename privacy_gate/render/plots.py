"""Figures of the audit report, drawn from the report alone.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas, never
pyplot, so rendering touches no global state and is safe in servers and threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from numpy.typing import NDArray

from privacy_gate.render.view import n_subgroup_tests, representation, subgroup_alpha, tested_rows
from privacy_gate.report_model import AuditReport

__all__ = ["render_plots"]

DPI = 110
_MIN_FPR = 1e-5
_AT_RISK_COLOR = "tab:red"
_FLOOR_COLOR = "tab:gray"
_SIGNIFICANT_COLOR = "tab:red"
_OTHER_COLOR = "tab:gray"
_UNDER_COLOR = "tab:blue"  # significant, but fewer tail patients than expected: no violation


def _floats(values: Sequence[float]) -> NDArray[np.float64]:
    return np.array(values, dtype=np.float64)


def _plain(label: str) -> str:
    """Keep user text literal: a ``$`` would otherwise start matplotlib mathtext."""
    return label.replace("$", r"\$")


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    # No "Software" metadata, so the same report gives byte-identical files.
    figure.savefig(path, dpi=DPI, format="png", metadata={"Software": None})
    return path


def _reference_lines(axes: Any, report: AuditReport) -> None:
    """The at-risk AUC and the noise floor, the two reference lines of the AUC plots."""
    at_risk = report.summary.at_risk_auc
    floor = report.summary.noise_floor.max_patient_auc_q95
    axes.axvline(
        at_risk, color=_AT_RISK_COLOR, linestyle="--", label=f"at-risk AUC = {at_risk:.3f}"
    )
    axes.axvline(
        floor,
        color=_FLOOR_COLOR,
        linestyle="--",
        label=f"noise floor (95% null max) = {floor:.3f}",
    )


def _survival(report: AuditReport, path: Path) -> Path | None:
    survival = report.summary.survival
    grid = _floats(survival.auc)
    if grid.size == 0:
        return None
    n = grid.size

    def aligned(values: Sequence[float]) -> NDArray[np.float64]:
        out = np.full(n, np.nan)
        out[: min(n, len(values))] = _floats(values)[:n]
        return out

    share, lower, upper = aligned(survival.share), aligned(survival.lower), aligned(survival.upper)
    positive = np.concatenate([share[share > 0], upper[upper > 0]])
    patients = report.audit.patients
    # A log axis cannot show 0: the bottom is half the smallest share one patient can have.
    floor_share = 1.0 / patients if patients else (positive.min() if positive.size else 1e-3)
    bottom = 0.5 * min(floor_share, positive.min() if positive.size else floor_share)

    figure = _new_figure(6.4, 4.2)
    axes = figure.add_subplot()
    axes.set_yscale("log")
    shown = np.where(share > 0, share, np.nan)
    band_ok = np.isfinite(lower) & np.isfinite(upper) & (upper > 0)
    if band_ok.any():
        axes.fill_between(
            grid,
            np.where(lower > 0, lower, bottom),
            np.where(upper > 0, upper, bottom),
            where=band_ok,
            step="post",
            color="tab:blue",
            alpha=0.2,
            linewidth=0,
            label="95% band",
        )
    if np.isfinite(shown).any():
        axes.step(grid, shown, where="post", color="tab:blue", label="share of patients")
    else:
        axes.text(0.5, 0.5, "no patient above 0.5", transform=axes.transAxes, ha="center")
    _reference_lines(axes, report)
    axes.set_ylim(bottom, 1.5)
    axes.set_xlim(float(np.nanmin(grid)), float(np.nanmax(grid)))
    axes.set_xlabel("patient AUC x")
    axes.set_ylabel("share of patients with AUC ≥ x")
    axes.set_title("Patient AUC survival")
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="lower left", fontsize="small")
    return _save(figure, path)


def _histogram(report: AuditReport, path: Path) -> Path | None:
    histogram = report.summary.histogram
    edges = _floats(histogram.edges)
    counts = _floats(histogram.counts)
    if edges.size < 2 or counts.size != edges.size - 1:
        return None
    figure = _new_figure(6.4, 4.2)
    axes = figure.add_subplot()
    axes.set_yscale("log")
    keep = counts > 0
    if keep.any():
        axes.bar(
            edges[:-1][keep],
            counts[keep],
            width=np.diff(edges)[keep],
            align="edge",
            color="tab:blue",
            edgecolor="white",
            linewidth=0.5,
        )
        axes.set_ylim(0.5, float(counts[keep].max()) * 2.0)
    else:
        axes.set_ylim(0.5, 10.0)
    _reference_lines(axes, report)
    axes.set_xlim(float(edges[0]), float(edges[-1]))
    axes.set_xlabel("patient AUC")
    axes.set_ylabel("patients")
    axes.set_title("Patient AUC distribution")
    axes.grid(True, axis="y", which="major", alpha=0.3)
    axes.legend(loc="upper right", fontsize="small")
    return _save(figure, path)


def _attack_roc(report: AuditReport, path: Path) -> Path | None:
    aggregate = report.aggregate
    if aggregate is None or not aggregate.attacks:
        return None
    non_members = aggregate.non_members
    # Below one false positive in the non-members the empirical ROC has no resolution.
    low = max(_MIN_FPR, 1.0 / non_members) if non_members else _MIN_FPR
    strongest = aggregate.strongest
    figure = _new_figure(5.6, 5.0)
    axes = figure.add_subplot()
    axes.set_xscale("log")
    axes.set_yscale("log")
    chance = np.array([low, 1.0])
    axes.plot(chance, chance, color="black", linestyle=":", linewidth=1, label="chance")
    for name, attack in aggregate.attacks.items():
        fpr, tpr = _floats(attack.roc.fpr), _floats(attack.roc.tpr)
        if fpr.size == 0 or fpr.size != tpr.size:
            continue
        auc = attack.auc
        label = f"{name} (AUC {auc:.3f})" if auc is not None else f"{name} (AUC n/a)"
        is_strongest = name == strongest
        axes.plot(
            np.clip(fpr, low, 1.0),
            np.clip(tpr, low, 1.0),
            linewidth=2.2 if is_strongest else 1.2,
            label=_plain(label + (", strongest" if is_strongest else "")),
        )
    axes.set_xlim(low, 1.0)
    axes.set_ylim(low, 1.0)
    axes.set_xlabel("false positive rate")
    axes.set_ylabel("true positive rate")
    axes.set_title("Membership attacks on the release candidate")
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    return _save(figure, path)


def _short(label: str, limit: int = 40) -> str:
    """Long subgroup labels would squeeze the bars out of the figure."""
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _subgroups(report: AuditReport, path: Path) -> Path | None:
    n_tests = n_subgroup_tests(report)
    rows = [r for r in tested_rows(report) if r.group.relative_change is not None]
    if not rows:
        return None
    labels = [_plain(_short(f"{r.column} = {r.value}")) for r in rows]
    values = np.array([r.group.relative_change for r in rows], dtype=np.float64) * 100.0
    alpha = subgroup_alpha(report)
    shades = {"over": _SIGNIFICANT_COLOR, "under": _UNDER_COLOR, None: _OTHER_COLOR}
    colors = [shades[representation(r, n_tests, alpha)] for r in rows]
    figure = _new_figure(7.0, 1.8 + 0.32 * len(rows))
    axes = figure.add_subplot()
    positions = np.arange(len(rows))[::-1]
    axes.barh(positions, values, color=colors, height=0.7)
    axes.set_yticks(positions, labels=labels, fontsize="small")
    axes.axvline(0.0, color="black", linewidth=0.8)
    axes.legend(
        handles=[
            Patch(color=_SIGNIFICANT_COLOR, label=f"over-represented (p × {n_tests} < {alpha:g})"),
            Patch(color=_UNDER_COLOR, label="under-represented (significant)"),
            Patch(color=_OTHER_COLOR, label="not significant"),
        ],
        loc="best",
        fontsize="small",
    )
    axes.set_xlabel("relative change of tail patients, (O − E) / E, in %")
    axes.set_title("Subgroups in the exposed tail")
    axes.grid(True, axis="x", alpha=0.3)
    return _save(figure, path)


_FIGURES = (
    ("patient_auc_survival", _survival),
    ("patient_auc_histogram", _histogram),
    ("attack_roc", _attack_roc),
    ("subgroups", _subgroups),
)


def render_plots(report: AuditReport, out_dir: Path) -> dict[str, Path]:
    """Write the report's figures as PNG files; skip those the report has no data for.

    ``attack_roc`` needs an aggregate attack (``aggregate`` not null) and ``subgroups``
    at least one tested group; an ``error`` report may have no figure at all.

    Args:
        report: The audit report.
        out_dir: Directory for the files; created if missing.

    Returns:
        Figure name (file stem) to the path written, in reading order.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, draw in _FIGURES:
        path = draw(report, out_dir / f"{name}.png")
        if path is not None:
            written[name] = path
    return written
