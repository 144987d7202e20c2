"""``python -m privacy_gate``."""

import sys

from privacy_gate.cli import main

sys.exit(main())
