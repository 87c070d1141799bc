"""The auditor under the shipped NATS permissions (deploy/nats): as the ``auditor`` user it
replays, publishes drift and asks executors; the ``operator`` user (``l2net audit``) asks it."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.auditor import client as audit_client
from services.auditor.service import Auditor
from shared.runtime import bus
from shared.wire import subjects
from tests import keys
from tests.auditor.conftest import converged, heartbeat
from tests.deploy.test_nats import SecuredNats, secured  # noqa: F401  (the fixture)
from tests.executor.labkit import seed_intent

pytestmark = pytest.mark.timeout(120)


async def test_the_auditor_works_with_its_least_privilege_user(
    secured: SecuredNats,  # noqa: F811
) -> None:
    planner = await secured.connect("planner")
    await bus.ensure_streams(planner.jetstream(), list(bus.STREAMS))
    intent = seed_intent("node-1", 1)
    await planner.jetstream().publish(subjects.intent("node-1"), bus.encode(keys.sign(intent)))
    node = await secured.connect("node-1")
    # The node registers (only registered nodes are judged), then reports its drifted state.
    beat = bus.encode(heartbeat("node-1", time.time()))
    await node.jetstream(timeout=5).publish(subjects.node("node-1"), beat)

    def mtu(links: dict, vlans: dict) -> None:  # type: ignore[type-arg]
        links["oob-br"].mtu = 1400

    drifted = converged(intent, at=1_700_000_000.0, change=mtu)
    await node.jetstream(timeout=5).publish(subjects.observed("node-1"), bus.encode(drifted))

    conn = await secured.connect("auditor")
    auditor = Auditor(conn)
    operator = await secured.connect("operator")
    try:
        await asyncio.wait_for(auditor.start(), 60)
        reply = await audit_client.check(operator, "node-1", live=True, timeout=30)
        assert reply.ok, reply.errors
        assert [(i.object, i.path) for i in reply.nodes[0].items] == [("oob-br", "mtu")]
        info = await operator.jetstream().stream_info(subjects.STREAM_DRIFT)
        assert info.state.messages == 1  # one report: the finding opened
        await asyncio.sleep(0.5)
        assert secured.errors.get("auditor", []) == []
        assert secured.errors.get("operator", []) == []
    finally:
        await auditor.stop()
        for nc in (conn, operator, node, planner):
            await nc.close()
