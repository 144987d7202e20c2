"""The audit report as one self-contained HTML page.

Same content as the Markdown (both render :func:`~privacy_gate.render.document.build_document`).
The page loads nothing: CSS is inline, figures are ``data:`` URIs, there is no script,
and a Content-Security-Policy forbids any other source, so it can be archived, mailed
or opened offline and cannot leak that it was viewed.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path

from privacy_gate.render.blocks import (
    Block,
    Bullets,
    Code,
    CodeBlock,
    Document,
    Heading,
    Image,
    Paragraph,
    Span,
    Strong,
    Table,
    Text,
    Verdict,
)
from privacy_gate.render.document import build_document
from privacy_gate.report_model import AuditReport

__all__ = ["render_html"]

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       max-width: 960px; margin: 2em auto; padding: 0 1em; color: #1b1b1b; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.6em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #d0d0d0; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 0.95em;
       background: #f4f4f4; padding: 0 0.2em; border-radius: 3px; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.9em; color: #555; }
.verdict { border-radius: 6px; padding: 0.8em 1.2em; margin: 1em 0 1.5em; color: #fff; }
.verdict p { margin: 0.2em 0; font-size: 1.1em; }
.verdict ul { margin: 0.5em 0 0.2em; }
.verdict code { background: rgba(255, 255, 255, 0.2); color: inherit; }
.verdict-pass { background: #1e7b34; }
.verdict-fail { background: #b3261e; }
.verdict-error, .verdict-unknown { background: #5f6368; }
"""


def _span(span: Span) -> str:
    if isinstance(span, Strong):
        return f"<strong>{escape(span.text)}</strong>"
    if isinstance(span, Code):
        return f"<code>{escape(span.text)}</code>"
    return escape(span)


def _text(text: Text) -> str:
    return "".join(_span(s) for s in text)


def _image(block: Image) -> str:
    data = base64.b64encode(Path(block.source).read_bytes()).decode("ascii")
    alt = escape(block.name.replace("_", " "))
    return (
        f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
        f"<figcaption>{escape(block.caption)}</figcaption></figure>"
    )


def _table(table: Table) -> str:
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in table.header)
    rows = []
    for row in table.rows:
        cells = "".join(
            f'<td class="num">{_span(c)}</td>' if numeric else f"<td>{_span(c)}</td>"
            for c, numeric in zip(row, table.numeric, strict=False)
        )
        rows.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _verdict(block: Verdict) -> str:
    kind = block.status if block.status in ("pass", "fail", "error") else "unknown"
    items = "".join(f"<li>{_text(item)}</li>" for item in block.items)
    listing = f"<ul>{items}</ul>" if items else ""
    return (
        f'<section class="verdict verdict-{kind}" role="status">'
        f"<p>{_text(block.headline)}</p>{listing}</section>"
    )


def _block(block: Block) -> str:
    if isinstance(block, Heading):
        level = min(max(block.level, 1), 6)
        return f"<h{level}>{escape(block.text)}</h{level}>"
    if isinstance(block, Paragraph):
        return f"<p>{_text(block.text)}</p>"
    if isinstance(block, Bullets):
        return "<ul>" + "".join(f"<li>{_text(i)}</li>" for i in block.items) + "</ul>"
    if isinstance(block, Verdict):
        return _verdict(block)
    if isinstance(block, Image):
        return _image(block)
    if isinstance(block, CodeBlock):
        return f"<pre><code>{escape(block.text)}</code></pre>"
    return _table(block)


def render_html(
    report: AuditReport,
    plots: Mapping[str, Path] | None = None,
    comparison: Sequence[Block] = (),
) -> str:
    """The audit report as a self-contained HTML page, verdict banner first.

    Args:
        report: The audit report.
        plots: Figure name to PNG path, as returned by
            :func:`~privacy_gate.render.render_plots`; the images are embedded.
        comparison: blocks of a comparison against the champion (after the key figures).

    Returns:
        The HTML document.
    """
    figures = {name: str(path) for name, path in (plots or {}).items()}
    return html_page(build_document(report, figures, comparison))


def html_page(document: Document) -> str:
    """A whole document as a self-contained HTML page."""
    body = "\n".join(_block(b) for b in document.blocks)
    title = escape(document.title)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{title}</h1>\n{body}\n</body>\n</html>\n"
    )
