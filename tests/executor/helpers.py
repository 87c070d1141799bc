"""Polling the bus in executor tests: statuses in JetStream, conditions with generous bounds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from nats.aio.client import Client
from nats.js.errors import NotFoundError

from shared import bus, subjects
from shared.model import NodeIntent, NodeStatus
from tests import keys


async def until(check: Callable[[], object], *, timeout: float = 30.0) -> None:
    """Poll ``check`` (sync or async) until truthy; generous bounds, no timing asserted."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.1)


async def statuses(nc: Client, node: str) -> list[NodeStatus]:
    """Every status of ``node`` stored in L2_STATUS, oldest first."""
    js = nc.jetstream()
    out: list[NodeStatus] = []
    try:
        info = await js.stream_info(subjects.STREAM_STATUS)
    except NotFoundError:
        return out
    for seq in range(max(1, info.state.first_seq), info.state.last_seq + 1):
        try:
            raw = await js.get_msg(subjects.STREAM_STATUS, seq)
        except NotFoundError:
            continue
        if raw.subject == subjects.status(node) and raw.data:
            out.append(bus.decode(raw.data, NodeStatus))
    return out


async def final_status(nc: Client, node: str, generation: int) -> NodeStatus | None:
    for st in reversed(await statuses(nc, node)):
        if st.observed_generation == generation and st.phase != "Progressing":
            return st
    return None


async def publish_intent(nc: Client, it: NodeIntent) -> None:
    """``it``, signed with the tests' key, on its node's subject (as a planner publishes)."""
    js = nc.jetstream()
    await bus.ensure_streams(js, [subjects.STREAM_INTENTS])
    await js.publish(subjects.intent(it.node), bus.encode(keys.sign(it)))
