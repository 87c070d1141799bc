"""A typed client of the planner's ``l2.api.*`` requests (what ``l2net apply``, ``get``, ...
send), for the CLI and any Python script.

Each function sends one request on a connection (:func:`shared.runtime.client.connected`)
and returns
the planner's reply as it came: a refusal is a reply with ``ok`` false and its problems, not
an exception. :class:`~shared.runtime.client.RequestError` says, in one line, that no usable answer
came (no planner running, a timeout, a body over the server's limit).
"""

from __future__ import annotations

from nats.aio.client import Client

from shared.runtime import bus
from shared.runtime.client import check_size, request
from shared.wire import api, subjects


async def apply(nc: Client, manifest: bytes, *, source: str = "the manifest") -> api.ApplyReply:
    """Submit a manifest (YAML or JSON, one document or several): all accepted, or none.
    ``source`` names it when it is over the server's message limit."""
    check_size(nc, len(manifest), what=source)
    return await request(nc, subjects.API_APPLY, manifest, api.ApplyReply)


async def plan(nc: Client, manifest: bytes, *, source: str = "the manifest") -> api.PlanReply:
    """What :func:`apply` of ``manifest`` would do, per node, step by step: nothing is
    stored. Refused with apply's very problems."""
    check_size(nc, len(manifest), what=source)
    return await request(nc, subjects.API_PLAN, manifest, api.PlanReply)


async def delete(nc: Client, *, kind: str, name: str) -> api.ApplyReply:
    """Delete one object."""
    body = bus.encode(api.DeleteRequest(kind=kind, name=name))
    return await request(nc, subjects.API_DELETE, body, api.ApplyReply)


async def get(nc: Client, kind: str | None = None, name: str | None = None) -> api.GetReply:
    """The stored objects: every kind, one kind, or one object (nodes included)."""
    body = bus.encode(api.GetRequest(kind=kind, name=name))
    return await request(nc, subjects.API_GET, body, api.GetReply)


async def nad(nc: Client, network: str) -> api.NadReply:
    """A network's bridge CNI config and its NetworkAttachmentDefinition."""
    body = bus.encode(api.NadRequest(network=network))
    return await request(nc, subjects.API_NAD, body, api.NadReply)


async def switch_config(nc: Client, node: str | None = None) -> api.SwitchReply:
    """What the switch ports of each NIC group need (of every node, or one)."""
    body = bus.encode(api.SwitchRequest(node=node))
    return await request(nc, subjects.API_SWITCH, body, api.SwitchReply)
