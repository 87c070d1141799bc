"""A typed client of the auditor's ``l2.auditor.*`` requests (what ``l2net audit`` and
``l2net history`` send), for the CLI, the demo and any Python script::

    from services.auditor.client import audit_once, check

:class:`AuditError` says in one line that no usable answer came (no auditor running, a
timeout, NATS unreachable) or, from :func:`audit_once`, that the auditor refused.
"""

from __future__ import annotations

from typing import TypeVar

from nats.aio.client import Client

from shared.domain.model import DriftItem
from shared.runtime import bus, config
from shared.runtime.client import RequestError, request
from shared.wire import auditor_api as protocol
from shared.wire import subjects

T = TypeVar("T")


class AuditError(RequestError):
    """A failure to report in one line (exit code 1)."""


async def _ask(nc: Client, subject: str, body: bytes, reply_type: type[T], timeout: float) -> T:
    try:
        return await request(nc, subject, body, reply_type, timeout=timeout, service="auditor")
    except RequestError as exc:
        raise AuditError(str(exc)) from exc


async def check(
    nc: Client,
    node: str | None = None,
    *,
    live: bool = True,
    heal: bool = False,
    timeout: float = 30.0,
) -> protocol.CheckReply:
    """Ask the running auditor to check ``node`` (or all; live first; ``heal``: re-converge
    drifting nodes first) and answer."""
    body = bus.encode(protocol.CheckRequest(node=node, live=live, heal=heal))
    return await _ask(nc, subjects.AUDITOR_CHECK, body, protocol.CheckReply, timeout)


async def audit_once(nc: Client, node: str, *, timeout: float = 30.0) -> list[DriftItem]:
    """The open findings of ``node`` after a live check by the running auditor."""
    reply = await check(nc, node, live=True, timeout=timeout)
    if not reply.ok:
        raise AuditError("; ".join(str(error) for error in reply.errors))
    return [item for n in reply.nodes for item in n.items]


async def history(nc: Client, node: str, *, timeout: float = 30.0) -> protocol.HistoryReply:
    """Ask the running auditor for ``node``'s history."""
    body = bus.encode(protocol.HistoryRequest(node=node))
    return await _ask(nc, subjects.AUDITOR_HISTORY, body, protocol.HistoryReply, timeout)


async def desired(
    nc: Client, node: str, generation: int | None, *, timeout: float = 30.0
) -> protocol.DesiredReply:
    """Ask the running auditor for ``node``'s desired state at ``generation`` (None: newest)."""
    body = bus.encode(protocol.DesiredRequest(node=node, generation=generation))
    return await _ask(nc, subjects.AUDITOR_DESIRED, body, protocol.DesiredReply, timeout)


async def connect(nats_url: str | None, *, name: str) -> Client:
    """A connection to the servers ``nats_url`` names; :class:`AuditError` when none answers."""
    try:
        return await bus.connect(config.nats_servers(nats_url), name=name)
    except bus.BusError as exc:
        raise AuditError(str(exc)) from exc
