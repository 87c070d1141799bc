"""``l2net``: the command-line client and the entry point of every l2net service.

Each subcommand lives in its own module and registers itself here with ``register(sub)``;
a command's handler returns the process exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable

from services.cli import commands

Registrar = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _registrars() -> list[Registrar]:
    regs: list[Registrar] = [commands.register]
    # Services and tools register their own subcommands when their package is present.
    for module_name in (
        "services.planner.cli",
        "services.executor.cli",
        "services.auditor.cli",
        "services.lab.cli",
    ):
        try:
            module = __import__(module_name, fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        regs.append(module.register)
    return regs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="l2net",
        description="Harvester-style host L2 networking for Linux fleets, driven by NATS.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in _registrars():
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # inside: `l2net --help | head` prints too
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return closed_stdout()


def closed_stdout() -> int:
    """The reader of our output went away (``l2net audit | head``): not an error to report.

    Like a Unix tool killed by SIGPIPE, stop quietly with 141 (128 + SIGPIPE); what is still
    buffered goes nowhere, so Python's own flush at exit does not print a traceback.
    """
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
