"""The code's shape: no import cycle among the project's modules, no module over the
length a newcomer can read in one sitting."""

from __future__ import annotations

from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")

ROOT = Path(__file__).parents[2]
PACKAGES = ("privacy_gate", "lightning_callbacks")
MAX_LINES = 450


def _cycles() -> list[tuple[str, ...]]:
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False)
    found = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                found.append((importer, *back))
    return found


def test_no_import_cycle_among_project_modules() -> None:
    """A cycle (even through a function-level import) means two modules know each other;
    import-linter's package-level layers do not see one inside a package."""
    assert _cycles() == []


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from cyclic import b\n")
    (package / "b.py").write_text("from cyclic import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("cyclic", cache_dir=None)
    assert graph.find_shortest_chain(importer="cyclic.b", imported="cyclic.a") is not None
    assert graph.find_shortest_chain(importer="cyclic.a", imported="cyclic.b") is not None


def test_no_module_is_longer_than_a_newcomer_reads_in_one_sitting() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_every_check_of_the_test_script_stops_it_on_failure() -> None:
    """``set -e`` ignores a failing command inside an ``a && b`` list: a check written that
    way would let CI pass with a lint failure (it did, until this test)."""
    import re
    from pathlib import Path

    script = (Path(__file__).parents[2] / "scripts" / "test.sh").read_text("utf-8")
    assert "set -euo pipefail" in script
    code = [line.split("#", 1)[0] for line in script.splitlines()]
    chained = [
        line for line in code if re.search(r"(ruff|mypy|lint-imports|mkdocs|pytest).*&&", line)
    ]
    assert chained == []
