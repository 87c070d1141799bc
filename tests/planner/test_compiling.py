"""Compiling: the seed topology and the other kinds, into each node's exact desired state."""

from __future__ import annotations

from services.planner import compiling, manifests
from services.planner.catalog import Catalog
from shared.domain import model
from shared.domain.model import VlanRange
from tests.planner.conftest import catalog_with_nodes

VMS = """
---
kind: VmNic
name: a-vlan100
vm: vm-a
node: node-1
network: vlan100
---
kind: VmNic
name: a-vlan200
vm: vm-a
node: node-1
network: vlan200
---
kind: VmNic
name: b-untagged
vm: vm-b
node: node-2
network: untagged-network
"""


def compiled(text: str, *nodes: str) -> Catalog:
    catalog = catalog_with_nodes(*(nodes or ("node-1", "node-2", "node-3")))
    for i, doc in enumerate(manifests.parse(text)):
        catalog = catalog.with_changes(put=[doc.spec], now=float(i))
    return catalog


def test_seed_topology_compiles_to_harvesters_devices_and_vids(seed_text: str) -> None:
    catalog = compiled(seed_text)
    for node in ("node-1", "node-2", "node-3"):
        intent = compiling.compile_node(catalog, node)
        mgmt, oob = intent.cluster_networks
        # mgmt: built in; only the VIDs of networks placed on it (the seed: mgmt-bo carries 100).
        assert (mgmt.name, mgmt.managed, mgmt.bond) == ("mgmt", False, None)
        assert mgmt.uplink_vlans == [VlanRange(vid=100)]
        # oob: bond of eth1+eth2 under a VLAN-aware bridge, 1 PVID untagged + 200, nothing else.
        assert (oob.bridge, oob.bond_name, oob.managed) == ("oob-br", "oob-bo", True)
        assert oob.bond is not None
        assert oob.bond.ports == ["eth1", "eth2"]
        assert (oob.bond.mode, oob.bond.options) == ("active-backup", {"miimon": 100})
        assert oob.uplink_vlans == [VlanRange(vid=1, pvid=True, untagged=True), VlanRange(vid=200)]
        assert intent.vm_ports == [] and intent.host_vlans == []


def test_vm_ports_get_exact_vids_and_eth_numbering_in_creation_order(seed_text: str) -> None:
    catalog = compiled(seed_text + VMS)
    ports = compiling.compile_node(catalog, "node-1").vm_ports
    assert [(p.vm, p.ifname, p.network, p.bridge) for p in ports] == [
        ("vm-a", "eth0", "vlan100", "mgmt-br"),
        ("vm-a", "eth1", "vlan200", "oob-br"),
    ]
    assert ports[0].vlans == [VlanRange(vid=100, pvid=True, untagged=True)]
    assert ports[0].cni_config["vlan"] == 100
    (untagged,) = compiling.compile_node(catalog, "node-2").vm_ports
    assert untagged.vlans == [VlanRange(vid=1, pvid=True, untagged=True)]
    assert "vlan" not in untagged.cni_config
    assert compiling.compile_node(catalog, "node-3").vm_ports == []


def test_nad_config_has_the_seeds_form(seed_text: str) -> None:
    catalog = compiled(seed_text)
    vlan100 = catalog.get(model.Network, "vlan100")
    untagged = catalog.get(model.Network, "untagged-network")
    assert vlan100 is not None and untagged is not None
    assert compiling.nad_config(catalog, vlan100) == {
        "cniVersion": "0.3.1",
        "name": "vlan100",
        "type": "bridge",
        "bridge": "mgmt-br",
        "promiscMode": True,
        "vlan": 100,
        "ipam": {},
        "mtu": 1500,
    }
    assert compiling.nad_config(catalog, untagged) == {
        "cniVersion": "0.3.1",
        "name": "untagged-network",
        "type": "bridge",
        "bridge": "oob-br",
        "promiscMode": True,
        "ipam": {},
        "mtu": 1500,
    }
    text = compiling.nad_yaml(catalog, vlan100)
    assert "kind: NetworkAttachmentDefinition" in text
    assert "network.harvesterhci.io/vlan-id: '100'" in text
    doc = manifests._load_yaml(text)[0][1]
    import json

    assert json.loads(doc["spec"]["config"]) == compiling.nad_config(catalog, vlan100)


def test_trunk_network_vids_are_merged_ranges_on_uplink_and_port(seed_text: str) -> None:
    text = (
        seed_text
        + """
---
kind: Network
name: trunk
clusterNetwork: oob
type: L2VlanTrunkNetwork
trunk: [{minID: 300, maxID: 310}, {id: 311}, {minID: 200, maxID: 205}, {id: 50}]
---
kind: VmNic
name: t
vm: router
node: node-1
network: trunk
"""
    )
    catalog = compiled(text)
    intent = compiling.compile_node(catalog, "node-1")
    oob = intent.cluster_networks[1]
    assert oob.uplink_vlans == [
        VlanRange(vid=1, pvid=True, untagged=True),
        VlanRange(vid=50),
        VlanRange(vid=200, vid_end=205),
        VlanRange(vid=300, vid_end=311),
    ]
    (port,) = intent.vm_ports
    assert port.vlans == [
        VlanRange(vid=50),
        VlanRange(vid=200, vid_end=205),
        VlanRange(vid=300, vid_end=311),
    ]
    assert port.cni_config["vlanTrunk"] == [
        {"id": 50},
        {"minID": 200, "maxID": 205},
        {"minID": 300, "maxID": 311},
    ]


def test_vids_never_leak_to_another_cluster_network(seed_text: str) -> None:
    text = (
        seed_text.replace("nics: [eth1, eth2]", "nics: [eth1]")
        + """
---
kind: ClusterNetwork
name: data
---
kind: VlanConfig
name: data-all
clusterNetwork: data
uplink: {nics: [eth2], linkAttributes: {mtu: 9000}}
---
kind: Network
name: storage
clusterNetwork: data
vlan: 300
"""
    )
    intent = compiling.compile_node(compiled(text), "node-1")
    by_name = {cn.name: cn for cn in intent.cluster_networks}
    assert [v.vid for v in by_name["oob"].uplink_vlans] == [1, 200]
    assert [v.vid for v in by_name["data"].uplink_vlans] == [1, 300]
    assert [v.vid for v in by_name["mgmt"].uplink_vlans] == [100]
    assert by_name["data"].mtu == 9000
    assert by_name["data"].bond is not None and by_name["data"].bond.mtu == 9000


def test_node_selector_places_cluster_networks_and_host_interfaces(seed_text: str) -> None:
    text = (
        seed_text.replace("uplink:", "nodeSelector: {kubernetes.io/hostname: node-1}\nuplink:")
        + """
---
kind: HostNetwork
name: storage-host
clusterNetwork: oob
vlan: 30
ips: {node-1: 169.254.30.1/16}
"""
    )
    catalog = compiled(text)
    one = compiling.compile_node(catalog, "node-1")
    two = compiling.compile_node(catalog, "node-2")
    assert [cn.name for cn in one.cluster_networks] == ["mgmt", "oob"]
    assert [cn.name for cn in two.cluster_networks] == ["mgmt"]
    (hv,) = one.host_vlans
    assert (hv.name, hv.bridge, hv.vlan, hv.addresses) == (
        "oob-br.30",
        "oob-br",
        30,
        ["169.254.30.1/16"],
    )
    assert [v.vid for v in one.cluster_networks[1].uplink_vlans] == [1, 30, 200]
    assert two.host_vlans == []


def test_bond_options_use_kernel_names(seed_text: str) -> None:
    text = seed_text.replace(
        "    mode: active-backup\n    miimon: 100\n",
        "    mode: 802.3ad\n    miimon: 100\n    lacpRate: fast\n    xmitHashPolicy: layer3+4\n",
    )
    oob = compiling.compile_node(compiled(text), "node-1").cluster_networks[1]
    assert oob.bond is not None
    assert oob.bond.mode == "802.3ad"
    assert oob.bond.options == {"miimon": 100, "lacp_rate": "fast", "xmit_hash_policy": "layer3+4"}


def test_switch_config_follows_the_seeds_table(seed_text: str) -> None:
    catalog = compiled(seed_text)
    mgmt, oob = compiling.switch_config(catalog, "node-1")
    assert (oob.nics, oob.bond_mode, oob.link_aggregation) == (
        ["eth1", "eth2"],
        "active-backup",
        "none",
    )
    assert (oob.port_mode, oob.allowed_vlans) == ("hybrid", "200")
    assert (mgmt.nics, mgmt.allowed_vlans) == (["eth0"], "100")
    lacp = compiled(seed_text.replace("mode: active-backup", "mode: 802.3ad"))
    assert compiling.switch_config(lacp, "node-1")[1].link_aggregation == "LACP"


def test_merge_ranges() -> None:
    assert compiling.merge_ranges([(100, 100), (101, 105), (7, 7), (5, 6)]) == [(5, 7), (100, 105)]
    assert compiling.merge_ranges([]) == []
