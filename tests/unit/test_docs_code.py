"""Every code block of the README and of ``docs/`` runs or is checked; nothing is trained.

- ``python``: the block parses, and every name it imports from privacy-gate
  (``from privacy_gate... import name``, ``lightning_callbacks``, ``pg.name`` after
  ``import privacy_gate as pg``) is defined by that module, read from its source without
  importing it. A block preceded by the line ``<!-- run -->`` is executed.
- ``yaml``: the block loads with ``yaml.safe_load``, then by its shape: a policy
  (top-level ``gate:`` or ``risk:``) passes `privacy_gate.config.parse_config`; an
  audit.yaml (``model:`` and ``data:``), or a fragment of one (audit.yaml keys only,
  completed with placeholder ``model:`` and ``data:``), passes
  `privacy_gate.training.job.parse_job`, which imports neither (a repository import
  path such as ``examples.ehr.model:make_model`` is checked to name a definition); a
  GitHub Actions step or job that uses privacy-gate passes only inputs and secrets that
  the action or the reusable workflow declares.
- ``bash``: every ``privacy-gate`` command line (also ``python -m privacy_gate``, after
  ``VAR=value`` assignments or a launcher's ``--``) is accepted by the parser the CLI
  builds (`privacy_gate.cli._parser`); nothing runs. ``[...]`` marks optional arguments,
  which are checked as if given (``[--github | --no-github]``: the first); ``COMMAND ...``
  stands for any command; a repository script a line runs must exist.
- ``text``: a program's output copied from a run; its ``$ privacy-gate`` lines are
  checked as in ``bash``, the output itself is not.

Any other language, or none, fails unless `UNCHECKED` lists the block with the reason.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import re
import shlex
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from privacy_gate.cli import _parser
from privacy_gate.config import parse_config

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted({REPO / "README.md", *(REPO / "docs").rglob("*.md")})
RUN_MARKER = "<!-- run -->"
LANGUAGES = ("python", "yaml", "bash", "text")

UNCHECKED: dict[tuple[str, str], str] = {}
"""(document, first line of the block) -> why the block is neither run nor checked."""

PLACEHOLDER_PACKAGES = ("mypackage",)
"""Import paths in audit.yaml examples that stand for the reader's own package."""

_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<language>[^\n`]*)\n"
    r"(?P<body>.*?)^(?P=indent)(?P=fence)[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


@dataclass(frozen=True)
class Block:
    document: str
    line: int
    language: str
    code: str
    run: bool

    @property
    def first_line(self) -> str:
        return next((line for line in self.code.splitlines() if line.strip()), "")

    def __str__(self) -> str:
        return f"{self.document}:{self.line}"


def code_blocks(path: Path) -> Iterator[Block]:
    """The fenced code blocks of a Markdown file, with their language and run marker.

    >>> text = "a\\n<!-- run -->\\n```python\\nx = 1\\n```\\n  ```\\n  y\\n  ```\\n"
    >>> [(b.line, b.language, b.code, b.run) for b in code_blocks_of(text, "d.md")]
    [(3, 'python', 'x = 1\\n', True), (6, '', 'y\\n', False)]
    """
    yield from code_blocks_of(path.read_text("utf-8"), str(path.relative_to(REPO)))


def code_blocks_of(text: str, name: str) -> Iterator[Block]:
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip().rsplit("\n", 1)[-1].strip()
        indent = match.group("indent")
        body = "".join(
            line[len(indent) :] if line.startswith(indent) else line
            for line in match.group("body").splitlines(keepends=True)
        )
        yield Block(
            document=name,
            line=text.count("\n", 0, match.start()) + 1,
            language=match.group("language").strip().split(" ", 1)[0],
            code=body,
            run=before == RUN_MARKER,
        )


BLOCKS = [block for document in DOCUMENTS for block in code_blocks(document)]


def blocks_in(*languages: str) -> list[Block]:
    return [block for block in BLOCKS if block.language in languages]


# --- Python: names defined by a module's source, without importing it ----------------


def module_source(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _bound_names(statements: list[ast.stmt]) -> Iterator[str]:
    for node in statements:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node.name
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                yield (alias.asname or alias.name).split(".")[0]
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        yield name.id
        elif isinstance(node, (ast.If, ast.Try)):
            yield from _bound_names(node.body)
            yield from _bound_names(getattr(node, "orelse", []))
            for handler in getattr(node, "handlers", []):
                yield from _bound_names(handler.body)
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            yield from ast.literal_eval(node.value)


@cache
def defined_names(module: str) -> frozenset[str]:
    """What ``from module import name`` can import: top-level definitions, imports and
    ``__all__`` (which also names what a module-level ``__getattr__`` provides)."""
    path = module_source(module)
    assert path is not None, f"no module {module} in the repository"
    tree = ast.parse(path.read_text("utf-8"))
    names = set(_bound_names(tree.body))
    if path.name == "__init__.py":  # submodules are importable names of a package
        names |= {p.stem for p in path.parent.iterdir() if p.suffix == ".py" or p.is_dir()}
    return frozenset(names)


def _ours(module: str) -> bool:
    return module.split(".")[0] in ("privacy_gate", "lightning_callbacks", "examples")


def unresolved_imports(code: str) -> list[str]:
    """privacy-gate names a block imports or uses (``alias.name``) that do not exist.

    >>> unresolved_imports("import privacy_gate as pg\\npg.audit(); pg.nothing()")
    ['privacy_gate.nothing']
    """
    tree = ast.parse(code)
    missing = []
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and _ours(node.module):
            if module_source(node.module) is None:
                missing.append(node.module)
                continue
            missing += [
                f"{node.module}.{alias.name}"
                for alias in node.names
                if alias.name not in defined_names(node.module)
            ]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _ours(alias.name):
                    if module_source(alias.name) is None:
                        missing.append(alias.name)
                    else:
                        aliases[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr not in defined_names(aliases[node.value.id])
        ):
            missing.append(f"{aliases[node.value.id]}.{node.attr}")
    return missing


@pytest.mark.parametrize("block", blocks_in("python"), ids=str)
def test_python_blocks_parse_and_import_what_exists(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        ast.parse(block.code)
    except SyntaxError as exc:
        pytest.fail(f"{block}: the Python block does not parse: {exc}")
    assert not unresolved_imports(block.code), (
        f"{block}: imports or uses names that privacy-gate does not define: "
        f"{unresolved_imports(block.code)}"
    )
    if block.run:
        monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
        exec(compile(block.code, str(block), "exec"), {"__name__": "__docs__"})


def test_some_python_blocks_run() -> None:
    assert any(block.run for block in blocks_in("python"))


# --- YAML: policies, audit.yaml and the GitHub Action ---------------------------------


@cache
def audit_yaml_keys() -> tuple[str, ...]:
    from privacy_gate.training.job import audit_yaml_keys as keys

    return keys()


def _check_import_path(value: Any, key: str, block: Block) -> None:
    """A repository import path (``examples.ehr.model:make_model``) names a definition."""
    assert isinstance(value, str) and ":" in value, f"{block}: {key} is not 'module:callable'"
    module, _, attribute = value.partition(":")
    if module.split(".")[0] in PLACEHOLDER_PACKAGES:
        return
    assert module_source(module) is not None, f"{block}: {key}: no module {module}"
    assert attribute.split(".")[0] in defined_names(module), f"{block}: {key}: {value}"


def _check_audit_yaml(data: dict[str, Any], block: Block) -> None:
    from privacy_gate.training.job import parse_job

    data = dict(data)
    device = data.get("device")
    if isinstance(device, str) and re.fullmatch(r"cuda(:\d+)?", device):
        data["device"] = "cpu"  # a valid name; this machine may have no GPU
    for key in ("model", "data"):
        _check_import_path(data[key], key, block)
    parse_job(data, base=REPO)


def _github_inputs(path: str) -> tuple[set[str], set[str]]:
    """The inputs and secrets the action or reusable workflow at ``path`` declares."""
    spec = yaml.safe_load((REPO / path).read_text("utf-8"))
    if "inputs" in spec and "runs" in spec:  # a composite action
        return set(spec["inputs"]), set()
    trigger = spec.get("on", spec.get(True))  # YAML 1.1 reads a bare `on` as true
    call = trigger["workflow_call"]
    return set(call.get("inputs") or {}), set(call.get("secrets") or {})


def _check_github_uses(step: dict[str, Any], block: Block) -> None:
    match = re.fullmatch(r"[\w.-]+/privacy-gate/(\.github/[\w./-]+)@[\w.-]+", step["uses"])
    assert match, f"{block}: {step['uses']!r} is not privacy-gate's action or workflow"
    path = match.group(1)
    if not path.endswith((".yml", ".yaml")):
        path += "/action.yml"
    inputs, secrets = _github_inputs(path)
    assert set(step.get("with") or {}) <= inputs, f"{block}: unknown inputs of {path}"
    assert set(step.get("secrets") or {}) <= secrets, f"{block}: unknown secrets of {path}"


def check_yaml(block: Block) -> str:
    """Check one YAML block by its shape; returns the shape it was checked as."""
    data = yaml.safe_load(block.code)
    if isinstance(data, list) and all(isinstance(s, dict) and "uses" in s for s in data):
        for step in data:
            _check_github_uses(step, block)
        return "github steps"
    assert isinstance(data, dict), f"{block}: a YAML block of unknown shape"
    if "jobs" in data:
        for job in data["jobs"].values():
            _check_github_uses(job, block)
        return "github jobs"
    if "model" in data and "data" in data:
        _check_audit_yaml(data, block)
        return "audit.yaml"
    if set(data) <= set(audit_yaml_keys()):
        _check_audit_yaml({"model": "mypackage.m:f", "data": "mypackage.d:f", **data}, block)
        return "audit.yaml fragment"
    if "gate" in data or "risk" in data:
        parse_config(data, source=str(block))
        return "policy"
    raise AssertionError(f"{block}: a YAML block of unknown shape: keys {sorted(data)}")


@pytest.mark.parametrize("block", blocks_in("yaml"), ids=str)
def test_yaml_blocks_are_valid_configs(block: Block) -> None:
    check_yaml(block)


def test_the_yaml_checks_cover_every_shape() -> None:
    shapes = {check_yaml(block) for block in blocks_in("yaml")}
    assert {"policy", "audit.yaml", "audit.yaml fragment", "github steps"} <= shapes


# --- Shell: privacy-gate command lines against the CLI's parser ----------------------


def _logical_lines(code: str) -> Iterator[str]:
    """Lines with backslash continuations joined."""
    yield from re.sub(r"\\\n", " ", code).splitlines()


def _optional_groups(text: str) -> str:
    """``[--a X]`` -> ``--a X``; ``[--b | --c]`` -> ``--b`` (synopsis brackets)."""
    return re.sub(r"\[([^\[\]]*)\]", lambda m: m.group(1).split("|")[0].strip(), text)


def privacy_gate_commands(code: str) -> Iterator[tuple[str, list[str]]]:
    """(the command as written, its arguments) for every privacy-gate invocation.

    >>> list(privacy_gate_commands("X=1 privacy-gate check r.json [--out D]  # it's"))
    [('X=1 privacy-gate check r.json [--out D]', ['check', 'r.json', '--out', 'D'])]
    >>> list(privacy_gate_commands("git clone x privacy-gate && cd privacy-gate"))
    []
    """
    for line in _logical_lines(code):
        for command in re.split(r"\s(?:&&|\|\||;|&)\s|\s&$", line):
            words = shlex.split(command, comments=True)
            if "--" in words:  # a launcher: ray job submit ... -- privacy-gate ...
                words = words[words.index("--") + 1 :]
            while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=\S*", words[0]):
                words = words[1:]
            if words[:1] == ["$"]:
                words = words[1:]
            module = len(words) > 2 and Path(words[0]).name.startswith("python")
            if not (words and Path(words[0]).name == "privacy-gate") and not (
                module and words[1:3] == ["-m", "privacy_gate"]
            ):
                continue
            written = command.split(" #", 1)[0].strip()
            rest = shlex.split(_optional_groups(written), comments=True)
            index = next(
                i
                for i, word in enumerate(rest)
                if Path(word).name == "privacy-gate" or word == "privacy_gate"
            )
            yield written, rest[index + 1 :]


def check_command(arguments: list[str]) -> None:
    """Parse a privacy-gate command line as the CLI does; AssertionError if refused.

    A placeholder (``NAME``, ``<n>``) where the parser wants a number stands for one.
    """
    if arguments == ["..."]:
        return  # "the same arguments"
    if arguments[-2:] == ["COMMAND", "..."]:
        arguments = [*arguments[:-2], "policy"]  # global options before any command
    while True:
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                _parser().parse_args(arguments)
                return
            except SystemExit as exc:
                if exc.code in (0, None):  # --version and --help exit 0
                    return
        error = stderr.getvalue().strip()
        number = re.search(r"invalid (?:int|float) value: '([A-Z][A-Z0-9_]*|<[^>]+>)'", error)
        if number is None or number.group(1) not in arguments:
            raise AssertionError(error)
        arguments = [("1" if a == number.group(1) else a) for a in arguments]


_SHELL_BLOCKS = blocks_in("bash", "text")


@pytest.mark.parametrize("block", _SHELL_BLOCKS, ids=str)
def test_privacy_gate_command_lines_parse(block: Block) -> None:
    code = block.code
    if block.language == "text":  # program output: only its "$ " lines are commands
        code = "\n".join(line for line in code.splitlines() if line.startswith("$ "))
    for written, arguments in privacy_gate_commands(code):
        try:
            check_command(arguments)
        except AssertionError as exc:
            pytest.fail(f"{block}: `{written}` is refused by the CLI: {exc}")


@pytest.mark.parametrize("block", blocks_in("bash"), ids=str)
def test_repository_scripts_that_blocks_run_exist(block: Block) -> None:
    for line in _logical_lines(block.code):
        for word in shlex.split(line, comments=True):
            if re.fullmatch(r"(scripts|benchmarks|examples)/[\w./-]+\.(py|sh)", word):
                assert (REPO / word).is_file(), f"{block}: no {word} in the repository"
        for module in re.findall(r"-m\s+((?:examples|benchmarks)\.[\w.]+)", line):
            assert module_source(module), f"{block}: no module {module} in the repository"


def test_every_privacy_gate_command_is_checked_somewhere() -> None:
    """Each sub-command appears in at least one checked command line."""
    seen = set()
    for block in _SHELL_BLOCKS:
        for _, arguments in privacy_gate_commands(block.code.replace("$ ", "")):
            words = [a for a in arguments if not a.startswith("-")]
            grouped = words[:1] in (["keys"], ["webhook"])  # groups of sub-commands
            seen.add(" ".join(words[:2]) if grouped else words[0] if words else "")
    commands = _subcommands(_parser())
    assert set(commands) <= seen, f"never shown: {sorted(set(commands) - seen)}"


# --- Every block is handled ------------------------------------------------------------


@pytest.mark.parametrize("block", BLOCKS, ids=str)
def test_every_block_has_a_handled_language(block: Block) -> None:
    if (block.document, block.first_line) in UNCHECKED:
        return
    assert block.language in LANGUAGES, (
        f"{block}: a {block.language or 'untagged'} block is neither run nor checked: tag it "
        f"with one of {LANGUAGES}, or list it in UNCHECKED with the reason"
    )


def test_unchecked_blocks_exist() -> None:
    present = {(block.document, block.first_line) for block in BLOCKS}
    assert set(UNCHECKED) <= present


def test_the_fence_reader_finds_every_block() -> None:
    for document in DOCUMENTS:
        fences = len(re.findall(r"^[ \t]*(```|~~~)", document.read_text("utf-8"), re.MULTILINE))
        found = sum(1 for block in BLOCKS if block.document == str(document.relative_to(REPO)))
        assert fences == 2 * found, f"{document}: unbalanced or unread fences"


# --- The references stay complete -------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = _subcommands(sub, f"{prefix}{name} ")
                found.update(nested or {f"{prefix}{name}": sub})
    return found


def test_the_cli_reference_names_every_command_and_option() -> None:
    text = (REPO / "docs/reference/cli.md").read_text("utf-8")
    missing = []
    parser = _parser()
    for command, sub in {"": parser, **_subcommands(parser)}.items():
        if command and f"privacy-gate {command}" not in text:
            missing.append(f"privacy-gate {command}")
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            missing += [f"{command} {o}" for o in action.option_strings if o not in text]
    assert not missing, f"docs/reference/cli.md does not name: {missing}"


def test_the_audit_yaml_reference_names_every_key() -> None:
    from privacy_gate.training.job import _MLFLOW_KEYS
    from privacy_gate.training.ray_backend.options import _YAML_KEYS
    from privacy_gate.training.recipe import DPSettings, Recipe

    text = (REPO / "docs/reference/audit-config.md").read_text("utf-8")
    keys = [*audit_yaml_keys(), *_MLFLOW_KEYS, *_YAML_KEYS]
    keys += [f.name for f in (*fields(Recipe), *fields(DPSettings))]
    assert not [k for k in keys if f"`{k}`" not in text and f"{k}:" not in text]


def test_the_policy_reference_names_every_key() -> None:
    from privacy_gate.config import AuditConfig, GateConfig, RiskConfig
    from privacy_gate.rules import policy_keys

    text = (REPO / "docs/reference/policy.md").read_text("utf-8")
    sections = [f.name for c in (AuditConfig, RiskConfig, GateConfig) for f in fields(c)]
    keys = [key for key in sections if key != "limits"] + list(policy_keys())
    assert not [key for key in keys if f"{key}:" not in text and f'"{key}":' not in text]


def test_mkdocs_nav_lists_every_page() -> None:
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text("utf-8"))

    def pages(nav: Any) -> Iterator[str]:
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            yield from pages(value) if isinstance(value, list) else [value]

    listed = set(pages(config["nav"]))
    docs = {p.relative_to(REPO / "docs").as_posix() for p in (REPO / "docs").rglob("*.md")}
    assert docs <= listed, f"pages missing from mkdocs.yml's nav: {sorted(docs - listed)}"
    assert config["docs_dir"] == "docs"


# --- The README is a front door -----------------------------------------------------------


def test_the_readme_is_short_and_links_into_the_docs() -> None:
    text = (REPO / "README.md").read_text("utf-8")
    assert len(text.splitlines()) <= 220
    links = set(re.findall(r"\]\((docs/[^)#\s]+)", text))
    for section in ("tutorials", "how-to", "reference", "explanation"):
        assert any(link.startswith(f"docs/{section}/") for link in links), section
    assert "docs/index.md" in links


def test_blocks_inside_list_items_are_dedented() -> None:
    block = next(
        code_blocks_of(
            textwrap.dedent("""\
        - item

          ```yaml
          a: 1
          ```
        """),
            "d.md",
        )
    )
    assert yaml.safe_load(block.code) == {"a": 1}
