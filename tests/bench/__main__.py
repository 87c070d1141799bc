"""``make bench``: speed and memory of l2net as ratios against plain tools, measured in the
same run on the same machine. Results are printed and written to ``bench-results.json``.

Each part is a module with ``run() -> list[Result]``; a part that needs what this machine
lacks says so and is skipped with its reason printed (benchmarks are not tests).
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

from tests.bench.common import Result

PARTS = (
    "tests.bench.cli_bench",
    "tests.bench.planner_bench",
    "tests.bench.executor_bench",
    "tests.bench.auditor_bench",
)


def main() -> int:
    results: list[Result] = []
    for name in PARTS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        started = time.monotonic()
        print(f"== {name.rsplit('.', 1)[-1]}", flush=True)
        part = module.run()
        for r in part:
            print(f"  {r.line()}", flush=True)
        print(f"  ({time.monotonic() - started:.1f}s)", flush=True)
        results += part
    out = Path("bench-results.json")
    out.write_text(json.dumps([r.as_dict() for r in results], indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
