"""Asking an l2net service over NATS: connect, ask, decode, explain every failure in one line.

:func:`connected` and :func:`request` turn each way a request can fail (no server, no service
answering, no answer in time, a body over the server's limit, the service's error reply, an
answer that does not decode) into a :class:`RequestError` saying what happened and where.
The typed client of each service (``services/planner/client.py``,
``services/auditor/client.py``, ``services/executor/client.py``) is built on them; the
``l2net`` commands use those clients.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import msgspec
from nats.aio.client import Client
from nats.errors import MaxPayloadError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from shared.runtime import bus, config, tracing
from shared.runtime.runner import CommandError

T = TypeVar("T")


class RequestError(CommandError):
    """A request that got no usable answer (or could not be sent), said in one line."""


@asynccontextmanager
async def connected(nats_url: str | None, *, name: str = "l2net-cli") -> AsyncIterator[Client]:
    """A connection to the servers ``nats_url`` names (see
    :func:`shared.runtime.config.nats_servers`),
    drained on exit; :class:`RequestError` with a hint when none answers."""
    servers = config.nats_servers(nats_url)
    try:
        nc = await bus.connect(servers, name=name)
    except bus.BusError as exc:
        raise RequestError(
            f"{exc}\n  (start one with `l2net up`, or pass --nats / NATS_URL)"
        ) from exc
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
    Raises :class:`RequestError` naming the service when nobody answers or the answer is bad,
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
            raise RequestError(
                f"the request on {subject} is {len(body)} bytes with its headers over the "
                f"NATS server's limit of {nc.max_payload} bytes (max_payload)"
            ) from exc
        except NoRespondersError as exc:
            raise RequestError(
                f"no {service} answers on {subject}: is `l2net {service}` running?"
            ) from exc
        except NatsTimeout as exc:
            raise RequestError(
                f"the {service} did not answer on {subject} within {timeout:g}s"
            ) from exc
    failed = (msg.headers or {}).get(SERVICE_ERROR)
    if failed:
        code = (msg.headers or {}).get(SERVICE_ERROR_CODE, "?")
        raise RequestError(f"the {service} failed on {subject} (error {code}): {failed}")
    try:
        return bus.decode(msg.data, reply_type)
    except msgspec.DecodeError as exc:
        raise RequestError(
            f"the {service} answered on {subject} with {len(msg.data)} bytes that are not "
            f"its reply ({exc})"
        ) from exc


SERVICE_ERROR = "Nats-Service-Error"
SERVICE_ERROR_CODE = "Nats-Service-Error-Code"
"""Headers of a NATS micro service's error reply (its handler failed; the body is empty)."""


def check_size(nc: Client, size: int, *, what: str) -> None:
    """Refuse, in one line, a message over the connected server's max_payload."""
    if size > nc.max_payload:
        raise RequestError(
            f"{what} is {size} bytes, over the NATS server's limit of {nc.max_payload} bytes "
            "per message (max_payload): split it into several"
        )
