"""Every relative link in the README and the documentation resolves inside the repository
(a link to a file outside it, e.g. ../shared/DESIGN.md, is missing from a clone)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted(
    {
        REPO / "README.md",
        REPO / "ARCHITECTURE.md",
        *(REPO / "docs").rglob("*.md"),
        *(REPO / "examples").rglob("README.md"),
        *(REPO / "benchmarks").rglob("*.md"),
    }
)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)|!\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def relative_links(text: str) -> list[str]:
    """The relative link targets of a Markdown text, outside code blocks.

    >>> relative_links("[a](docs/x.md#y) [b](https://e.org) ![c](img.png)\\n```\\n[d](no.md)\\n```")
    ['docs/x.md', 'img.png']
    """
    text = _FENCE.sub("", text)
    targets = [m.group(1) or m.group(2) for m in LINK.finditer(text)]
    return [
        t.split("#", 1)[0]
        for t in targets
        if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")
    ]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve_inside_the_repository(document: Path) -> None:
    broken = []
    for target in relative_links(document.read_text("utf-8")):
        resolved = (document.parent / target).resolve()
        if not resolved.is_relative_to(REPO) or not resolved.exists():
            broken.append(target)
    assert not broken, f"{document.relative_to(REPO)}: {broken}"
