"""The security suite: attacks on a real gated ``mlflow server`` (127.0.0.1 only).

The helpers of tests/integration (the server, PostgreSQL, audited versions) are shared.
Every test ends with `final_state_allowed`: no version that was not audited holds a
protected alias, and no ``privacy_gate.status=pass`` tag sits on one.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from postgres_server import postgres_server

__all__ = ["postgres_server"]
