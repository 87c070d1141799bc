"""Auditor fixtures: events published on a real bus, auditors started and stopped in-process.

The bus tests publish the same messages executors and the planner publish (intents, statuses,
heartbeats, observed states) with times chosen by the test, so that the findings they must
produce are known exactly. :func:`converged` builds the observed state of a node that applied
an intent (the kernel's view, as an executor reports it); ``change`` edits it by hand first.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client

from services.auditor.service import Auditor, AuditorConfig
from shared.domain.l2state import (
    DEFAULT_PVID,
    LinkState,
    build_actual,
    desired_state,
    observed_from,
    owner_alias,
)
from shared.domain.model import (
    DriftReport,
    Nic,
    Node,
    NodeIntent,
    NodeStatus,
    ObservedState,
    VlanRange,
)
from shared.runtime import bus, natsserver
from shared.wire import subjects
from tests import keys
from tests.executor.conftest import executors  # noqa: F401  (a fixture, shared)

Change = Callable[[dict[str, LinkState], dict[str, list[VlanRange]]], object]


def converged(intent: NodeIntent, *, at: float, change: Change | None = None) -> ObservedState:
    """What the executor of ``intent.node`` reports after applying ``intent`` (then ``change``)."""
    desired, refused = desired_state(intent)
    assert not refused
    links: dict[str, LinkState] = {
        "eth0": LinkState(name="eth0", kind="device", master="mgmt-bo", up=True, mtu=1500),
        "mgmt-bo": LinkState(name="mgmt-bo", kind="bond", master="mgmt-br", up=True, mtu=1500),
        "mgmt-br": LinkState(name="mgmt-br", kind="bridge", up=True, mtu=1500, vlan_filtering=True),
    }
    for name, want in desired.links.items():
        links[name] = msgspec.structs.replace(want, kind=want.kind or "device")
    vlans: dict[str, list[VlanRange]] = {"mgmt-br": [DEFAULT_PVID], "mgmt-bo": [DEFAULT_PVID]}
    vlans.update(desired.vlans)
    for i, port in enumerate(desired.vm_ports.values()):
        veth = f"veth{i}"
        alias = owner_alias(vm=port.vm, net=port.network, **{"if": port.ifname})
        links[veth] = LinkState(name=veth, kind="veth", alias=alias, master=port.bridge, up=True)
        vlans[veth] = list(port.vlans or [])
    if change is not None:
        change(links, vlans)
    state = build_actual(
        node=intent.node, links=links.values(), vlans=vlans, namespaces=desired.namespaces
    )
    return observed_from(state, generation=intent.generation, reason="test", at=at)


def heartbeat(node: str, at: float) -> Node:
    return Node(
        name=node,
        nics=[Nic(name="eth0", master="mgmt-bo"), Nic(name="eth1"), Nic(name="eth2")],
        heartbeat_at=at,
    )


def applied(node: str, generation: int, at: float, phase: str = "Applied") -> NodeStatus:
    return NodeStatus(node=node, phase=phase, observed_generation=generation, at=at)


class Bus:
    """Publishes events as the services do (into their JetStream streams)."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.registered: set[str] = set()

    async def setup(self) -> None:
        await bus.ensure_streams(self.js, list(bus.STREAMS))

    async def register(self, node: str) -> None:
        """The node's executor registers (a heartbeat, now): only such nodes are judged."""
        self.registered.add(node)
        await self.heartbeat(node, time.time())

    async def intent(self, intent: NodeIntent, *, register: bool = True) -> None:
        """Publish ``intent`` signed by the tests' planner key; its node registers first
        unless told not to (a stray)."""
        if register and intent.node not in self.registered:
            await self.register(intent.node)
        await self.js.publish(subjects.intent(intent.node), bus.encode(keys.sign(intent)))

    async def status(self, status: NodeStatus) -> None:
        await self.js.publish(subjects.status(status.node), bus.encode(status))

    async def observed(self, observed: ObservedState) -> None:
        await self.js.publish(subjects.observed(observed.node), bus.encode(observed))

    async def heartbeat(self, node: str, at: float) -> None:
        await self.js.publish(subjects.node(node), bus.encode(heartbeat(node, at)))

    async def drift_reports(self) -> list[DriftReport]:
        """Every report stored in L2_DRIFT, oldest first."""
        info = await self.js.stream_info(subjects.STREAM_DRIFT)
        out: list[DriftReport] = []
        for seq in range(max(1, info.state.first_seq), info.state.last_seq + 1):
            raw = await self.js.get_msg(subjects.STREAM_DRIFT, seq)
            if raw.data:
                out.append(bus.decode(raw.data, DriftReport))
        return out


@pytest.fixture
async def events(nc: Client) -> Bus:
    b = Bus(nc)
    await b.setup()
    return b


AuditorFactory = Callable[..., Awaitable[Auditor]]


@asynccontextmanager
async def auditor_factory(url: str, *, name: str) -> AsyncIterator[AuditorFactory]:
    """Start auditors on ``url`` (each on its own connection); all stopped on exit."""
    started: list[tuple[Auditor, Client]] = []

    async def start(config: AuditorConfig | None = None, **kw: Any) -> Auditor:
        conn = await bus.connect([url], name=name)
        auditor = Auditor(conn, config or AuditorConfig(**kw))
        await auditor.start()
        started.append((auditor, conn))
        return auditor

    try:
        yield start
    finally:
        for auditor, conn in started:
            await auditor.stop()
            await conn.drain()


@pytest.fixture
async def auditors(nats_server: natsserver.EmbeddedNats) -> AsyncIterator[AuditorFactory]:
    """Start auditors on the test's server (each on its own connection); all stopped at the end."""
    async with auditor_factory(nats_server.url, name="auditor-test") as start:
        yield start


async def stop(auditor: Auditor) -> None:
    """Stop one auditor early (a crash or a restart); the fixture's stop is then a no-op."""
    await auditor.stop()
