"""``l2net planner``: run the planner service until stopped."""

from __future__ import annotations

import argparse
import asyncio
import logging

from services.cli.client import add_nats_option
from services.planner.service import Planner
from shared import bus, config, lifecycle, tracing

log = logging.getLogger("l2net.planner")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("planner", help="run the planner service (validates, compiles, publishes)")
    add_nats_option(p)
    p.set_defaults(handler=_run)


async def serve(nats_url: str | None) -> None:
    servers = config.nats_servers(nats_url)
    log.info("connecting to NATS at %s", ", ".join(bus.redact(s) for s in servers))
    nc = await bus.connect(servers, name="l2net-planner", attempts=-1)
    planner = Planner(nc)
    try:
        await planner.start()
        await lifecycle.wait_for_stop()
    finally:
        await planner.stop()
        await nc.drain()


def _run(args: argparse.Namespace) -> int:
    lifecycle.setup_logging("planner")
    try:
        tracing.setup("planner")
    except tracing.TracingConfigError as exc:
        print(f"l2net planner: {exc}")
        return 2
    try:
        asyncio.run(serve(args.nats))
    except bus.BusError as exc:
        print(f"l2net planner: {exc}")
        return 1
    finally:
        tracing.shutdown()
    return 0
