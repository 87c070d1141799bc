"""Reading the bus in executor tests: statuses in JetStream, intents published as a planner does
(waiting for a condition: :func:`tests.kit.until`)."""

from __future__ import annotations

from nats.aio.client import Client
from nats.js.errors import NotFoundError

from shared.domain.model import NodeIntent, NodeStatus
from shared.runtime import bus
from shared.wire import subjects
from tests import keys


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
