"""Validation: every rule, table-driven; each bad input names its object and field."""

from __future__ import annotations

import pytest

from services.planner import manifests, validation
from services.planner.catalog import Catalog
from tests.planner.conftest import catalog_with_nodes, make_node

BASE = """
kind: ClusterNetwork
name: oob
---
kind: VlanConfig
name: oob-all
clusterNetwork: oob
uplink: {nics: [eth1, eth2]}
---
kind: Network
name: vlan200
clusterNetwork: oob
vlan: 200
"""


def object_problems(text: str) -> list[str]:
    """Problems of each object alone: a value outside the vocabulary (refused by the reader,
    in the same words) or any rule of :func:`validation.check_object`."""
    try:
        docs = manifests.parse(text)
    except manifests.ManifestError as exc:
        return [str(p) for p in exc.problems]
    return [str(p) for d in docs for p in validation.check_object(d.spec)]


def vc(bond: str = "", link: str = "", nics: str = "[eth1, eth2]", cn: str = "oob") -> str:
    return (
        f"kind: VlanConfig\nname: v\nclusterNetwork: {cn}\nuplink:\n  nics: {nics}\n"
        f"  bondOptions: {{{bond}}}\n  linkAttributes: {{{link}}}\n"
    )


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        # names
        ("kind: ClusterNetwork\nname: Oob\n", "name", "not a lowercase RFC 1123 label"),
        ("kind: ClusterNetwork\nname: abcdefghijklm\n", "name", "limit is 12"),
        ("kind: ClusterNetwork\nname: mgmt\n", "name", "built-in cluster network"),
        ("kind: Network\nname: n-\nclusterNetwork: oob\nvlan: 1\n", "name", "RFC 1123"),
        (
            "kind: Network\nname: " + "a" * 64 + "\nclusterNetwork: oob\nvlan: 1\n",
            "name",
            "limit is 63",
        ),
        # VLAN IDs and trunks
        ("kind: Network\nname: n\nclusterNetwork: oob\nvlan: 0\n", "vlan", "out of range 1-4094"),
        ("kind: Network\nname: n\nclusterNetwork: oob\nvlan: 4095\n", "vlan", "out of range"),
        ("kind: Network\nname: n\nclusterNetwork: oob\n", "vlan", "required"),
        (
            "kind: Network\nname: n\nclusterNetwork: oob\ntype: UntaggedNetwork\nvlan: 5\n",
            "vlan",
            "no VLAN ID",
        ),
        (
            "kind: Network\nname: n\nclusterNetwork: oob\ntype: L2VlanTrunkNetwork\n",
            "trunk",
            "at least one",
        ),
        (
            "kind: Network\nname: n\nclusterNetwork: oob\ntype: L2VlanTrunkNetwork\n"
            "trunk: [{minID: 300, maxID: 200}]\n",
            "trunk[0]",
            "greater than maxID",
        ),
        (
            "kind: Network\nname: n\nclusterNetwork: oob\ntype: L2VlanTrunkNetwork\n"
            "trunk: [{minID: 3, maxID: 5000}]\n",
            "trunk[0].maxID",
            "out of range",
        ),
        (
            "kind: Network\nname: n\nclusterNetwork: oob\ntype: L2VlanTrunkNetwork\n"
            "trunk: [{minID: 3}]\n",
            "trunk[0]",
            "needs both",
        ),
        ("kind: Network\nname: n\nclusterNetwork: oob\ntype: Overlay\n", "type", "unknown network"),
        # MTU and link attributes
        (vc(link="mtu: 500"), "uplink.linkAttributes.mtu", "out of range"),
        (vc(link="mtu: 9001"), "uplink.linkAttributes.mtu", "out of range"),
        (vc(link="hardwareAddr: zz"), "uplink.linkAttributes.hardwareAddr", "not a MAC"),
        (vc(link="txQLen: -5"), "uplink.linkAttributes.txQLen", "must be >= 0"),
        # bond options the kernel refuses for the mode
        (vc(bond="mode: bogus"), "uplink.bondOptions.mode", "unknown bond mode"),
        (
            vc(bond="mode: active-backup, lacpRate: fast"),
            "uplink.bondOptions.lacpRate",
            "only to mode 802.3ad",
        ),
        (vc(bond="mode: 802.3ad, lacpRate: quick"), "uplink.bondOptions.lacpRate", "not one of"),
        (vc(bond="mode: 802.3ad, primary: eth1"), "uplink.bondOptions.primary", "only to modes"),
        (
            vc(bond="mode: active-backup, primary: eth9"),
            "uplink.bondOptions.primary",
            "not one of the uplink's NICs",
        ),
        (
            vc(bond="miimon: 100, arpInterval: 100, arpIpTargets: [169.254.0.1]"),
            "uplink.bondOptions.arpInterval",
            "cannot both be set",
        ),
        (
            vc(bond="mode: 802.3ad, arpInterval: 100, arpIpTargets: [169.254.0.1]"),
            "uplink.bondOptions.arpInterval",
            "not supported in mode 802.3ad",
        ),
        (vc(bond="arpInterval: 100"), "uplink.bondOptions.arpIpTargets", "needs at least one"),
        (
            vc(bond="arpInterval: 100, arpIpTargets: [nope]"),
            "uplink.bondOptions.arpIpTargets[0]",
            "not an IPv4",
        ),
        (vc(bond="updelay: 200"), "uplink.bondOptions.updelay", "needs miimon"),
        (vc(bond="miimon: 100, downdelay: 150"), "uplink.bondOptions.downdelay", "not a multiple"),
        (
            vc(bond="mode: active-backup, xmitHashPolicy: layer3+4"),
            "uplink.bondOptions.xmitHashPolicy",
            "only to modes",
        ),
        (vc(bond="mode: 802.3ad, adSelect: best"), "uplink.bondOptions.adSelect", "not one of"),
        (vc(bond="arpValidate: all"), "uplink.bondOptions.arpValidate", "needs arpInterval"),
        # NICs
        (vc(nics="[]"), "uplink.nics", "at least one NIC"),
        (vc(nics="[eth1, eth1]"), "uplink.nics[1]", "listed twice"),
        (vc(nics="[averyveryverylongnic]"), "uplink.nics[0]", "not a valid interface name"),
        # mgmt is built in
        (vc(cn="mgmt"), "clusterNetwork", "built in; no VlanConfig"),
        # host networks
        (
            "kind: HostNetwork\nname: h\nclusterNetwork: abcdefghijkl\nvlan: 100\n",
            "vlan",
            "Linux allows 15",
        ),
        (
            "kind: HostNetwork\nname: h\nclusterNetwork: oob\nvlan: 10\n"
            "ips: {node-1: 10.0.0.300/24}\n",
            "ips.node-1",
            "not an address",
        ),
        (
            "kind: HostNetwork\nname: h\nclusterNetwork: oob\nvlan: 10\nips: {node-1: 10.0.0.3}\n",
            "ips.node-1",
            "needs a prefix length",
        ),
        (
            "kind: HostNetwork\nname: h\nclusterNetwork: oob\nvlan: 10\nmode: dhcp\n",
            "mode",
            "only mode static",
        ),
        # VM NICs and selectors
        (
            "kind: VmNic\nname: n\nvm: vm1\nnode: node-1\nnetwork: x\nmac: 52:54:0\n",
            "mac",
            "not a MAC",
        ),
        ("kind: VmNic\nname: n\nvm: VM_1\nnode: node-1\nnetwork: x\n", "vm", "RFC 1123"),
        ("kind: VmNic\nname: n\nvm: vm1\nnode: planner\nnetwork: x\n", "node", "reserved"),
        (
            '{"kind": "Network", "name": "n\\n", "clusterNetwork": "oob", "vlan": 1}',
            "name",
            "RFC 1123",
        ),
        (
            "kind: VlanConfig\nname: v\nclusterNetwork: oob\nnodeSelector: {'a/b/c': x}\n"
            "uplink: {nics: [eth1]}\n",
            "nodeSelector.a/b/c",
            "invalid prefix",
        ),
    ],
)
def test_object_rule(text: str, field: str, message: str) -> None:
    problems = object_problems(text)
    assert any(f": {field}: " in p and message in p for p in problems), problems


def test_valid_objects_pass(seed_text: str) -> None:
    assert object_problems(seed_text) == []
    ok_vc = vc(
        bond="mode: 802.3ad, miimon: 100, updelay: 200, lacpRate: fast, "
        "xmitHashPolicy: layer3+4, adSelect: bandwidth",
        link="mtu: 9000, txQLen: 1000",
    )
    assert object_problems(ok_vc) == []


def catalog_problems(text: str, catalog: Catalog | None = None) -> list[str]:
    catalog = catalog if catalog is not None else catalog_with_nodes("node-1", "node-2")
    catalog = catalog.with_changes(put=[d.spec for d in manifests.parse(text)])
    return [str(p) for p in validation.check_catalog(catalog)]


def test_seed_is_consistent(seed_text: str) -> None:
    assert catalog_problems(seed_text) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "kind: Network\nname: n\nclusterNetwork: nope\nvlan: 5\n",
            "Network n: clusterNetwork: cluster network 'nope' does not exist",
        ),
        (
            "kind: VlanConfig\nname: v2\nclusterNetwork: nope\nuplink: {nics: [eth1]}\n",
            "cluster network 'nope' does not exist",
        ),
        # two VlanConfigs of one cluster network select the same node
        (
            "kind: VlanConfig\nname: oob-n1\nclusterNetwork: oob\n"
            "nodeSelector: {kubernetes.io/hostname: node-1}\nuplink: {nics: [eth1]}\n",
            "node node-1 is also selected by VlanConfig oob-n1 of cluster network oob",
        ),
        # one NIC claimed by two cluster networks on one node
        (
            "kind: ClusterNetwork\nname: data\n---\nkind: VlanConfig\nname: data-all\n"
            "clusterNetwork: data\nuplink: {nics: [eth2]}\n",
            "NIC eth2 of node node-1 is in the uplink of VlanConfig data-all of cluster "
            "network data and of VlanConfig oob-all of cluster network oob",
        ),
        # mgmt's NIC claimed by another cluster network
        (
            "kind: ClusterNetwork\nname: data\n---\nkind: VlanConfig\nname: data-all\n"
            "clusterNetwork: data\nuplink: {nics: [eth0]}\n",
            "is in the uplink of the management cluster network mgmt (mgmt-bo)",
        ),
        (
            "kind: ClusterNetwork\nname: data\n---\nkind: VlanConfig\nname: data-all\n"
            "clusterNetwork: data\nuplink: {nics: [eth7]}\n",
            "node node-1 has no NIC 'eth7'",
        ),
        # MTU equality across VlanConfigs of one cluster network
        (
            "kind: VlanConfig\nname: oob-x\nclusterNetwork: oob\nnodeSelector: {rack: x}\n"
            "uplink: {nics: [eth1], linkAttributes: {mtu: 9000}}\n",
            "must use one MTU (1500 in oob-all; 9000 in oob-x)",
        ),
        (
            "kind: VmNic\nname: n\nvm: vm1\nnode: node-9\nnetwork: vlan200\n",
            "node 'node-9' is not registered",
        ),
        (
            "kind: VmNic\nname: n\nvm: vm1\nnode: node-1\nnetwork: nope\n",
            "network 'nope' does not exist",
        ),
        (
            "kind: VmNic\nname: a\nvm: vm1\nnode: node-1\nnetwork: vlan200\n---\n"
            "kind: VmNic\nname: b\nvm: vm1\nnode: node-2\nnetwork: vlan200\n",
            "VM vm1 already has a NIC on node node-1",
        ),
        (
            "kind: HostNetwork\nname: h1\nclusterNetwork: oob\nvlan: 30\n---\n"
            "kind: HostNetwork\nname: h2\nclusterNetwork: oob\nvlan: 30\n",
            "host network h1 already uses VLAN 30",
        ),
        (
            "kind: HostNetwork\nname: h1\nclusterNetwork: oob\nvlan: 30\nnodeSelector: {rack: a}\n"
            "ips: {node-1: 169.254.9.1/16}\n",
            "node node-1 is not selected by nodeSelector",
        ),
    ],
)
def test_catalog_rule(seed_text: str, extra: str, message: str) -> None:
    problems = catalog_problems(seed_text + "---\n" + extra)
    assert any(message in p for p in problems), problems


def test_vm_nic_on_a_node_outside_the_cluster_network(seed_text: str) -> None:
    text = seed_text.replace("uplink:", "nodeSelector: {kubernetes.io/hostname: node-1}\nuplink:")
    problems = catalog_problems(
        text + "---\nkind: VmNic\nname: n\nvm: vm2\nnode: node-2\nnetwork: vlan200\n"
    )
    assert any("node node-2 is not in cluster network oob" in p for p in problems), problems


def test_host_network_on_the_management_vlan_is_refused() -> None:
    node = make_node("node-1")
    node.mgmt_vlan = 2011
    catalog = Catalog().with_node(node)
    problems = catalog_problems(
        "kind: HostNetwork\nname: h\nclusterNetwork: mgmt\nvlan: 2011\n", catalog
    )
    assert any("management VLAN of node node-1" in p for p in problems), problems


@pytest.mark.parametrize(
    ("kind", "name", "message"),
    [
        ("ClusterNetwork", "mgmt", "cannot be deleted"),
        ("ClusterNetwork", "oob", "still in use by VlanConfig oob-all, Network vlan200"),
        ("Network", "vlan200", "still in use by VmNic nic"),
        ("Network", "absent", "not found"),
        ("Bridge", "x", "unknown kind"),
    ],
)
def test_delete_rule(kind: str, name: str, message: str) -> None:
    catalog = catalog_with_nodes("node-1").with_changes(
        put=[
            d.spec
            for d in manifests.parse(
                BASE + "---\nkind: VmNic\nname: nic\nvm: vm1\nnode: node-1\nnetwork: vlan200\n"
            )
        ]
    )
    problems = [str(p) for p in validation.check_delete(catalog, kind, name)]
    assert any(message in p for p in problems), problems


def test_unused_objects_may_be_deleted() -> None:
    catalog = catalog_with_nodes("node-1").with_changes(put=[d.spec for d in manifests.parse(BASE)])
    assert validation.check_delete(catalog, "Network", "vlan200") == []
    assert validation.check_delete(catalog, "VlanConfig", "oob-all") == []
