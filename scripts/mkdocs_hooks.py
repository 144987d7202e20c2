"""MkDocs hooks: repository files the documentation links to become part of the site.

The pages in ``docs/`` link to files outside it with ordinary relative links (the
examples' READMEs, ``ARCHITECTURE.md``, ``examples/github/privacy-gate.yml``), so the
links work on GitHub and in a clone (``tests/unit/test_doc_links.py`` resolves them).
MkDocs only knows ``docs/``, so ``on_files`` adds every such file to the site under
``repo/`` (Markdown files as pages, following their own links in turn), and
``on_page_markdown`` rewrites those links, and the links of the mirrored pages, to the
files' places in the site. Nothing is written into the repository.

The docstrings carry doctests outside any ``Examples:`` section (pytest runs them);
Markdown would read their ``>>>`` as nested block quotes and their output lists as
link references, so ``on_config`` adds `DoctestFences`, which fences each doctest as
``pycon`` code, for the pages and for mkdocstrings' docstrings alike.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from markdown import Markdown
from markdown.extensions import Extension
from markdown.preprocessors import Preprocessor
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

MIRROR = "repo"
"""The site folder that holds the repository files the documentation links to."""
ALWAYS = ("ARCHITECTURE.md", "examples/*/README.md")
"""Mirrored even when no page links to them (the navigation lists them)."""

_LINK = re.compile(r"(?<!!)(\[[^\]]*\]\()([^)\s]+)((?:\s+\"[^\"]*\")?\))")
_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:")


class _DoctestPreprocessor(Preprocessor):
    """Fence every doctest (a ``>>>`` line up to the next blank line) outside fences."""

    def run(self, lines: list[str]) -> list[str]:
        out: list[str] = []
        fence: str | None = None
        index = 0
        while index < len(lines):
            line = lines[index]
            stripped = line.lstrip()
            if fence is not None:
                if stripped.startswith(fence):
                    fence = None
                out.append(line)
            elif stripped.startswith(("```", "~~~")):
                fence = stripped[:3]
                out.append(line)
            elif stripped == ">>>" or stripped.startswith(">>> "):
                indent = line[: len(line) - len(stripped)]
                block = []
                while index < len(lines) and lines[index].strip():
                    block.append(lines[index])
                    index += 1
                out += ["", f"{indent}```pycon", *block, f"{indent}```", ""]
                continue
            else:
                out.append(line)
            index += 1
        return out


class DoctestFences(Extension):
    """Markdown extension: doctests become ``pycon`` code blocks."""

    def extendMarkdown(self, md: Markdown) -> None:
        # Before the fenced-code preprocessors (priority 25), which then render the fence.
        md.preprocessors.register(_DoctestPreprocessor(md), "doctest_fences", 29)


@event_priority(100)  # before mkdocstrings reads the extensions
def on_config(config: Any) -> Any:
    config.markdown_extensions.append(DoctestFences())
    return config


def _paths(config: Any) -> tuple[Path, Path]:
    repo = Path(config.config_file_path).resolve().parent
    return repo, Path(config.docs_dir).resolve()


def _relative_targets(text: str) -> list[str]:
    """The relative link targets of a Markdown text, outside fenced code blocks."""
    text = _FENCE.sub("", text)
    return [
        m.group(2)
        for m in _LINK.finditer(text)
        if not _SCHEME.match(m.group(2)) and not m.group(2).startswith("#")
    ]


def on_files(files: Files, config: Any) -> Files:
    repo, docs = _paths(config)
    queue = [Path(f.abs_src_path) for f in files.documentation_pages() if f.abs_src_path]
    queue += [path for pattern in ALWAYS for path in sorted(repo.glob(pattern))]
    mirrored: set[Path] = set()
    while queue:
        document = queue.pop(0).resolve()
        if not document.is_relative_to(docs) and document not in mirrored:
            mirrored.add(document)
            rel = document.relative_to(repo).as_posix()
            files.append(File.generated(config, f"{MIRROR}/{rel}", abs_src_path=str(document)))
        if document.suffix != ".md":
            continue
        for target in _relative_targets(document.read_text("utf-8")):
            path = (document.parent / target.split("#", 1)[0]).resolve()
            inside = path.is_relative_to(repo) and not path.is_relative_to(docs)
            if inside and path.is_file() and path not in mirrored:
                queue.append(path)
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Point links into the repository at the files' places in the site."""
    repo, docs = _paths(config)
    source = Path(page.file.abs_src_path).resolve()
    here = posixpath.dirname(page.file.src_uri)

    def rewrite(match: re.Match[str]) -> str:
        target = match.group(2)
        if _SCHEME.match(target) or target.startswith("#"):
            return match.group(0)
        path_part, _, anchor = target.partition("#")
        path = (source.parent / path_part).resolve()
        if not path.is_relative_to(repo) or not path.exists():
            return match.group(0)  # left for MkDocs to report
        if path.is_relative_to(docs):
            if source.is_relative_to(docs):
                return match.group(0)
            site_path = path.relative_to(docs).as_posix()
        else:
            site_path = f"{MIRROR}/{path.relative_to(repo).as_posix()}"
        new = posixpath.relpath(site_path, here or ".")
        return f"{match.group(1)}{new}{'#' + anchor if anchor else ''}{match.group(3)}"

    pieces, last = [], 0
    for fence in _FENCE.finditer(markdown):
        pieces.append(_LINK.sub(rewrite, markdown[last : fence.start()]))
        pieces.append(fence.group(0))
        last = fence.end()
    pieces.append(_LINK.sub(rewrite, markdown[last:]))
    return "".join(pieces)
