"""The CLI's side of the ``l2.api.*`` request/reply: connect, ask, decode, explain failures."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import msgspec
from nats.aio.client import Client
from nats.errors import MaxPayloadError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from shared import bus, config, tracing

T = TypeVar("T")


def add_nats_option(p: argparse.ArgumentParser) -> None:
    """``--nats URL``, the same on every command that talks to the bus (see shared.config)."""
    p.add_argument(
        "--nats",
        metavar="URL",
        help="NATS server URL(s), comma-separated (default: $NATS_URL, else the embedded one)",
    )


class CliError(Exception):
    """A failure to report to the user in one line, with exit code 1."""


@asynccontextmanager
async def connected(nats_url: str | None) -> AsyncIterator[Client]:
    servers = config.nats_servers(nats_url)
    try:
        nc = await bus.connect(servers, name="l2net-cli")
    except bus.BusError as exc:
        raise CliError(f"{exc}\n  (start one with `l2net up`, or pass --nats / NATS_URL)") from exc
    try:
        yield nc
    finally:
        await nc.drain()


async def request(
    nc: Client,
    subject: str,
    body: bytes,
    reply_type: type[T],
    *,
    timeout: float = 30.0,
    service: str = "planner",
) -> T:
    """Ask an l2net service (``planner``, ``auditor``) and decode its answer.

    When the answer takes more than a second, progress is shown on a terminal's stderr.
    Raises :class:`CliError` naming the service when nobody answers or the answer is bad,
    and before sending a body over the server's limit.
    """
    check_size(nc, len(body), what=f"the request on {subject}")
    with tracing.publish_span(subject) as headers:
        task = asyncio.ensure_future(nc.request(subject, body, timeout=timeout, headers=headers))
        waited = 0.0
        while not task.done():
            await asyncio.wait({task}, timeout=1.0)
            waited += 1.0
            if not task.done() and sys.stderr.isatty():
                print(
                    f"\rwaiting for the {service} on {subject}… {waited:.0f}s",
                    end="",
                    file=sys.stderr,
                )
        if waited > 1 and sys.stderr.isatty():
            print(file=sys.stderr)
        try:
            msg = task.result()
        except MaxPayloadError as exc:  # the body fits, but not with its headers
            raise CliError(
                f"the request on {subject} is {len(body)} bytes with its headers over the "
                f"NATS server's limit of {nc.max_payload} bytes (max_payload)"
            ) from exc
        except NoRespondersError as exc:
            raise CliError(
                f"no {service} answers on {subject}: is `l2net {service}` running?"
            ) from exc
        except NatsTimeout as exc:
            raise CliError(
                f"the {service} did not answer on {subject} within {timeout:g}s"
            ) from exc
    failed = (msg.headers or {}).get(SERVICE_ERROR)
    if failed:
        code = (msg.headers or {}).get(SERVICE_ERROR_CODE, "?")
        raise CliError(f"the {service} failed on {subject} (error {code}): {failed}")
    try:
        return bus.decode(msg.data, reply_type)
    except msgspec.DecodeError as exc:
        raise CliError(
            f"the {service} answered on {subject} with {len(msg.data)} bytes that are not "
            f"its reply ({exc})"
        ) from exc


SERVICE_ERROR = "Nats-Service-Error"
SERVICE_ERROR_CODE = "Nats-Service-Error-Code"
"""Headers of a NATS micro service's error reply (its handler failed; the body is empty)."""


def check_size(nc: Client, size: int, *, what: str) -> None:
    """Refuse, in one line, a message over the connected server's max_payload."""
    if size > nc.max_payload:
        raise CliError(
            f"{what} is {size} bytes, over the NATS server's limit of {nc.max_payload} bytes "
            "per message (max_payload): split it into several"
        )
