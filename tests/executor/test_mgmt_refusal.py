"""Intents published by hand that would cut the management path: the executor refuses them.

Defence in depth behind the planner's validation: a real nats-server, a real executor
converging a host namespace node whose ``mgmt-br`` holds the node's management address and a
route through it, intents signed with the tests' key and published straight on
``l2.intent.<node>``. Each must be refused (a ``refused`` result naming why), with no netlink
write and the node's state unchanged. The node also reports its management path.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from nats.aio.client import Client

from services.executor.kernel import NetlinkKernel
from shared.domain.l2state import desired_state, diff, exact_desired
from shared.domain.model import (
    BondIntent,
    ClusterNetworkIntent,
    HostVlanIntent,
    MgmtPath,
    Node,
    NodeIntent,
    VlanRange,
    VmPortIntent,
)
from shared.runtime import bus
from shared.wire import subjects
from tests import keys
from tests.executor.conftest import ExecutorFactory, HostNode, mgmt_cn, untagged_port
from tests.executor.helpers import final_status, publish_intent
from tests.kit import until

pytestmark = pytest.mark.timeout(180)

MGMT_ADDR = "169.254.77.2/24"
ROUTED = "169.254.200.0/24"


@pytest.fixture
def mgmt_node(host_node: HostNode) -> Iterator[HostNode]:
    """The host node with its management address on mgmt-br and a route through it."""
    for argv in (
        ["ip", "addr", "add", MGMT_ADDR, "dev", "mgmt-br"],
        ["ip", "route", "add", ROUTED, "via", "169.254.77.1", "dev", "mgmt-br"],
    ):
        subprocess.run(["ip", "netns", "exec", host_node.ns, *argv], check=True)
    yield host_node


def host_vlan(bridge: str, vlan: int, addresses: list[str]) -> HostVlanIntent:
    return HostVlanIntent(
        name=f"{bridge}.{vlan}",
        host_network=f"hn{vlan}",
        cluster_network=bridge.removesuffix("-br"),
        bridge=bridge,
        vlan=vlan,
        addresses=addresses,
    )


def small_mtu_port(vm: str) -> VmPortIntent:
    port = untagged_port(vm)
    port.cni_config["mtu"] = 1400
    return port


def cuts(node: HostNode) -> list[tuple[str, dict[str, Any], str]]:
    """(what, intent fields, words the refusal must contain)."""
    return [
        ("VLAN 1 network on mgmt", {"cluster_networks": [mgmt_cn([VlanRange(vid=1)])]}, "PVID"),
        (
            "trunk 1-4094 on mgmt",
            {"cluster_networks": [mgmt_cn([VlanRange(vid=1, vid_end=4094)])]},
            "PVID",
        ),
        (
            "host VLAN 1 on mgmt-br",
            {"host_vlans": [host_vlan("mgmt-br", 1, ["169.254.50.1/24"])]},
            "mgmt-br's own untagged VID",
        ),
        (
            "host address in the management subnet",
            {"host_vlans": [host_vlan("mgmt-br", 30, ["169.254.77.9/24"])]},
            "is the management subnet 169.254.77.0/24",
        ),
        (
            "host address over a route through mgmt",
            {"host_vlans": [host_vlan("oob-br", 31, ["169.254.200.7/25"])]},
            f"overlaps {ROUTED}, routed through mgmt-br",
        ),
        (
            "host address containing the node's management address",
            {"host_vlans": [host_vlan("oob-br", 33, ["169.254.0.1/16"])]},
            "contains the node's management address 169.254.77.2",
        ),
        (
            "host address containing the NATS server",
            {"host_vlans": [host_vlan("oob-br", 32, ["127.0.0.9/8"])]},
            "contains the NATS server 127.0.0.1",
        ),
        (
            "VM NIC on mgmt with a smaller MTU",
            {"vm_ports": [small_mtu_port(node.vm("small"))]},
            "below the management MTU 1500",
        ),
    ]


async def test_intents_that_would_cut_the_management_path_are_refused_by_the_executor(
    mgmt_node: HostNode, executors: ExecutorFactory, nc: Client
) -> None:
    ex = await executors(mgmt_node)
    js = nc.jetstream()
    raw = await js.get_last_msg(subjects.STREAM_NODES, subjects.node(mgmt_node.node))
    reported = bus.decode(raw.data or b"", Node).mgmt
    assert reported is not None and reported.interface == "mgmt-br"
    assert reported.addresses == [MGMT_ADDR] and ROUTED in reported.routes
    assert reported.nats_addresses == ["127.0.0.1"] and reported.mtu == 1500

    table = cuts(mgmt_node)
    ok = 0
    failures: list[str] = []
    for generation, (what, fields, words) in enumerate(table, start=1):
        before = exact_desired(await ex.kernel.read())
        intent = NodeIntent(node=mgmt_node.node, generation=generation, **fields)
        await publish_intent(nc, keys.sign(intent))
        await until(lambda g=generation: final_status(nc, mgmt_node.node, g), timeout=60)
        status = await final_status(nc, mgmt_node.node, generation)
        assert status is not None
        refused = [r for r in status.results if r.action == "refused" and words in (r.error or "")]
        # Unchanged as the rollback compares (every field of every link, VLANs, namespaces);
        # the kernel's own counters and operational states may move meanwhile.
        changed = [str(d) for d in diff(before, await ex.kernel.read())]
        if refused and status.netlink_writes == 0 and not changed:
            ok += 1
        else:
            failures.append(
                f"{what}: {status.phase}, {status.netlink_writes} writes, "
                f"refused {[r.error for r in status.results]}, changed {changed}"
            )
    print(f"management-path cuts refused by the executor: {ok}/{len(table)}")
    assert ok == len(table), failures


def test_refusals_that_need_a_bond_or_a_mgmt_vlan() -> None:
    """What a host namespace cannot hold (a real mgmt bond, a management VLAN), on the
    desired state alone: the same function the executor applies."""
    mgmt = MgmtPath(interface="mgmt-br.10", addresses=["10.0.0.5/24"], mtu=1500, nics=["eth0"])
    bond = BondIntent(name="oob-bo", ports=["eth0", "eth1"], mode="active-backup")
    oob = ClusterNetworkIntent(
        name="oob",
        bridge="oob-br",
        bond_name="oob-bo",
        managed=True,
        bond=bond,
        mtu=1500,
        uplink_vlans=[],
    )
    in_mgmt_vlan = untagged_port("vm1")
    in_mgmt_vlan.vlans = [VlanRange(vid=10, pvid=True, untagged=True)]
    in_mgmt_vlan.cni_config = {**in_mgmt_vlan.cni_config, "vlan": 10}  # as the planner writes
    intent = NodeIntent(
        node="n", generation=1, cluster_networks=[mgmt_cn(), oob], vm_ports=[in_mgmt_vlan]
    )
    state, refused = desired_state(intent, mgmt_vlan=10, mgmt=mgmt)
    assert "eth0" not in state.links and "eth1" in state.links
    texts = [str(r) for r in refused]
    assert any("eth0 not enslaved" in r and "member of mgmt-bo" in r for r in texts)
    assert state.vm_ports == {} and any("management VLAN" in r for r in texts)
    # Structured too: whose part was refused, without parsing the text.
    assert ("cluster network", "oob") in [(r.what, r.name) for r in refused]
    assert ("VM NIC", "vm1/eth0") in [(r.what, r.name) for r in refused]
    # The test-only switch lets it all through (and only it).
    state, refused = desired_state(intent, mgmt_vlan=10, mgmt=mgmt, guard_mgmt=False)
    assert "eth0" in state.links and state.vm_ports and refused == []


async def test_reported_management_path_of_a_node_without_mgmt_is_none(
    host_node: HostNode,
) -> None:
    """A machine without mgmt-br reports no path (nothing for the planner to check)."""
    from services.executor.mgmt import read_mgmt_path

    subprocess.run(
        ["ip", "netns", "exec", host_node.ns, "ip", "link", "del", "mgmt-br"], check=True
    )
    kernel = NetlinkKernel(host_node.node, netns=host_node.ns)
    try:
        assert await read_mgmt_path(kernel, nats=[]) is None
    finally:
        await kernel.close()
