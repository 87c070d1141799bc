"""``python -m services.executor --node N --nats URL``: what a lab node (or a host) starts."""

from __future__ import annotations

import argparse
import sys

from services.executor.cli import add_executor_arguments, run_executor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.executor", description="Run the l2net executor of one node."
    )
    add_executor_arguments(parser)
    return run_executor(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
