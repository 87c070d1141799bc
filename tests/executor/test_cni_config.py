"""The executor runs only the bridge CNI config l2net generates (no kernel: pure checks).

Every VM NIC the planner compiles passes :func:`shared.domain.l2state.check_cni_config`; every
config the planner cannot produce (another plugin, extra options, another bridge, VLANs that
are not the port's) is refused by :func:`shared.domain.l2state.desired_state` with an error naming
what is wrong, before the executor writes anything.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from services.planner import compiling
from shared.domain.l2state import StateError, check_cni_config, desired_state
from shared.domain.model import NodeIntent, VmPortIntent
from tests.planner.conftest import SEED
from tests.planner.test_compiling import compiled

NETWORKS_AND_NICS = """
---
kind: Network
name: trunk
clusterNetwork: oob
type: L2VlanTrunkNetwork
trunk: [{minID: 300, maxID: 310}, {id: 311}, {id: 50}]
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
name: a-untagged
vm: vm-a
node: node-1
network: untagged-network
---
kind: VmNic
name: a-trunk
vm: vm-a
node: node-1
network: trunk
"""


def _compiled() -> NodeIntent:
    catalog = compiled(SEED.read_text() + NETWORKS_AND_NICS, "node-1")
    return compiling.compile_node(catalog, "node-1", generation=1)


def test_every_config_the_planner_compiles_is_accepted() -> None:
    intent = _compiled()
    assert {p.network for p in intent.vm_ports} == {
        "vlan100",
        "vlan200",
        "untagged-network",
        "trunk",
    }
    for port in intent.vm_ports:
        check_cni_config(port)
    desired, refused = desired_state(intent)
    assert len(desired.vm_ports) == 4 and refused == []


def _port(network: str) -> VmPortIntent:
    return next(p for p in _compiled().vm_ports if p.network == network)


def _changed(network: str, **changes: Any) -> VmPortIntent:
    port = copy.deepcopy(_port(network))
    for key, value in changes.items():
        if value is None:
            del port.cni_config[key]
        else:
            port.cni_config[key] = value
    return port


FOREIGN: list[tuple[str, VmPortIntent, str]] = [
    ("host-device", _changed("vlan200", type="host-device", device="eth0"), "device"),
    ("host-device, only type", _changed("vlan200", type="host-device"), "host-device"),
    ("macvlan", _changed("vlan200", type="macvlan"), "macvlan"),
    ("a path as type", _changed("vlan200", type="../../bin/sh"), "only the bridge plugin"),
    ("ipam", _changed("vlan200", ipam={"type": "dhcp"}), "no addresses"),
    ("isGateway", _changed("vlan200", isGateway=True), "isGateway"),
    ("ipMasq", _changed("vlan200", ipMasq=True), "ipMasq"),
    ("hairpinMode", _changed("vlan200", hairpinMode=True), "hairpinMode"),
    ("mgmt-br from oob", _changed("vlan200", bridge="mgmt-br"), "'oob-br'"),
    ("no bridge", _changed("vlan200", bridge=None), "'oob-br'"),
    ("another VLAN", _changed("vlan200", vlan=100), "200 PVID untagged"),
    ("VLAN 0", _changed("vlan200", vlan=0), "not a VLAN id"),
    ("VLAN as text", _changed("vlan200", vlan="200"), "not a VLAN id"),
    ("vlan and trunk", _changed("vlan200", vlanTrunk=[{"id": 200}]), "both vlan and vlanTrunk"),
    ("VLAN on untagged", _changed("untagged-network", vlan=5), "1 PVID untagged"),
    ("wider trunk", _changed("trunk", vlanTrunk=[{"minID": 2, "maxID": 4094}]), "VLANs"),
    ("bad trunk item", _changed("trunk", vlanTrunk=[{"id": 50, "x": 1}]), "vlanTrunk[0]"),
    ("untagged trunk", _changed("trunk", vlanTrunk=None), "port's VLANs"),
    ("other name", _changed("vlan200", name="vlan100"), "not the network 'vlan200'"),
    ("mtu as text", _changed("vlan200", mtu="9000"), "not an MTU"),
    ("promiscMode as text", _changed("vlan200", promiscMode="yes"), "promiscMode"),
    ("cniVersion", _changed("vlan200", cniVersion="../x"), "cniVersion"),
    ("runtimeConfig", _changed("vlan200", runtimeConfig={"mac": "x"}), "runtimeConfig"),
]


def test_every_foreign_cni_config_is_refused_before_any_write() -> None:
    ok = 0
    for name, port, words in FOREIGN:
        intent = NodeIntent(node="node-1", generation=1, vm_ports=[port])
        try:
            desired_state(intent)
        except StateError as exc:
            if words in str(exc) and f"VM NIC {port.vm}/{port.ifname}" in str(exc):
                ok += 1
            else:
                print(f"{name}: refused, but unclearly: {exc}")
        else:
            print(f"{name}: ACCEPTED")
    print(f"foreign CNI configs refused: {ok}/{len(FOREIGN)}")
    assert ok == len(FOREIGN)


def test_a_port_on_another_cluster_networks_bridge_is_refused() -> None:
    port = copy.deepcopy(_port("vlan200"))
    port.bridge = port.cni_config["bridge"] = "mgmt-br"  # consistent, but not oob's bridge
    with pytest.raises(StateError, match="the bridge of cluster network 'oob' is 'oob-br'"):
        check_cni_config(port)
