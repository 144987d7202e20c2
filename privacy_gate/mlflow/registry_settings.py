"""The gated registry's settings, read once from the server's environment, fail-closed.

A setting that cannot be read is a start-up error, never a gate that protects less: an
empty or malformed ``PRIVACY_GATE_PROTECTED_ALIASES`` stops the server instead of
protecting no alias. `GateSettings.banner` is the line the store logs at start-up (at
WARNING, which a default ``mlflow server`` shows), so an operator sees what is protected
and by which key.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from privacy_gate.errors import InputError
from privacy_gate.signing import (
    PUBLIC_KEY_ENVIRONMENT_VARIABLE,
    load_public_key,
    public_key_fingerprint,
)

__all__ = [
    "ALLOW_PICKLE_ENVIRONMENT_VARIABLE",
    "DEFAULT_PROTECTED_ALIASES",
    "POLICY_ENVIRONMENT_VARIABLE",
    "PROTECTED_ALIASES_ENVIRONMENT_VARIABLE",
    "PROTECTED_STAGES",
    "GateSettings",
    "canonical_alias",
    "protected_aliases",
]

PROTECTED_ALIASES_ENVIRONMENT_VARIABLE = "PRIVACY_GATE_PROTECTED_ALIASES"
POLICY_ENVIRONMENT_VARIABLE = "PRIVACY_GATE_PROMOTION_POLICY_SHA256"
ALLOW_PICKLE_ENVIRONMENT_VARIABLE = "PRIVACY_GATE_ALLOW_PICKLE_MODELS"
DEFAULT_PROTECTED_ALIASES = ("champion", "production")
PROTECTED_STAGES = ("staging", "production")
"""The stages (lower case) only a verified version may enter, as a protected alias."""
# MLflow's own alias rule (letters, digits, '_' and '-'); 'latest' and 'vN' are reserved.
_ALIAS = re.compile(r"[\w\-]{1,255}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_TRUE, _FALSE = ("1", "true", "yes"), ("", "0", "false", "no")


def protected_aliases(environ: Mapping[str, str] | None = None) -> frozenset[str]:
    """The protected aliases (lower case) from ``PRIVACY_GATE_PROTECTED_ALIASES``; the
    default when unset. Raises `InputError` for a list that names no alias or a name that
    is not an alias: a gate that protects nothing must not start.

    >>> sorted(protected_aliases({"PRIVACY_GATE_PROTECTED_ALIASES": "Champion, prod"}))
    ['champion', 'prod']
    """
    env = os.environ if environ is None else environ
    raw = env.get(PROTECTED_ALIASES_ENVIRONMENT_VARIABLE)
    if raw is None:
        return frozenset(DEFAULT_PROTECTED_ALIASES)
    names = [n.strip() for n in raw.split(",")]
    bad = [n for n in names if n and not _ALIAS.fullmatch(n)]
    if bad or not any(names):
        shown = repr(raw) if len(raw) <= 80 else repr(raw[:77] + "...")
        raise InputError(
            f"{PROTECTED_ALIASES_ENVIRONMENT_VARIABLE} must be a comma-separated list of alias "
            f"names (letters, digits, '_' and '-'). Got {shown}"
            + (f", whose entries {bad} are not alias names" if bad else ", which names none")
            + ". HINT: unset it for the default (champion,production), or list the aliases "
            "to protect, e.g. 'champion,production'."
        )
    return frozenset(n.lower() for n in names if n)


def canonical_alias(name: str) -> str:
    """A name as a case- and accent-insensitive database collation may compare it (MySQL's
    default matches 'chámpion' and 'ＣＨＡＭＰＩＯＮ' with 'champion'): compatibility-
    decomposed, accents dropped, case-folded; what `protected_aliases` is matched with."""
    decomposed = unicodedata.normalize("NFKD", name)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return plain.casefold().strip()


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise InputError(f"{name} must be 'true' or 'false'. Got {raw!r}. HINT: unset it for false.")


@dataclass(frozen=True)
class GateSettings:
    """What the gated store enforces, read from the environment at start-up.

    The public key is read again on each request (`privacy_gate.signing.
    public_key_from_environment`), so a rotated key file takes effect without a restart;
    its fingerprint here is what the server started with, for the log.
    """

    protected_aliases: frozenset[str]
    policy_sha256: str | None
    allow_pickle: bool
    public_key_fingerprint: str | None
    public_key_problem: str | None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> GateSettings:
        """Raises `InputError` (a start-up error) for a setting that cannot be read."""
        env = os.environ if environ is None else environ
        policy = env.get(POLICY_ENVIRONMENT_VARIABLE, "").strip().lower() or None
        if policy is not None and not _SHA256_HEX.fullmatch(policy):
            raise InputError(
                f"{POLICY_ENVIRONMENT_VARIABLE} must be a policy's SHA-256 (64 hexadecimal "
                f"digits, as 'privacy-gate check' prints it). Got {policy[:80]!r}."
            )
        fingerprint, problem = None, None
        path = env.get(PUBLIC_KEY_ENVIRONMENT_VARIABLE)
        if not path:
            problem = f"{PUBLIC_KEY_ENVIRONMENT_VARIABLE} is not set"
        else:
            try:
                fingerprint = public_key_fingerprint(load_public_key(path))
            except InputError as exc:
                problem = str(exc)
        return cls(
            protected_aliases=protected_aliases(env),
            policy_sha256=policy,
            allow_pickle=_flag(env, ALLOW_PICKLE_ENVIRONMENT_VARIABLE),
            public_key_fingerprint=fingerprint,
            public_key_problem=problem,
        )

    def banner(self, inner_uri: str) -> str:
        """One line for the server's log: what is protected, by which key and policy."""
        parts: dict[str, Any] = {
            "registry": inner_uri,
            "protected aliases": ", ".join(sorted(self.protected_aliases)),
            "protected stages": "Staging, Production",
            "audit public key sha256": self.public_key_fingerprint
            or f"NONE ({self.public_key_problem}): every protected promotion is refused",
            "required policy sha256": self.policy_sha256 or "any",
            "pickle-format models": "accepted" if self.allow_pickle else "refused",
        }
        return "privacy-gate registry store active: " + "; ".join(
            f"{k}: {v}" for k, v in parts.items()
        )
