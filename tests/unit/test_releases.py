"""Known-compromised Lightning releases are refused (GHSA-w37p-236h-pfx3)."""

from __future__ import annotations

import pytest

from lightning_callbacks._releases import COMPROMISED, check_releases, compromised_releases


def test_the_installed_releases_are_not_known_compromised() -> None:
    assert compromised_releases() == []


@pytest.mark.parametrize("distribution", sorted(COMPROMISED))
@pytest.mark.parametrize("version", ["2.6.2", "2.6.3"])
def test_a_compromised_release_is_refused(distribution: str, version: str) -> None:
    installed = {distribution: version}
    found = compromised_releases(installed.get)
    assert found == [f"{distribution} {version} (GHSA-w37p-236h-pfx3)"]
    with pytest.raises(RuntimeError, match="PrivacyAuditCallback refuses") as caught:
        check_releases("PrivacyAuditCallback", installed.get)
    assert "!=2.6.2,!=2.6.3" in str(caught.value)


def test_neighbouring_releases_pass() -> None:
    installed = {"lightning": "2.6.1", "pytorch-lightning": "2.6.4"}
    assert compromised_releases(installed.get) == []
    check_releases("PrivacyAuditCallback", installed.get)


def test_the_extras_exclude_the_compromised_releases() -> None:
    from pathlib import Path

    import tomllib

    project = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    for name, requirements in extras.items():
        for requirement in requirements:
            if requirement.split(">")[0].split("=")[0].strip() in COMPROMISED:
                assert "!=2.6.2" in requirement and "!=2.6.3" in requirement, (name, requirement)


def test_the_ci_constraints_pin_no_compromised_release() -> None:
    """constraints/ci.txt (what setup installs) pins every distribution exactly, and none
    of them to a known-compromised release."""
    from pathlib import Path

    text = (Path(__file__).parents[2] / "constraints" / "ci.txt").read_text("utf-8")
    pins = dict(
        line.split("==", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert pins and all(version.strip() for version in pins.values())
    assert {"lightning", "pytorch-lightning"} <= set(pins)
    assert compromised_releases(lambda name: pins.get(name)) == []
    bad = {**pins, "lightning": "2.6.2"}
    assert compromised_releases(lambda name: bad.get(name)) == [
        "lightning 2.6.2 (GHSA-w37p-236h-pfx3)"
    ]
