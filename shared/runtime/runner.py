"""Running one ``l2net`` command: the ``--nats`` option, tracing around it, one-line errors.

Every handler that talks to the bus runs its coroutine through :func:`run`, a one-shot
command (``l2net get``) and a long-lived service (``l2net planner``) alike. :func:`run` sets
up tracing first, so a configuration error met before the command starts (a bad ``OTEL_*``
variable) is one line naming the variable, never a traceback, whatever the command; a
failure the command reports (:class:`CommandError`, or :class:`~shared.runtime.bus.BusError` when
NATS cannot be reached) is one line too.

``l2net`` imports this module while it builds its parser, before it knows which command
runs: it imports argparse-level things only, and tracing (OpenTelemetry) and the bus
(nats-py) when a command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Literal

EXIT_OK = 0
EXIT_FAILED = 1
"""Refused or failed; the reason is printed."""
EXIT_USAGE = 2
"""Bad arguments or configuration (argparse's code for bad usage)."""

Main = Callable[[], Coroutine[Any, Any, "int | None"]]
"""A command's coroutine: its exit code (``None``: 0, a service stopped as asked)."""


class CommandError(Exception):
    """A failure to report to the user in one line, with exit code 1."""


def add_nats_option(p: argparse.ArgumentParser) -> None:
    """``--nats URL``, the same on every command that talks to the bus (see
    shared.runtime.config)."""
    p.add_argument(
        "--nats",
        metavar="URL",
        help="NATS server URL(s), comma-separated (default: $NATS_URL, else the embedded one)",
    )


def run(
    main: Main,
    *,
    command: str,
    service: str = "cli",
    node: str | None = None,
    errors: Literal["stderr", "stdout"] = "stderr",
    config_error: int = EXIT_USAGE,
) -> int:
    """Run ``main`` with tracing set up as ``service`` (and ``node``) around it; its exit code.

    A bad tracing configuration prints ``<command>: <what is wrong>`` and returns
    ``config_error`` (2, unless 2 means something else for the command, as drift does for
    ``l2net audit``) before ``main`` starts; a :class:`CommandError` or
    :class:`~shared.runtime.bus.BusError` out of ``main`` prints ``<command>: <why>`` and returns 1.
    ``errors`` is the stream those lines go to.
    """
    from shared.runtime import bus, tracing  # at run time: the parser is built without them

    def report(message: str) -> None:
        print(f"{command}: {message}", file=sys.stdout if errors == "stdout" else sys.stderr)

    try:
        tracing.setup(service, node=node)
    except tracing.TracingConfigError as exc:
        report(str(exc))
        return config_error
    try:
        code = asyncio.run(main())
    except (CommandError, bus.BusError) as exc:
        report(str(exc))
        return EXIT_FAILED
    finally:
        tracing.shutdown()
    return EXIT_OK if code is None else code
