"""``python -m services.lab up|exec|status|down``: the lab commands without the full CLI."""

from __future__ import annotations

import sys

from services.lab.cli import main

if __name__ == "__main__":
    sys.exit(main())
