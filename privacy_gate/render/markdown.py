"""The document as Markdown (:func:`render_markdown`)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

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

# ------------------------------------------------------------------ Markdown output
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~$&])")
_MD_LINE_START = re.compile(r"^(\s*)([#+\-=>]|\d+[.)])")


def escape_markdown(text: str) -> str:
    """Backslash-escape characters that Markdown (GFM) would interpret.

    Newlines become spaces, so a string cannot open a new block (heading, list, table).
    """
    text = " ".join(text.splitlines())
    return _MD_SPECIAL.sub(r"\\\1", text)


def _md_block_start(text: str) -> str:
    """Escape a leading marker that would turn a paragraph or list item into another block."""
    return _MD_LINE_START.sub(lambda m: m.group(1) + "\\" + m.group(2), text, count=1)


def _md_code(text: str, *, in_table: bool) -> str:
    text = " ".join(text.splitlines())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    out = f"{fence}{pad}{text}{pad}{fence}"
    return out.replace("|", "\\|") if in_table else out


def _md_span(span: Span, *, in_table: bool = False) -> str:
    if isinstance(span, Strong):
        return f"**{escape_markdown(span.text)}**"
    if isinstance(span, Code):
        return _md_code(span.text, in_table=in_table)
    return escape_markdown(span)


def _md_text(text: Text) -> str:
    return _md_block_start("".join(_md_span(s) for s in text))


def _md_link_target(source: str) -> str:
    if re.search(r"[\s()<>]", source):
        return "<" + source.replace("<", "%3C").replace(">", "%3E") + ">"
    return source


def _md_block(block: Block, heading_offset: int = 0) -> str:
    if isinstance(block, Heading):
        return f"{'#' * (block.level + heading_offset)} {escape_markdown(block.text)}"
    if isinstance(block, Paragraph):
        return _md_text(block.text)
    if isinstance(block, Bullets):
        return "\n".join(f"- {_md_text(item)}" for item in block.items)
    if isinstance(block, Verdict):
        lines = [_md_text(block.headline)]
        if block.items:
            lines.append("")
            lines += [f"- {_md_text(item)}" for item in block.items]
        return "\n".join(lines)
    if isinstance(block, CodeBlock):
        longest = max((len(run) for run in re.findall(r"`+", block.text)), default=0)
        fence = "`" * max(3, longest + 1)
        return f"{fence}{block.language}\n{block.text}\n{fence}"
    if isinstance(block, Image):
        alt = escape_markdown(block.name.replace("_", " "))
        return f"![{alt}]({_md_link_target(block.source)})\n\n*{escape_markdown(block.caption)}*"
    return _md_table(block)


def _md_table(table: Table) -> str:
    def row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    header = row([escape_markdown(h) or " " for h in table.header])
    rule = row(["---:" if n else "---" for n in table.numeric])
    body = [row([_md_span(c, in_table=True) for c in r]) for r in table.rows]
    return "\n".join([header, rule, *body])


def render_blocks(blocks: Sequence[Block], *, heading_offset: int = 0) -> str:
    """Blocks as Markdown; ``heading_offset`` nests them (a job summary under its own
    level-2 title)."""
    return "\n\n".join(_md_block(b, heading_offset) for b in blocks) + "\n"


def render_markdown(
    report: AuditReport,
    plots: Mapping[str, str] | None = None,
    comparison: Sequence[Block] = (),
) -> str:
    """The audit report as Markdown, verdict first, for a privacy officer or a CI summary.

    Args:
        report: The audit report.
        plots: Figure name to image file name relative to the Markdown file, as returned
            by :func:`~privacy_gate.render.render_plots` (use ``path.name``).
        comparison: blocks of a comparison against the champion (after the key figures).

    Returns:
        The Markdown text, ending with a newline.
    """
    return markdown_page(build_document(report, dict(plots or {}), comparison))


def markdown_page(document: Document) -> str:
    """A whole document as Markdown: its title, then its blocks."""
    parts = [f"# {escape_markdown(document.title)}"]
    parts += [_md_block(b) for b in document.blocks]
    return "\n\n".join(parts) + "\n"
