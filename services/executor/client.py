"""A typed client of a node's executor requests (``l2.executor.<node>.<verb>``)."""

from __future__ import annotations

import msgspec
from nats.aio.client import Client

from shared.domain.model import NodeStatus
from shared.runtime import bus
from shared.runtime.client import RequestError
from shared.wire import subjects


async def reconcile(nc: Client, node: str, *, timeout: float) -> NodeStatus:
    """Ask ``node``'s executor to converge to its last intent; its status when done.

    :class:`~shared.runtime.client.RequestError` when no executor answers within ``timeout`` seconds
    or the answer is not a status.
    """
    subject = subjects.executor_control(node, "reconcile")
    try:
        reply = await nc.request(subject, b"", timeout=timeout)
    except Exception as exc:  # no responders, a timeout, a closed connection: all said alike
        raise RequestError(
            f"no answer from the executor of {node!r} within {timeout}s ({exc!r})"
        ) from exc
    try:
        return bus.decode(reply.data, NodeStatus)
    except msgspec.DecodeError as exc:
        raise RequestError(
            f"the executor of {node!r} answered on {subject} with {len(reply.data)} bytes "
            f"that are not a status ({exc})"
        ) from exc
