"""Known-compromised releases of the frameworks the callbacks run inside, refused.

``lightning`` and ``pytorch-lightning`` 2.6.2 and 2.6.3 were published with malicious code
(GHSA-w37p-236h-pfx3). The package's extras exclude them; a training environment built
another way could still hold one, and an audit run inside it proves nothing, so the
callbacks refuse to be built there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import metadata

__all__ = ["COMPROMISED", "check_releases", "compromised_releases"]

COMPROMISED: Mapping[str, Mapping[str, str]] = {
    "lightning": {"2.6.2": "GHSA-w37p-236h-pfx3", "2.6.3": "GHSA-w37p-236h-pfx3"},
    "pytorch-lightning": {"2.6.2": "GHSA-w37p-236h-pfx3", "2.6.3": "GHSA-w37p-236h-pfx3"},
}
"""Distribution -> {version: advisory}."""


def _installed(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def compromised_releases(
    version_of: Callable[[str], str | None] = _installed,
) -> list[str]:
    """``"lightning 2.6.2 (GHSA-...)"`` for each installed known-compromised release."""
    found = []
    for distribution, bad in COMPROMISED.items():
        version = version_of(distribution)
        if version is not None and version in bad:
            found.append(f"{distribution} {version} ({bad[version]})")
    return found


def check_releases(owner: str, version_of: Callable[[str], str | None] = _installed) -> None:
    """Raise ``RuntimeError`` naming ``owner`` when a known-compromised release is installed."""
    found = compromised_releases(version_of)
    if found:
        raise RuntimeError(
            f"{owner} refuses to run with a known-compromised release installed: "
            f"{', '.join(found)}. It was published with malicious code; treat this "
            "environment as compromised. HINT: pip install 'lightning!=2.6.2,!=2.6.3' "
            "'pytorch-lightning!=2.6.2,!=2.6.3' (privacy-gate's extras exclude them) in a "
            "fresh environment, and rotate any secret the old one could read."
        )
