"""The auditor with real executors converging host network namespaces (bridge + veth, the
part of the L2 stack the host kernel has): hand-made drift is found, healed only under the
heal policy, and a stopped executor leaves its node unverified without false drift elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
from collections.abc import Awaitable, Callable, Iterator

import pytest
from pyroute2 import netns as pyroute2_netns

from services.auditor.service import AuditorConfig
from services.auditor.view import Policy
from services.executor.service import Executor
from tests.auditor.conftest import AuditorFactory, Bus
from tests.executor.conftest import (
    ExecutorFactory,
    HostNode,
    _build_node,
    intent,
    untagged_port,
)
from tests.executor.helpers import final_status, publish_intent
from tests.kit import until

pytestmark = pytest.mark.timeout(180)

NodeFactory = Callable[[], Awaitable[HostNode]]


@pytest.fixture
def host_nodes() -> Iterator[NodeFactory]:
    """Namespaces standing in for nodes (see tests/executor/conftest.py), removed by name."""
    made: list[HostNode] = []

    async def make() -> HostNode:
        ns = f"l2a-{secrets.token_hex(3)}"
        pyroute2_netns.create(ns)
        node = HostNode(ns=ns, node=f"host-{ns}")
        made.append(node)
        await _build_node(ns)
        return node

    try:
        yield make
    finally:
        present = set(pyroute2_netns.listnetns())
        for node in made:
            for name in [*node.vms, node.ns]:
                if name in present:
                    pyroute2_netns.remove(name)


async def converge(events: Bus, node: HostNode, ex: Executor) -> str:
    """Give ``node`` one VM on an untagged network; the VM's host veth once Applied."""
    vm = node.vm("a")
    await publish_intent(events.nc, intent(node, 1, [untagged_port(vm)]))
    await until(lambda: final_status(events.nc, node.node, 1), timeout=60)
    status = await final_status(events.nc, node.node, 1)
    assert status is not None and status.phase == "Applied", status
    port = (await ex.kernel.read()).vm_ports[f"{vm}/eth0"]
    assert port.host_ifname
    return port.host_ifname


def master_of(node: HostNode, ifname: str) -> str | None:
    out = subprocess.run(
        ["ip", "-n", node.ns, "-j", "link", "show", "dev", ifname],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    master: str | None = json.loads(out)[0].get("master")
    return master


def release(node: HostNode, ifname: str) -> None:
    """The hand-made change: take the VM's port out of its bridge."""
    subprocess.run(["ip", "-n", node.ns, "link", "set", ifname, "nomaster"], check=True)


def keys(items: list) -> set[tuple[str, str]]:  # type: ignore[type-arg]
    return {(i.object, i.path) for i in items}


async def test_report_only_finds_a_released_vm_port_and_leaves_it_alone(
    host_nodes: NodeFactory,
    executors: ExecutorFactory,
    events: Bus,
    auditors: AuditorFactory,
) -> None:
    node = await host_nodes()
    ex = await executors(node)
    veth = await converge(events, node, ex)
    auditor = await auditors()
    assert (await auditor.check(node.node)).nodes[0].items == []
    release(node, veth)
    port = f"vm/{node.vms[0]}/eth0"
    await until(lambda: (port, "bridge") in keys(auditor.findings(node.node)), timeout=30)
    await asyncio.sleep(2.0)  # ticks pass; nothing may put it back
    assert master_of(node, veth) is None
    assert auditor.heals(node.node) == 0
    reply = await auditor.check(node.node)
    assert (port, "bridge") in keys(reply.nodes[0].items) and reply.nodes[0].verified


async def test_heal_policy_restores_the_node_and_counts_it(
    host_nodes: NodeFactory,
    executors: ExecutorFactory,
    events: Bus,
    auditors: AuditorFactory,
) -> None:
    node = await host_nodes()
    ex = await executors(node)
    veth = await converge(events, node, ex)
    auditor = await auditors(AuditorConfig(heal={"mgmt"}))
    release(node, veth)
    await until(lambda: auditor.heals(node.node) == 1, timeout=60)
    await until(lambda: auditor.findings(node.node) == [], timeout=30)
    assert master_of(node, veth) == "mgmt-br"
    reports = await events.drift_reports()
    port = f"vm/{node.vms[0]}/eth0"
    opened = [i for r in reports for i in r.items if (i.object, i.path) == (port, "bridge")]
    assert [i.resolved_at is None for i in opened] == [True, False]  # found, then resolved
    heals = [r for r in reports if r.note.startswith("heal")]
    assert len(heals) == 1 and heals[0].heals == 1 and "Applied" in heals[0].note


async def test_a_stopped_executor_leaves_its_node_unverified_and_no_drift_elsewhere(
    host_nodes: NodeFactory,
    executors: ExecutorFactory,
    events: Bus,
    auditors: AuditorFactory,
) -> None:
    one, two = await host_nodes(), await host_nodes()
    ex1, ex2 = await executors(one), await executors(two)
    await converge(events, one, ex1)
    await converge(events, two, ex2)
    auditor = await auditors(AuditorConfig(policy=Policy(silence_s=2.0)))
    await ex2.stop()

    async def two_silent() -> bool:
        reply = await auditor.check(two.node)
        return not reply.nodes[0].reporting

    await until(two_silent, timeout=30)
    reply = await auditor.check()
    by_node = {n.node: n for n in reply.nodes}
    assert by_node[two.node].verified is False and by_node[two.node].reporting is False
    assert keys(by_node[two.node].items) == {(f"node/{two.node}", "heartbeat")}
    assert by_node[one.node].items == [] and by_node[one.node].verified
    assert by_node[one.node].reporting
    reports = await events.drift_reports()
    assert {r.node for r in reports} == {two.node}
    assert all(r.unverified for r in reports)
