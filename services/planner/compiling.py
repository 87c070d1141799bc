"""Compiling: the desired L2 state of each node, and the bridge-CNI config of each network.

Pure functions over a :class:`~services.planner.catalog.Catalog`. What a node gets:

* per cluster network present on it: bond ``<cn>-bo`` of the VlanConfig's NICs under the
  VLAN-aware bridge ``<cn>-br``; the bond carries PVID 1 egress-untagged plus exactly the
  VIDs used by networks and host networks of that cluster network (never all of 2-4094:
  Harvester issue 7650; never another cluster network's VIDs: issue 8067);
* for ``mgmt``: nothing but the VIDs of networks placed on it (its bond and bridge are
  built in and protected);
* host VLAN interfaces ``<cn>-br.<vid>`` of the host networks that select it;
* its VM NICs, numbered eth0, eth1, ... per VM in the order they were created, each with
  the network's CNI config and the port's exact VLANs.

At fleet scale: what nodes share (each cluster network's VIDs and compiled form, each
network's CNI config, the VM NICs by node) is computed once per catalog, so a node costs
its own cluster networks, host networks and VM NICs; and :class:`IncrementalCompiler`
compiles again only the nodes a change may affect (:func:`affected_nodes`), giving what
:func:`compile_all` gives (``tests/planner/test_incremental.py``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import yaml

from services.planner.catalog import (
    Catalog,
    cluster_network_members,
    node_labels,
    node_uplinks,
    selects,
)
from services.planner.validation import host_vlan_ifname
from shared.domain import model
from shared.domain.model import VlanRange
from shared.domain.vocabulary import DEFAULT_MTU, LINK_AGGREGATION, bridge_cni_config
from shared.wire import api

KERNEL_BOND_OPTIONS: tuple[tuple[str, str], ...] = (
    ("miimon", "miimon"),
    ("updelay", "updelay"),
    ("downdelay", "downdelay"),
    ("arp_interval", "arp_interval"),
    ("arp_ip_targets", "arp_ip_target"),
    ("arp_validate", "arp_validate"),
    ("lacp_rate", "lacp_rate"),
    ("ad_select", "ad_select"),
    ("xmit_hash_policy", "xmit_hash_policy"),
    ("primary", "primary"),
)
"""BondOptions attribute → the kernel's option name (as in /sys/class/net/<bond>/bonding)."""


def bridge_name(cluster_network: str) -> str:
    return f"{cluster_network}-br"


def bond_name(cluster_network: str) -> str:
    return f"{cluster_network}-bo"


def merge_ranges(vids: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, merged, inclusive ranges: [(100,100),(101,105),(7,7)] → [(7,7),(100,105)]."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(vids):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _tagged(ranges: list[tuple[int, int]]) -> list[VlanRange]:
    return [VlanRange(vid=lo, vid_end=hi if hi != lo else 0) for lo, hi in ranges]


def network_vids(net: model.Network) -> list[tuple[int, int]]:
    """VIDs a network puts on its uplink (an untagged network rides the PVID, VID 1)."""
    if net.type == "L2VlanNetwork" and net.vlan is not None:
        return [(net.vlan, net.vlan)]
    if net.type == "L2VlanTrunkNetwork":
        return merge_ranges([r.bounds() for r in net.trunk])
    return []


def port_vlans(net: model.Network) -> list[VlanRange]:
    """The exact VLAN entries of a VM port on this network."""
    if net.type == "L2VlanNetwork" and net.vlan is not None:
        return [VlanRange(vid=net.vlan, pvid=True, untagged=True)]
    if net.type == "UntaggedNetwork":
        return [VlanRange(vid=1, pvid=True, untagged=True)]
    return _tagged(network_vids(net))


def cluster_network_mtu(catalog: Catalog, cluster_network: str) -> int:
    vc = catalog.first_vlan_config(cluster_network)
    return (vc.uplink.link_attributes.mtu or DEFAULT_MTU) if vc is not None else DEFAULT_MTU


def nad_config(catalog: Catalog, net: model.Network) -> dict[str, Any]:
    """The bridge CNI config Multus would be given for this network (the seed's form)."""
    config = bridge_cni_config(network=net.name, bridge=bridge_name(net.cluster_network))
    config["promiscMode"] = True
    if net.type == "L2VlanNetwork":
        config["vlan"] = net.vlan
    elif net.type == "L2VlanTrunkNetwork":
        config["vlanTrunk"] = [
            {"id": lo} if lo == hi else {"minID": lo, "maxID": hi} for lo, hi in network_vids(net)
        ]
    config["ipam"] = {}
    config["mtu"] = cluster_network_mtu(catalog, net.cluster_network)
    return config


def nad_yaml(catalog: Catalog, net: model.Network, *, namespace: str = "default") -> str:
    """The Multus NetworkAttachmentDefinition around :func:`nad_config`, as Harvester labels it."""
    labels = {
        "network.harvesterhci.io/clusternetwork": net.cluster_network,
        "network.harvesterhci.io/type": net.type,
    }
    if net.type == "L2VlanNetwork":
        labels["network.harvesterhci.io/vlan-id"] = str(net.vlan)
    doc = {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": net.name, "namespace": namespace, "labels": labels},
        "spec": {"config": json.dumps(nad_config(catalog, net), indent=2)},
    }
    return yaml.dump(doc, Dumper=_LiteralDumper, sort_keys=False)


class _LiteralDumper(yaml.SafeDumper):
    """Writes multi-line strings (the CNI config JSON) as readable ``|`` blocks."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _str_representer)


def _bond_intent(vc: model.VlanConfig, cluster_network: str) -> model.BondIntent:
    bo = vc.uplink.bond_options
    options: dict[str, Any] = {}
    for attr, kernel in KERNEL_BOND_OPTIONS:
        value = getattr(bo, attr)
        if value is None or value == []:
            continue
        options[kernel] = list(value) if isinstance(value, list) else value
    la = vc.uplink.link_attributes
    return model.BondIntent(
        name=bond_name(cluster_network),
        ports=list(vc.uplink.nics),
        mode=bo.mode,
        options=options,
        mtu=la.mtu or DEFAULT_MTU,
        txqlen=la.tx_q_len,
        hwaddr=la.hardware_addr,
    )


@dataclass(frozen=True)
class _Parts:
    """What every node of a catalog shares, computed once per catalog (:meth:`Catalog.memo`),
    so that compiling a node looks only at its own cluster networks, host networks and VM
    NICs, never at every network or every catalog item."""

    network_vids: dict[str, list[tuple[int, int]]]
    """Per cluster network, the VIDs its networks put on the uplink (networks in name order)."""
    vm_nics: dict[str, list[tuple[float, model.VmNic]]]
    """Per node, its VM NICs with their creation times."""
    host_networks: list[model.HostNetwork]
    mgmt_vlans: list[VlanRange]
    """mgmt's uplink VLANs on a node with no host network on mgmt."""
    uplink_vlans: dict[str, list[VlanRange]] = field(default_factory=dict)
    """Per managed cluster network, its uplink VLANs on a node with no host network on it."""
    bonds: dict[str, model.BondIntent] = field(default_factory=dict)
    """Per VlanConfig, its bond (filled as nodes are compiled)."""
    cni_configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per network, the CNI config of its VM ports (filled as nodes are compiled)."""
    cluster_networks: dict[str, model.ClusterNetworkIntent] = field(default_factory=dict)
    """Per VlanConfig, its cluster network on a node with no host network on it (filled as
    nodes are compiled)."""

    @classmethod
    def of(cls, catalog: Catalog) -> _Parts:
        return catalog.memo("compiling.parts", lambda: cls._make(catalog))

    @classmethod
    def _make(cls, catalog: Catalog) -> _Parts:
        vids: dict[str, list[tuple[int, int]]] = {}
        for net in catalog.all(model.Network):
            vids.setdefault(net.cluster_network, []).extend(network_vids(net))
        nics: dict[str, list[tuple[float, model.VmNic]]] = {}
        for entry in catalog.entries_of(model.VmNic.kind):
            if isinstance(entry.spec, model.VmNic):
                nics.setdefault(entry.spec.node, []).append((entry.created, entry.spec))
        parts = cls(
            network_vids=vids,
            vm_nics=nics,
            host_networks=catalog.all(model.HostNetwork),
            mgmt_vlans=_tagged(merge_ranges(vids.get(model.MGMT, []))),
        )
        for cn, found in vids.items():
            parts.uplink_vlans[cn] = _managed_uplink(found)
        return parts

    def managed(self, cluster_network: str, vc: model.VlanConfig) -> model.ClusterNetworkIntent:
        """A managed cluster network as every node whose uplink is ``vc`` and that has no
        host network on it gets it (one object, shared)."""
        found = self.cluster_networks.get(vc.name)
        if found is None:
            uplink = self.uplink_vlans.get(cluster_network) or _managed_uplink([])
            found = _managed(cluster_network, self.bond(vc, cluster_network), uplink)
            self.cluster_networks[vc.name] = found
        return found

    def bond(self, vc: model.VlanConfig, cluster_network: str) -> model.BondIntent:
        bond = self.bonds.get(vc.name)
        if bond is None:
            bond = self.bonds[vc.name] = _bond_intent(vc, cluster_network)
        return bond

    def cni_config(self, catalog: Catalog, net: model.Network) -> dict[str, Any]:
        config = self.cni_configs.get(net.name)
        if config is None:
            config = self.cni_configs[net.name] = nad_config(catalog, net)
        return config


def _managed(
    cluster_network: str, bond: model.BondIntent, uplink: list[VlanRange]
) -> model.ClusterNetworkIntent:
    return model.ClusterNetworkIntent(
        name=cluster_network,
        bridge=bridge_name(cluster_network),
        bond_name=bond.name,
        managed=True,
        bond=bond,
        mtu=bond.mtu,
        uplink_vlans=uplink,
    )


def _managed_uplink(vids: list[tuple[int, int]]) -> list[VlanRange]:
    """A managed cluster network's bond: PVID 1 egress-untagged, then the tagged VIDs."""
    uplink = [VlanRange(vid=1, pvid=True, untagged=True)]
    uplink += _tagged(merge_ranges([r for r in vids if r != (1, 1)]))
    return uplink


def compile_node(catalog: Catalog, node: str, *, generation: int = 0) -> model.NodeIntent:
    """The desired state of one registered node.

    Parts of it may be shared with other nodes' intents compiled from the same catalog (a
    cluster network's uplink VLANs, a network's CNI config): never change an intent in
    place (``msgspec.structs.replace`` it).
    """
    parts = _Parts.of(catalog)
    labels = node_labels(catalog.nodes[node])
    uplinks = node_uplinks(catalog, node)
    present = {model.MGMT, *uplinks}
    host_networks = [
        hn
        for hn in parts.host_networks
        if hn.cluster_network in present and selects(hn.node_selector, labels)
    ]
    host_vids: dict[str, list[tuple[int, int]]] = {}
    for hn in host_networks:
        host_vids.setdefault(hn.cluster_network, []).append((hn.vlan, hn.vlan))

    mgmt_vlans = parts.mgmt_vlans
    if model.MGMT in host_vids:
        mgmt_vlans = _tagged(
            merge_ranges(parts.network_vids.get(model.MGMT, []) + host_vids[model.MGMT])
        )
    cns = [
        model.ClusterNetworkIntent(
            name=model.MGMT,
            bridge=bridge_name(model.MGMT),
            bond_name=bond_name(model.MGMT),
            managed=False,
            bond=None,
            mtu=DEFAULT_MTU,
            uplink_vlans=mgmt_vlans,
        )
    ]
    for cn, vc in uplinks.items():
        if cn in host_vids:
            uplink = _managed_uplink(parts.network_vids.get(cn, []) + host_vids[cn])
            cns.append(_managed(cn, parts.bond(vc, cn), uplink))
        else:
            cns.append(parts.managed(cn, vc))

    host_vlans = [
        model.HostVlanIntent(
            name=host_vlan_ifname(hn.cluster_network, hn.vlan),
            host_network=hn.name,
            cluster_network=hn.cluster_network,
            bridge=bridge_name(hn.cluster_network),
            vlan=hn.vlan,
            addresses=[hn.ips[node]] if node in hn.ips else [],
            mtu=cluster_network_mtu(catalog, hn.cluster_network),
        )
        for hn in host_networks
    ]
    return model.NodeIntent(
        node=node,
        generation=generation,
        cluster_networks=cns,
        host_vlans=host_vlans,
        vm_ports=_vm_ports(catalog, parts, parts.vm_nics.get(node, []), present),
    )


def _vm_ports(
    catalog: Catalog,
    parts: _Parts,
    nics: list[tuple[float, model.VmNic]],
    present: set[str],
) -> list[model.VmPortIntent]:
    """A node's VM ports, numbered eth0, eth1, ... per VM in the order they were created."""
    vm_ports: list[model.VmPortIntent] = []
    per_vm: dict[str, int] = {}
    for _, nic in sorted(nics, key=lambda item: (item[1].vm, item[0], item[1].name)):
        net = catalog.get(model.Network, nic.network)
        if net is None or net.cluster_network not in present:
            continue  # validation refuses this; a node relabelled since is skipped
        index = per_vm.get(nic.vm, 0)
        per_vm[nic.vm] = index + 1
        vm_ports.append(
            model.VmPortIntent(
                name=nic.name,
                vm=nic.vm,
                ifname=f"eth{index}",
                network=net.name,
                cluster_network=net.cluster_network,
                bridge=bridge_name(net.cluster_network),
                vlans=port_vlans(net),
                mac=nic.mac,
                cni_config=parts.cni_config(catalog, net),
            )
        )
    return vm_ports


def compile_all(catalog: Catalog) -> dict[str, model.NodeIntent]:
    """Every registered node's desired state (generation 0), by node name."""
    return {node: compile_node(catalog, node) for node in sorted(catalog.nodes)}


def affected_nodes(before: Catalog, after: Catalog) -> set[str]:
    """The nodes whose desired state may differ between two catalogs: a superset of those
    whose :func:`compile_node` differs, found from what changed, not from every node.

    A node that joined, left or changed is affected; so are, for each object that was added,
    removed or changed (its old and its new form, each in its own catalog): a cluster
    network's, a VlanConfig's and a network's nodes (those of its cluster network: its VIDs
    are on their uplinks, a VlanConfig's MTU is its network's CNI config, a network's VM
    NICs are on them), a host network's nodes (those of its cluster network that it
    selects), and a VM NIC's node.
    """
    out = {
        name
        for name in before.nodes.keys() | after.nodes.keys()
        if before.nodes.get(name) != after.nodes.get(name)
    }
    for key in before.entries.keys() | after.entries.keys():
        old, new = before.entries.get(key), after.entries.get(key)
        if old is new or old == new:
            continue
        for catalog, entry in ((before, old), (after, new)):
            if entry is not None:
                out |= _nodes_of(catalog, entry.spec)
    return out


def _nodes_of(catalog: Catalog, spec: model.Spec) -> set[str]:
    """The nodes whose desired state ``spec`` may be part of, in ``catalog``."""
    if isinstance(spec, model.VmNic):
        return {spec.node}
    if isinstance(spec, model.ClusterNetwork):
        return cluster_network_members(catalog, spec.name)
    if isinstance(spec, model.HostNetwork):
        members = cluster_network_members(catalog, spec.cluster_network)
        return {
            name
            for name in members
            if selects(spec.node_selector, node_labels(catalog.nodes[name]))
        }
    if isinstance(spec, model.VlanConfig | model.Network):
        return cluster_network_members(catalog, spec.cluster_network)
    return set(catalog.nodes)  # a kind added later: every node, until it says better


class IncrementalCompiler:
    """Compiles every node of a catalog, recompiling only the nodes a change may affect
    (:func:`affected_nodes`) and reusing the previous intents of the others; what it returns
    equals :func:`compile_all` of the same catalog (``tests/planner/test_incremental.py``)."""

    def __init__(self) -> None:
        self._catalog: Catalog | None = None
        self._intents: dict[str, model.NodeIntent] = {}
        self.recompiled = 0
        """Nodes compiled by the last :meth:`compile` (the benchmarks report it)."""

    def compile(
        self,
        catalog: Catalog,
        *,
        each: Callable[[str, Callable[[], model.NodeIntent]], model.NodeIntent] | None = None,
    ) -> dict[str, model.NodeIntent]:
        """Every registered node's intent (generation 0): do not change them in place.

        ``each(node, make)``, if given, is called for each node compiled and returns
        ``make()`` (the planner traces each node's compilation with it)."""
        if self._catalog is None:
            todo = set(catalog.nodes)
        elif catalog is self._catalog:
            todo = set()
        else:
            todo = affected_nodes(self._catalog, catalog)
        intents: dict[str, model.NodeIntent] = {}
        self.recompiled = 0
        for node in sorted(catalog.nodes):
            previous = self._intents.get(node)
            if previous is None or node in todo:
                make = functools.partial(compile_node, catalog, node)
                previous = each(node, make) if each is not None else make()
                self.recompiled += 1
            intents[node] = previous
        self._catalog, self._intents = catalog, intents
        return dict(intents)


def same_desired_state(a: model.NodeIntent, b: model.NodeIntent) -> bool:
    """Equal apart from bookkeeping (generation, revision, time, signature)."""
    return (a.cluster_networks, a.host_vlans, a.vm_ports) == (
        b.cluster_networks,
        b.host_vlans,
        b.vm_ports,
    )


def switch_config(catalog: Catalog, node: str) -> list[api.SwitchPort]:
    """Per NIC group of a node: the switch port mode, VIDs and link aggregation needed."""
    intent = compile_node(catalog, node)
    ports: list[api.SwitchPort] = []
    for cn in intent.cluster_networks:
        tagged = [v for v in cn.uplink_vlans if not v.pvid]
        vids = ",".join(str(v.vid) if not v.vid_end else f"{v.vid}-{v.vid_end}" for v in tagged)
        mode: str
        if cn.bond is not None:
            nics, mode, lag = cn.bond.ports, cn.bond.mode, LINK_AGGREGATION[cn.bond.mode]
            native = "untagged (PVID 1)"
            port_mode = "hybrid" if tagged else "access"
        else:
            nics = [n.name for n in catalog.nodes[node].nics if n.master == bond_name(cn.name)]
            mode, lag, native = "(as installed)", "(as installed)", "(as installed)"
            port_mode = "trunk (add the VLANs)" if tagged else "(as installed)"
        ports.append(
            api.SwitchPort(
                node=node,
                cluster_network=cn.name,
                nics=list(nics),
                bond_mode=mode,
                link_aggregation=lag,
                port_mode=port_mode,
                allowed_vlans=vids or "-",
                native_vlan=native,
            )
        )
    return ports


def intent_json(intent: model.NodeIntent) -> str:
    return json.dumps(msgspec.to_builtins(intent), indent=2)
