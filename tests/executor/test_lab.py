"""The executor on real L2 kernels: three user-mode Linux nodes with bonds, VLANs, VLAN
filtering, the bridge CNI plugin, and real packets between VMs on different nodes.

One lab for the module (booted by the lab's Python API with the executor on every node);
the tests run in order and move the whole fleet from generation to generation, as an
operator would. A lab that cannot boot fails these tests: it never skips them.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client

from services.lab import Lab
from shared.domain.model import HostVlanIntent, NodeIntent, NodeStatus, ObservedState
from shared.runtime import bus
from shared.wire import subjects
from tests.executor.helpers import final_status, publish_intent
from tests.executor.labkit import (
    mgmt_only_intent,
    port_vids,
    seed_intent,
    sh,
    vm_address,
    vm_ping,
)
from tests.kit import lab_fixture, until

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

NODES = ["node-1", "node-2", "node-3"]
REPO = Path(__file__).resolve().parents[2]
_generation = itertools.count(1)


lab = lab_fixture("exlab", nodes=3, executor=True)


async def apply_all(nc: Client, make: object, nodes: list[str] = NODES) -> dict[str, NodeStatus]:
    """Publish one new generation to ``nodes`` (``make(node, gen)``); wait for each status."""
    generation = next(_generation)
    for node in nodes:
        await publish_intent(nc, make(node, generation))  # type: ignore[operator]
    out: dict[str, NodeStatus] = {}
    for node in nodes:
        await until(lambda n=node: final_status(nc, n, generation), timeout=180)
        status = await final_status(nc, node, generation)
        assert status is not None
        out[node] = status
    return out


def assert_applied(statuses: dict[str, NodeStatus]) -> None:
    for node, st in statuses.items():
        assert st.phase == "Applied", f"{node}: {st.phase}: {st.error}"


async def full_dump(lab: Lab, node: str) -> object:
    """The node's whole L2 state (every link, every port's VLANs), read inside the node."""
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r});"
        " from services.executor.dump import main; main()"
    )
    return json.loads(await sh(lab, node, sys.executable, "-c", code, timeout=120))


async def test_seed_topology_converges_on_three_nodes(lab: Lab, labnc: Client) -> None:
    assert_applied(await apply_all(labnc, seed_intent))
    for node in NODES:
        # The seed's example, live: oob-bo carries 1 PVID untagged and 200; mgmt-bo 100.
        assert await port_vids(lab, node, "oob-bo") == ["1 PVID untagged", "200"]
        assert await port_vids(lab, node, "mgmt-bo") == ["1 PVID untagged", "100"]
        mode = await sh(lab, node, "cat", "/sys/class/net/oob-bo/bonding/mode")
        assert mode.split()[0] == "active-backup"
        slaves = await sh(lab, node, "cat", "/sys/class/net/oob-bo/bonding/slaves")
        assert sorted(slaves.split()) == ["eth1", "eth2"]
    for i, node in enumerate(NODES, start=1):
        await vm_address(lab, node, "vm100", f"169.254.100.{i}/24")
        await vm_address(lab, node, "vm200", f"169.254.200.{i}/24")
        await vm_address(lab, node, "vmu", f"169.254.50.{i}/24")


async def test_vlan100_vms_on_different_nodes_exchange_packets(lab: Lab) -> None:
    assert await vm_ping(lab, "node-1", "vm100", "169.254.100.2")
    assert await vm_ping(lab, "node-3", "vm100", "169.254.100.1")


async def test_vm_ports_carry_exactly_their_networks_vids(lab: Lab) -> None:
    # Bridge CNI 1.1.1 leaves VID 1 egress-untagged on a VLAN port; the executor removes it.
    out = json.loads(await sh(lab, "node-1", "bridge", "-j", "vlan", "show"))
    by_port = {e["ifname"]: [v["vlan"] for v in e.get("vlans", [])] for e in out}
    veth_vids = [vids for port, vids in by_port.items() if port.startswith("veth")]
    assert sorted(veth_vids) == [[1], [100], [200]]


async def test_untagged_network_works_across_nodes(lab: Lab) -> None:
    assert await vm_ping(lab, "node-2", "vmu", "169.254.50.1")


async def test_vlan200_vm_cannot_reach_vlan100_vm(lab: Lab) -> None:
    await vm_address(lab, "node-1", "vm200", "169.254.100.201/24")
    assert await vm_ping(lab, "node-1", "vm200", "169.254.200.2")  # its own VLAN works
    assert not await vm_ping(lab, "node-1", "vm200", "169.254.100.2")


async def test_vlan200_and_untagged_vms_on_one_bridge_are_isolated(lab: Lab) -> None:
    # Same IP subnet on both, so only the VLANs can keep them apart.
    await vm_address(lab, "node-1", "vm200", "169.254.50.201/24")
    await vm_address(lab, "node-2", "vm200", "169.254.50.202/24")
    assert await vm_ping(lab, "node-2", "vmu", "169.254.50.1")  # untagged ↔ untagged
    assert not await vm_ping(lab, "node-2", "vmu", "169.254.50.201")  # untagged → VLAN 200
    assert not await vm_ping(lab, "node-2", "vm200", "169.254.50.1")  # VLAN 200 → untagged


async def test_cutting_the_active_bond_port_keeps_traffic_flowing(lab: Lab) -> None:
    active = (await sh(lab, "node-1", "cat", "/sys/class/net/oob-bo/bonding/active_slave")).strip()
    assert active in ("eth1", "eth2")
    await sh(lab, "node-1", "ip", "link", "set", active, "down")
    try:

        async def moved() -> bool:
            now = await sh(lab, "node-1", "cat", "/sys/class/net/oob-bo/bonding/active_slave")
            return now.strip() not in ("", active)

        await until(moved, timeout=60)
        assert await vm_ping(lab, "node-1", "vm200", "169.254.200.2")
        assert await vm_ping(lab, "node-1", "vmu", "169.254.50.3")
    finally:
        await sh(lab, "node-1", "ip", "link", "set", active, "up")


async def test_hand_made_change_shows_up_as_observed_state(lab: Lab, labnc: Client) -> None:
    seen: list[ObservedState] = []

    async def collect(msg: object) -> None:
        seen.append(bus.decode(msg.data, ObservedState))  # type: ignore[attr-defined]

    sub = await labnc.subscribe(subjects.observed("node-3"), cb=collect)
    await bus.settle(labnc)
    await sh(lab, "node-3", "bridge", "vlan", "del", "dev", "oob-bo", "vid", "200")
    try:

        def vid_gone() -> bool:
            return any(
                o.vlans.get("oob-bo") is not None and all(r.vid != 200 for r in o.vlans["oob-bo"])
                for o in seen
            )

        await until(vid_gone, timeout=60)
        # Seen, and not reverted behind anyone's back.
        assert await port_vids(lab, "node-3", "oob-bo") == ["1 PVID untagged"]
    finally:
        await sub.unsubscribe()
    reply = await labnc.request(subjects.executor_control("node-3", "reconcile"), b"", timeout=120)
    assert bus.decode(reply.data, NodeStatus).phase == "Applied"
    assert await port_vids(lab, "node-3", "oob-bo") == ["1 PVID untagged", "200"]


async def test_second_apply_of_the_same_intent_writes_nothing(labnc: Client) -> None:
    statuses = await apply_all(labnc, seed_intent)
    assert_applied(statuses)
    assert {n: s.netlink_writes for n, s in statuses.items()} == {n: 0 for n in NODES}


def storage(node: str) -> HostVlanIntent:
    """A host network on oob, VLAN 300, one 169.254.30.N address per node."""
    return HostVlanIntent(
        name="oob-br.300",
        host_network="storage",
        cluster_network="oob",
        bridge="oob-br",
        vlan=300,
        addresses=[f"169.254.30.{NODES.index(node) + 1}/24"],
    )


async def test_host_networks_and_trunk_vms_carry_traffic_between_nodes(
    lab: Lab, labnc: Client
) -> None:
    def with_storage_and_trunk(node: str, gen: int) -> NodeIntent:
        return seed_intent(
            node, gen, host_vlans=[storage(node)], extra_oob_vids=[300], trunk=(310, 320)
        )

    assert_applied(await apply_all(labnc, with_storage_and_trunk))
    for node in NODES:
        assert await port_vids(lab, node, "oob-bo") == [
            "1 PVID untagged",
            "200",
            "300",
            "310-320",
        ]
        assert "300" in await port_vids(lab, node, "oob-br")  # the bridge's own (self) VID
    # Host interfaces on VLAN 300 reach each other across the lab switch.
    assert await vm_ping_host(lab, "node-1", "169.254.30.2")
    # The trunk VM's port carries exactly 310-320, tagged (bridge CNI ignored vlanTrunk and
    # left VID 1 untagged); a VLAN inside the VMs passes between nodes.
    out = json.loads(await sh(lab, "node-1", "bridge", "-j", "vlan", "show"))
    veths = [e["ifname"] for e in out if e["ifname"].startswith("veth")]
    trunk_ports = [v for v in veths if (await port_vids(lab, "node-1", v))[0].startswith("310")]
    assert len(trunk_ports) == 1
    assert await port_vids(lab, "node-1", trunk_ports[0]) == ["310-320"]
    for i, node in enumerate(("node-1", "node-2"), start=1):
        in_vm = ["ip", "netns", "exec", "vmt", "ip"]
        await sh(lab, node, *in_vm, "link", "set", "eth0", "up")
        await sh(
            lab,
            node,
            *in_vm,
            "link",
            "add",
            "link",
            "eth0",
            "name",
            "v315",
            "type",
            "vlan",
            "id",
            "315",
        )
        await sh(lab, node, *in_vm, "addr", "add", f"169.254.31.{i}/24", "dev", "v315")
        await sh(lab, node, *in_vm, "link", "set", "v315", "up")
    assert await vm_ping(lab, "node-1", "vmt", "169.254.31.2")


async def vm_ping_host(lab: Lab, node: str, address: str) -> bool:
    """ICMP from the node itself (its root namespace inside the guest)."""
    assert address.startswith("169.254.")
    rc, _, _ = await lab.aexec(node, ["ping", "-c", "3", "-i", "0.3", "-W", "2", address])
    return rc == 0


async def test_changing_a_networks_vlan_moves_the_vids_on_every_node(
    lab: Lab, labnc: Client
) -> None:
    assert_applied(await apply_all(labnc, lambda n, g: seed_intent(n, g, vlan200=210)))
    for node in NODES:
        assert await port_vids(lab, node, "oob-bo") == ["1 PVID untagged", "210"]
        # The host network and the trunk VM of the previous generation are gone.
        links = json.loads(await sh(lab, node, "ip", "-j", "link", "show"))
        assert "oob-br.300" not in {link["ifname"] for link in links}
        assert "vmt" not in await sh(lab, node, "ip", "netns", "list")
        assert await port_vids(lab, node, "oob-br") == ["1 PVID untagged"]
    for i, node in enumerate(NODES, start=1):
        await vm_address(lab, node, "vm200", f"169.254.200.{i}/24")
    assert await vm_ping(lab, "node-1", "vm200", "169.254.200.3")


async def test_a_bond_mode_change_is_applied(lab: Lab, labnc: Client) -> None:
    assert_applied(
        await apply_all(labnc, lambda n, g: seed_intent(n, g, vlan200=210, mode="balance-xor"))
    )
    for node in NODES:
        mode = await sh(lab, node, "cat", "/sys/class/net/oob-bo/bonding/mode")
        assert mode.split()[0] == "balance-xor"
        slaves = await sh(lab, node, "cat", "/sys/class/net/oob-bo/bonding/slaves")
        assert sorted(slaves.split()) == ["eth1", "eth2"]
        assert await port_vids(lab, node, "oob-bo") == ["1 PVID untagged", "210"]
    assert_applied(await apply_all(labnc, lambda n, g: seed_intent(n, g, vlan200=210)))
    assert await vm_ping(lab, "node-2", "vmu", "169.254.50.1")


async def test_bond_options_are_applied_and_read_back(lab: Lab, labnc: Client) -> None:
    options = {"miimon": 200, "primary": "eth2"}
    assert_applied(
        await apply_all(labnc, lambda n, g: seed_intent(n, g, vlan200=210, bond_options=options))
    )
    for node in NODES:
        bonding = "/sys/class/net/oob-bo/bonding"
        assert (await sh(lab, node, "cat", f"{bonding}/miimon")).strip() == "200"
        assert (await sh(lab, node, "cat", f"{bonding}/primary")).strip() == "eth2"
        assert (await sh(lab, node, "cat", f"{bonding}/active_slave")).strip() == "eth2"
    statuses = await apply_all(
        labnc, lambda n, g: seed_intent(n, g, vlan200=210, bond_options=options)
    )
    assert {n: s.netlink_writes for n, s in statuses.items()} == {n: 0 for n in NODES}


async def test_a_cluster_network_mtu_reaches_bond_nics_and_bridge(lab: Lab, labnc: Client) -> None:
    assert_applied(await apply_all(labnc, lambda n, g: seed_intent(n, g, vlan200=210, mtu=1400)))
    for node in NODES:
        links = {
            link["ifname"]: link
            for link in json.loads(await sh(lab, node, "ip", "-j", "link", "show"))
        }
        assert {name: links[name]["mtu"] for name in ("eth1", "eth2", "oob-bo", "oob-br")} == {
            "eth1": 1400,
            "eth2": 1400,
            "oob-bo": 1400,
            "oob-br": 1400,
        }
    assert await vm_ping(lab, "node-1", "vmu", "169.254.50.2")


async def test_a_failure_at_a_step_rolls_back_to_the_exact_prior_state(
    lab: Lab, labnc: Client
) -> None:
    before = await full_dump(lab, "node-1")
    bridge_vlans = await sh(lab, "node-1", "bridge", "-j", "vlan", "show")
    # VID 300 goes on the uplink and on oob-br first; then the host VLAN interface asks for
    # an MTU above its bridge's, which the kernel refuses.
    too_big = HostVlanIntent(
        name="oob-br.300",
        host_network="storage",
        cluster_network="oob",
        bridge="oob-br",
        vlan=300,
        addresses=["169.254.30.1/24"],
        mtu=9000,
    )

    def failing(node: str, gen: int) -> NodeIntent:
        return seed_intent(node, gen, vlan200=210, host_vlans=[too_big], extra_oob_vids=[300])

    status = (await apply_all(labnc, failing, nodes=["node-1"]))["node-1"]
    assert status.phase == "RolledBack", f"{status.phase}: {status.error}"
    assert status.error and "oob-br.300" in status.error
    applied = [r for r in status.results if r.ok and r.action.startswith("vlan.add")]
    assert applied, "the failure came after earlier steps had changed the kernel"
    assert await full_dump(lab, "node-1") == before
    assert await sh(lab, "node-1", "bridge", "-j", "vlan", "show") == bridge_vlans


async def test_deleting_a_network_removes_its_vids_and_cni_ports(lab: Lab, labnc: Client) -> None:
    assert_applied(await apply_all(labnc, lambda n, g: seed_intent(n, g, vlan200=None)))
    for node in NODES:
        assert await port_vids(lab, node, "oob-bo") == ["1 PVID untagged"]
        namespaces = await sh(lab, node, "ip", "netns", "list")
        assert "vm200" not in namespaces and "vmu" in namespaces
        out = json.loads(await sh(lab, node, "bridge", "-j", "vlan", "show"))
        veths = [e for e in out if e["ifname"].startswith("veth")]
        assert len(veths) == 2  # vm100 and vmu only
    assert await vm_ping(lab, "node-3", "vm100", "169.254.100.1")


async def test_deleting_a_cluster_network_removes_its_bond_and_bridge_and_frees_its_nics(
    lab: Lab, labnc: Client
) -> None:
    assert_applied(await apply_all(labnc, mgmt_only_intent))
    for node in NODES:
        links = {
            link["ifname"]: link
            for link in json.loads(await sh(lab, node, "ip", "-j", "link", "show"))
        }
        assert "oob-bo" not in links and "oob-br" not in links
        assert "master" not in links["eth1"] and "master" not in links["eth2"]
        assert links["mgmt-bo"]["master"] == "mgmt-br"
        assert "vmu" not in await sh(lab, node, "ip", "netns", "list")
        assert await port_vids(lab, node, "mgmt-bo") == ["1 PVID untagged", "100"]
    assert await vm_ping(lab, "node-2", "vm100", "169.254.100.1")
