"""NATS outages of 1, 5 and 30 s while submissions, intents and statuses flow.

One real nats-server with JetStream on a fixed store directory is stopped and started again
on the same port (its stored data kept, as after a restart of the service or of its host),
with a planner, an auditor and two executors (host network namespace nodes) running in this
process, each on its own connection as the services make it (``bus.connect(attempts=-1)``).
A submitter sends one VmNic after another to the planner; when a request gets no answer it
sends the same one again, as a user would. Counted end to end, after the last outage:

* every accepted submission's spec is stored in ``L2_SPECS``;
* every intent in ``L2_INTENTS`` reached its node and was applied (an Applied status of that
  generation), and each node's kernel holds exactly the VM NICs accepted for it;
* every status an executor published (observed where the executor publishes it) is stored
  in ``L2_STATUS``;
* after each outage every service is back by itself: connected (its health says it lived
  through that outage) and answering its own requests;
* what the services follow still flows to them: a node that joins after the last outage gets
  its intent from the planner (which follows ``L2_NODES``), and the auditor's history of
  every node holds the node's last intent and its apply (it follows ``L2_INTENTS`` and
  ``L2_STATUS``). The executors' pull consumers are proven by the intents applied after
  each outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client
from pyroute2 import netns as pyroute2_netns

from services.auditor.service import Auditor, AuditorConfig
from services.executor.service import Executor
from services.planner.service import Planner
from shared.domain.model import NodeIntent, NodeStatus, ObservedState
from shared.runtime import bus, natsserver
from shared.wire import api, subjects
from shared.wire.auditor_api import HistoryReply
from tests import keys
from tests.executor.conftest import (
    ExecutorFactory,
    HostNode,
    _build_node,
    executors,  # noqa: F401  (a fixture, shared)
)
from tests.kit import until

pytestmark = pytest.mark.timeout(420)

OUTAGES_S = (1.0, 5.0, 30.0)
SUBMIT_EVERY_S = 0.3
BACK_WITHIN_S = 120.0  # a bound against hanging, not a speed requirement

UNTAGGED = """\
kind: Network
name: untagged
clusterNetwork: mgmt
type: UntaggedNetwork
"""


def vm_nic(name: str, vm: str, node: str) -> str:
    return f"kind: VmNic\nname: {name}\nvm: {vm}\nnode: {node}\nnetwork: untagged\n"


@dataclass
class Submitter:
    """Sends VmNics to the planner one after another; a request without an answer is sent
    again until answered. ``accepted``: VmNic name -> (node, VM), for every ok reply."""

    nc: Client
    nodes: list[HostNode]
    accepted: dict[str, tuple[str, str]] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    retries: int = 0
    count: int = 0
    just_accepted: asyncio.Event = field(default_factory=asyncio.Event)

    async def submit(self, text: str) -> api.ApplyReply:
        while True:
            try:
                msg = await self.nc.request(subjects.API_APPLY, text.encode(), timeout=5.0)
                reply = msgspec.json.decode(msg.data, type=api.ApplyReply)
            except Exception:  # no answer, no responders, an error reply: send it again
                self.retries += 1
                await asyncio.sleep(0.5)
                continue
            return reply

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            node = self.nodes[self.count % len(self.nodes)]
            name = f"nic-{self.count}"
            vm = node.vm(f"v{self.count}")  # a namespace the node fixture removes
            self.count += 1
            reply = await self.submit(vm_nic(name, vm, node.node))
            if reply.ok:
                self.accepted[name] = (node.node, vm)
                self.just_accepted.set()
            else:
                self.refused.append(f"{name}: {reply.errors}")
            await asyncio.sleep(SUBMIT_EVERY_S)


async def read_stream(js: Any, stream: str, filter_subject: str) -> list[Any]:
    """Every message of ``stream`` on ``filter_subject``, oldest first."""
    return await bus.read_stream(js, stream, filter_subject)


@pytest.fixture
def nodes() -> Iterator[list[HostNode]]:
    """Three namespace nodes (see tests/executor/conftest.py; the third joins after the last
    outage), removed by name with every VM namespace the test named."""
    made: list[HostNode] = []
    try:
        for _ in range(3):
            ns = f"l2o-{secrets.token_hex(3)}"
            pyroute2_netns.create(ns)
            node = HostNode(ns=ns, node=f"host-{ns}")
            made.append(node)
            asyncio.run(_build_node(ns))
        yield made
    finally:
        present = set(pyroute2_netns.listnetns())
        for node in made:
            for name in [*node.vms, node.ns]:
                if name in present:
                    pyroute2_netns.remove(name)


Published = dict[tuple[str, int, str], int]
"""(node, generation, phase) -> how many times an executor's publish of it returned."""


def record_statuses(ex: Executor, published: Published) -> None:
    """Count each status ``ex`` publishes from now on, where it publishes it (its own method,
    wrapped: the publish itself is real)."""
    original: Callable[..., Awaitable[None]] = ex._publish_status

    async def publish(status: NodeStatus, **options: Any) -> None:
        await original(status, **options)  # raises when not stored: then it is not counted
        key = (status.node, status.observed_generation, status.phase)
        published[key] = published.get(key, 0) + 1

    ex._publish_status = publish  # type: ignore[method-assign]


@dataclass
class Services:
    planner: Planner
    auditor: Auditor
    executors: list[Executor]
    conns: list[Client]


@pytest.fixture
async def services(
    nats_server: natsserver.EmbeddedNats,
    nodes: list[HostNode],
    executors: ExecutorFactory,  # noqa: F811
) -> AsyncIterator[Services]:
    url = nats_server.url
    planner_nc = await bus.connect([url], name="l2net-planner", attempts=-1)
    planner = Planner(planner_nc, signing_seed=keys.SEED)
    await planner.start()
    auditor_nc = await bus.connect([url], name="l2net-auditor", attempts=-1)
    auditor = Auditor(auditor_nc, AuditorConfig())
    await auditor.start()
    exs = [await executors(n) for n in nodes[:2]]
    try:
        yield Services(planner, auditor, exs, [planner_nc, auditor_nc])
    finally:
        await auditor.stop()
        await planner.stop()
        for conn in (planner_nc, auditor_nc):
            await conn.close()


async def ask_health(nc: Client, subject: str) -> bus.Health | None:
    try:
        msg = await nc.request(subject, b"", timeout=2.0)
        return msgspec.json.decode(msg.data, type=bus.Health)
    except Exception:
        return None


async def back(nc: Client, svc: Services, nodes: list[HostNode], outages: int) -> list[str]:
    """The services that are connected again after their ``outages``-th outage and answer
    their own requests (health, then a real request each)."""
    ok: list[str] = []
    checks: list[tuple[str, str, str, bytes]] = [
        ("planner", subjects.API_HEALTH, subjects.API_GET, b"{}"),
        ("auditor", subjects.health("l2net-auditor"), subjects.AUDITOR_HISTORY, b""),
    ]
    for n in nodes:
        checks.append(
            (
                f"executor {n.node}",
                subjects.health("l2net-executor", node=n.node),
                subjects.executor_control(n.node, "state"),
                b"",
            )
        )
    for name, health_subject, subject, body in checks:
        h = await ask_health(nc, health_subject)
        if h is None or not h.connected or h.outages < outages:
            continue
        try:
            await nc.request(subject, body, timeout=5.0)
        except Exception:
            continue
        ok.append(name)
    return ok


async def test_services_ride_out_nats_outages_and_lose_nothing(
    nats_server: natsserver.EmbeddedNats,
    nodes: list[HostNode],
    services: Services,
    executors: ExecutorFactory,  # noqa: F811
) -> None:
    started = time.monotonic()
    published: Published = {}
    for ex in services.executors:
        record_statuses(ex, published)
    nc = await bus.connect([nats_server.url], name="outage-test", attempts=-1)
    js = nc.jetstream()
    late = nodes[2]  # joins after the last outage: the planner still follows L2_NODES
    nodes = nodes[:2]
    submitter = Submitter(nc, nodes)
    try:
        reply = await submitter.submit(UNTAGGED)
        assert reply.ok, reply.errors
        n_services = 2 + len(nodes)
        back_counts: list[tuple[float, int]] = []
        for i, outage in enumerate(OUTAGES_S, start=1):
            stop = asyncio.Event()
            flow = asyncio.create_task(submitter.run(stop))
            await asyncio.sleep(2.0)  # submissions, intents and statuses flowing
            # Cut right after an accepted submission: its intents are on their way to the
            # executors, which apply them and publish their statuses during the outage.
            submitter.just_accepted.clear()
            await submitter.just_accepted.wait()
            nats_server.stop(kill=(outage == OUTAGES_S[-1]))  # the last one a crash
            await asyncio.sleep(outage)
            nats_server.start_again()
            with contextlib.suppress(AssertionError):  # counted below
                await until(
                    lambda i=i: _all_back(nc, services, nodes, i, n_services), timeout=BACK_WITHIN_S
                )
            returned = await back(nc, services, nodes, i)
            back_counts.append((outage, len(returned)))
            print(
                f"after the {outage:g} s outage, services back by themselves: "
                f"{len(returned)}/{n_services}"
            )
            await asyncio.sleep(2.0)  # flowing again after the outage
            stop.set()
            await flow

        ex = await executors(late)
        record_statuses(ex, published)

        # Everything published reached its destination: the last intent of each node applied.
        async def unsettled() -> list[str]:
            out = []
            stored = await _stored_statuses(js)
            for n in [*nodes, late]:
                last = await _last_intent(js, n.node)
                if last is None:
                    out.append(f"{n.node}: no intent")
                elif (n.node, last.generation, "Applied") not in stored:
                    out.append(f"{n.node}: generation {last.generation} not Applied")
            return out

        with contextlib.suppress(AssertionError):  # what is left is counted below
            await until(lambda: _none(unsettled), timeout=BACK_WITHIN_S)

        specs = {
            bus.decode(m.data, api.SpecRecord).name
            for m in await read_stream(js, subjects.STREAM_SPECS, subjects.spec("VmNic", "*"))
            if bus.decode(m.data, api.SpecRecord).op == "put"
        }
        accepted = submitter.accepted
        specs_lost = [name for name in accepted if name not in specs]

        intents = [
            bus.decode(m.data, NodeIntent)
            for m in await read_stream(js, subjects.STREAM_INTENTS, subjects.ALL_INTENTS)
        ]
        stored_statuses = await _stored_statuses(js)
        intents_lost = [
            (it.node, it.generation)
            for it in intents
            if (it.node, it.generation, "Applied") not in stored_statuses
        ]
        statuses_lost = [key for key in published if key not in stored_statuses]

        # End to end: each node's kernel holds exactly the VM NICs accepted for it.
        nics_missing: list[str] = []
        for n in nodes:
            reply_msg = await nc.request(
                subjects.executor_control(n.node, "state"), b"", timeout=10.0
            )
            present = set(bus.decode(reply_msg.data, ObservedState).namespaces)
            nics_missing += [
                name
                for name, (node, vm) in accepted.items()
                if node == n.node and vm not in present
            ]

        # The auditor still follows intents and statuses: its history of every node holds
        # the node's last intent and its apply.
        async def followed(n: HostNode) -> bool:
            last = await _last_intent(js, n.node)
            try:
                msg = await nc.request(
                    subjects.AUDITOR_HISTORY, bus.encode({"node": n.node}), timeout=5.0
                )
            except Exception:
                return False
            events = msgspec.json.decode(msg.data, type=HistoryReply).events
            seen = {(e.what, e.generation) for e in events}
            return (
                last is not None
                and {("intent", last.generation), ("apply", last.generation)} <= seen
            )

        every = [*nodes, late]
        with contextlib.suppress(AssertionError):  # counted below
            await until(lambda: _all(followed, every), timeout=BACK_WITHIN_S)
        auditor_followed = [n.node for n in every if await followed(n)]
        planner_followed = await _last_intent(js, late.node) is not None

        print(f"submissions: {submitter.count} sent, {submitter.retries} requests sent again")
        print(f"accepted specs lost: {len(specs_lost)}/{len(accepted)}")
        print(f"intents lost: {len(intents_lost)}/{len(intents)}")
        print(f"statuses lost: {len(statuses_lost)}/{len(published)}")
        print(f"accepted VM NICs missing on their node: {len(nics_missing)}/{len(accepted)}")
        print(
            "followers alive after the outages: planner (a node joining gets its intent) "
            f"{int(planner_followed)}/1, auditor (last intent and apply of each node) "
            f"{len(auditor_followed)}/{len(every)}"
        )
        print(f"outage test took {time.monotonic() - started:.0f} s")
        assert not await unsettled(), await unsettled()
        assert not submitter.refused, submitter.refused
        assert accepted, "no submission was accepted"
        assert not specs_lost, specs_lost
        assert not intents_lost, intents_lost
        assert not statuses_lost, statuses_lost
        assert not nics_missing, nics_missing
        assert all(count == n_services for _, count in back_counts), back_counts
        assert planner_followed
        assert len(auditor_followed) == len(every), auditor_followed
    finally:
        await nc.close()


async def _all_back(
    nc: Client, svc: Services, nodes: list[HostNode], outages: int, n_services: int
) -> bool:
    return len(await back(nc, svc, nodes, outages)) == n_services


async def _stored_statuses(js: Any) -> set[tuple[str, int, str]]:
    """(node, generation, phase) of every status stored in L2_STATUS."""
    return {
        (s.node, s.observed_generation, s.phase)
        for s in (
            bus.decode(m.data, NodeStatus)
            for m in await read_stream(js, subjects.STREAM_STATUS, subjects.ALL_STATUS)
        )
    }


async def _none(check: Callable[[], Awaitable[list[str]]]) -> bool:
    return not await check()


async def _all(check: Callable[[HostNode], Awaitable[bool]], nodes: list[HostNode]) -> bool:
    return all([await check(n) for n in nodes])


async def _last_intent(js: Any, node: str) -> NodeIntent | None:
    try:
        raw = await js.get_last_msg(subjects.STREAM_INTENTS, subjects.intent(node))
    except Exception:
        return None
    return bus.decode(raw.data, NodeIntent) if raw.data else None
