"""Running a long-lived service: logging set-up and waiting for SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal


def setup_logging(service: str) -> None:
    level = os.environ.get("L2NET_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format=f"%(asctime)s {service} %(levelname)s %(message)s",
    )


async def wait_for_stop() -> None:
    """Return when the process is asked to stop (SIGINT or SIGTERM)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
