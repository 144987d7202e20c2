"""The document model: plain-text blocks that the Markdown and the HTML renderers escape
themselves, so the two renderings cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass


# ---------------------------------------------------------------------- content model
@dataclass(frozen=True)
class Strong:
    """Emphasised text."""

    text: str


@dataclass(frozen=True)
class Code:
    """An identifier (rule, attack or patient key), shown verbatim."""

    text: str


Span = str | Strong | Code
Text = tuple[Span, ...]


@dataclass(frozen=True)
class Paragraph:
    text: Text


@dataclass(frozen=True)
class Bullets:
    items: tuple[Text, ...]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[Span, ...], ...]
    numeric: tuple[bool, ...]
    """Per column: right-align (numbers)."""


@dataclass(frozen=True)
class Image:
    name: str
    caption: str
    source: str
    """Relative file name (Markdown) or file path (HTML, embedded)."""


@dataclass(frozen=True)
class Verdict:
    status: str
    """``pass``, ``fail``, ``error`` or whatever unexpected status the report holds."""
    headline: Text
    items: tuple[Text, ...]


@dataclass(frozen=True)
class Heading:
    text: str
    level: int


@dataclass(frozen=True)
class CodeBlock:
    """Verbatim lines (a config or code change to apply)."""

    text: str
    language: str = ""


Block = Paragraph | Bullets | Table | Image | Verdict | Heading | CodeBlock


@dataclass(frozen=True)
class Document:
    title: str
    blocks: tuple[Block, ...]
