"""Test-only: kill the server process (SIGKILL) at the gated store's alias commit.

Put this folder on a server's PYTHONPATH with ``PRIVACY_GATE_TEST_CRASH=before`` (killed
just before the one transaction that writes the alias and the verdict) or ``after`` (just
after it committed). tests/security/test_races.py restarts the server and checks that the
alias and the verdict tags agree. Never installed; nothing in the package refers to it.
"""

import os
import signal

_WHEN = os.environ.get("PRIVACY_GATE_TEST_CRASH")

if _WHEN in ("before", "after"):
    from privacy_gate.mlflow import _compat

    _commit = _compat.commit_verdict

    def _crashing_commit(*args, **kwargs):  # type: ignore[no-untyped-def]
        promotes = kwargs.get("set_alias") is not None
        if promotes and _WHEN == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        committed = _commit(*args, **kwargs)
        if promotes and committed and _WHEN == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return committed

    _compat.commit_verdict = _crashing_commit
