"""Human-readable sinks of the audit report: figures, Markdown and self-contained HTML.

All three read only the typed report (`privacy_gate.report_model.AuditReport`; read
``report.json`` back with ``AuditReport.from_dict``), so a report can be re-rendered
later without the audit's data. Typical use::

    plots = render_plots(report, out_dir)
    markdown = render_markdown(report, {name: path.name for name, path in plots.items()})
    page = render_html(report, plots)
"""

from privacy_gate.render.html import render_html
from privacy_gate.render.markdown import render_markdown
from privacy_gate.render.plots import render_plots

__all__ = ["render_html", "render_markdown", "render_plots"]
