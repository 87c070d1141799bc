"""Changes that would cut a node's management path are refused by the planner.

A real nats-server and planner; three registered nodes report their management path
(``Node.mgmt``: subnets, routes, gateway, NATS server, MTU, the NICs of mgmt-bo) the way
their executors do. Each manifest of the table, submitted on top of the seed, must be
refused whole, naming the object, the field and why, and store nothing.
"""

from __future__ import annotations

import msgspec
import pytest
from nats.aio.client import Client

from services.planner.service import Planner
from shared.domain import model
from shared.wire import subjects
from tests.kit import until
from tests.planner.conftest import make_node, register
from tests.planner.test_service import apply, last_intent, stream_messages

NODE1_MGMT = model.MgmtPath(
    interface="mgmt-br",
    addresses=["10.20.0.11/16", "fd00:20::11/64"],
    routes=["0.0.0.0/0", "10.99.0.0/16"],
    gateways=["10.20.0.1"],
    nats_addresses=["10.30.0.5"],
    mtu=1500,
    nics=["eth0"],
)
NODE2_MGMT = model.MgmtPath(
    interface="mgmt-br.10",
    addresses=["10.21.0.12/24"],
    routes=["0.0.0.0/0"],
    gateways=["10.21.0.1"],
    nats_addresses=["10.30.0.5"],
    mtu=1500,
    nics=["eth0", "eth3"],  # eth3 too: the inventory's NIC list does not say so
)
NODE3_MGMT = model.MgmtPath(
    interface="mgmt-br",
    addresses=["10.22.0.13/24"],
    routes=["0.0.0.0/0"],
    gateways=["10.22.0.1"],
    nats_addresses=["10.30.0.5"],
    mtu=9000,
    nics=["eth0"],
)


def nodes() -> list[model.Node]:
    n1 = make_node("node-1")
    n1.mgmt = NODE1_MGMT
    n2 = make_node("node-2", nics=3)
    n2.mgmt_vlan = 10
    n2.mgmt = NODE2_MGMT
    n3 = make_node("node-3")
    n3.mgmt = NODE3_MGMT
    return [n1, n2, n3]


def host_network(name: str, cn: str, vlan: int, ips: dict[str, str]) -> str:
    lines = "".join(f"  {node}: {cidr}\n" for node, cidr in ips.items())
    return f"kind: HostNetwork\nname: {name}\nclusterNetwork: {cn}\nvlan: {vlan}\nips:\n{lines}"


# (manifest, kind, name, field, words the reason must contain)
CUTS: list[tuple[str, str, str, str, str]] = [
    (
        "kind: Network\nname: v1\nclusterNetwork: mgmt\nvlan: 1\n",
        "Network",
        "v1",
        "vlan",
        "mgmt-bo's PVID",
    ),
    (
        "kind: Network\nname: all\nclusterNetwork: mgmt\ntype: L2VlanTrunkNetwork\n"
        "trunk: [{minID: 1, maxID: 4094}]\n",
        "Network",
        "all",
        "trunk[0]",
        "mgmt-bo's PVID",
    ),
    (
        "kind: Network\nname: t1\nclusterNetwork: mgmt\ntype: L2VlanTrunkNetwork\n"
        "trunk: [{id: 5}, {id: 1}]\n",
        "Network",
        "t1",
        "trunk[1].id",
        "mgmt-bo's PVID",
    ),
    (
        "kind: Network\nname: v10\nclusterNetwork: mgmt\nvlan: 10\n",
        "Network",
        "v10",
        "vlan",
        "the management VLAN of node-2",
    ),
    (
        "kind: Network\nname: t2\nclusterNetwork: mgmt\ntype: L2VlanTrunkNetwork\n"
        "trunk: [{minID: 2, maxID: 4094}]\n",
        "Network",
        "t2",
        "trunk[0]",
        "the management VLAN of node-2",
    ),
    (
        host_network("h1", "mgmt", 1, {"node-1": "10.40.0.1/24"}),
        "HostNetwork",
        "h1",
        "vlan",
        "mgmt-br's own untagged VID",
    ),
    (
        host_network("h10", "mgmt", 10, {"node-1": "10.40.0.1/24"}),
        "HostNetwork",
        "h10",
        "vlan",
        "management VLAN of node node-2",
    ),
    (
        host_network("own-addr", "oob", 30, {"node-1": "10.20.0.99/24"}),
        "HostNetwork",
        "own-addr",
        "ips.node-1",
        "contains the node's management address 10.20.0.11",
    ),
    (
        host_network("wider", "oob", 31, {"node-1": "10.0.0.1/8"}),
        "HostNetwork",
        "wider",
        "ips.node-1",
        "contains the node's management address 10.20.0.11",
    ),
    (
        host_network("same-ip", "mgmt", 50, {"node-2": "10.21.0.12/24"}),
        "HostNetwork",
        "same-ip",
        "ips.node-2",
        "is the management subnet 10.21.0.0/24",
    ),
    (
        host_network("same-net", "oob", 35, {"node-3": "10.22.0.200/24"}),
        "HostNetwork",
        "same-net",
        "ips.node-3",
        "is the management subnet 10.22.0.0/24",
    ),
    (
        host_network("to-gw", "oob", 36, {"node-3": "10.22.0.5/29"}),
        "HostNetwork",
        "to-gw",
        "ips.node-3",
        "contains the management gateway 10.22.0.1",
    ),
    (
        host_network("to-peer", "oob", 37, {"node-1": "10.21.0.5/28"}),
        "HostNetwork",
        "to-peer",
        "ips.node-1",
        "contains the management address 10.21.0.12 of node node-2",
    ),
    (
        host_network("to-nats", "oob", 32, {"node-1": "10.30.0.9/24"}),
        "HostNetwork",
        "to-nats",
        "ips.node-1",
        "contains the NATS server 10.30.0.5",
    ),
    (
        host_network("routed", "oob", 33, {"node-1": "10.99.3.3/24"}),
        "HostNetwork",
        "routed",
        "ips.node-1",
        "overlaps 10.99.0.0/16, routed through mgmt-br",
    ),
    (
        host_network("v6", "oob", 34, {"node-1": "fd00:20::99/64"}),
        "HostNetwork",
        "v6",
        "ips.node-1",
        "is the management subnet fd00:20::/64",
    ),
    (
        "kind: ClusterNetwork\nname: data\n---\nkind: VlanConfig\nname: data-all\n"
        "clusterNetwork: data\nuplink: {nics: [eth3]}\n"
        "nodeSelector: {kubernetes.io/hostname: node-2}\n",
        "VlanConfig",
        "data-all",
        "uplink.nics[0]",
        "member of mgmt-bo",
    ),
    (
        "kind: VmNic\nname: jumbo\nvm: vmj\nnode: node-3\nnetwork: vlan100\n",
        "VmNic",
        "jumbo",
        "network",
        "below the management MTU 9000",
    ),
    (
        "kind: VlanConfig\nname: m\nclusterNetwork: mgmt\nuplink: {nics: [eth1]}\n",
        "VlanConfig",
        "m",
        "clusterNetwork",
        "built in",
    ),
]


@pytest.fixture
async def seeded(nc: Client, planner: Planner, seed_text: str) -> Client:
    for node in nodes():
        await register(nc, node)
    await until(
        lambda: all(
            (n := planner.catalog.nodes.get(name)) is not None and n.mgmt is not None
            for name in ("node-1", "node-2", "node-3")
        )
    )
    reply = await apply(nc, seed_text)
    assert reply.ok, reply.errors
    return nc


async def test_changes_that_would_cut_the_management_path_are_refused(seeded: Client) -> None:
    nc = seeded
    specs = await stream_messages(nc, subjects.STREAM_SPECS)
    intents = {n: await last_intent(nc, n) for n in ("node-1", "node-2", "node-3")}
    ok = 0
    failures: list[str] = []
    for manifest, kind, name, field, words in CUTS:
        reply = await apply(nc, manifest)
        named = [
            p
            for p in reply.errors
            if (p.kind, p.name, p.field) == (kind, name, field) and words in p.message
        ]
        if not reply.ok and named:
            ok += 1
        else:
            failures.append(f"{kind} {name}.{field}: {[str(p) for p in reply.errors]}")
    print(f"management-path cuts refused by the planner: {ok}/{len(CUTS)}")
    assert ok == len(CUTS), failures
    # Refused whole: nothing stored, no new intent.
    assert await stream_messages(nc, subjects.STREAM_SPECS) == specs
    for node, intent in intents.items():
        assert msgspec.json.encode(await last_intent(nc, node)) == msgspec.json.encode(intent)


async def test_host_addresses_clear_of_the_management_path_are_accepted(seeded: Client) -> None:
    """The rules refuse what cuts, not every address: a subnet of its own is fine, and so is
    a slice of the management subnet that holds no gateway, NATS server or node address."""
    reply = await apply(seeded, host_network("clear", "oob", 40, {"node-1": "10.40.0.1/24"}))
    assert reply.ok, reply.errors
    reply = await apply(seeded, host_network("slice", "oob", 41, {"node-1": "10.20.7.1/24"}))
    assert reply.ok, reply.errors
    reply = await apply(seeded, "kind: Network\nname: v20\nclusterNetwork: mgmt\nvlan: 20\n")
    assert reply.ok, reply.errors
