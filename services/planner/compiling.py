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
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import yaml

from services.planner.catalog import (
    Catalog,
    node_cluster_networks,
    node_labels,
    selects,
    vlan_config_for,
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


def compile_node(catalog: Catalog, node: str, *, generation: int = 0) -> model.NodeIntent:
    """The desired state of one registered node."""
    labels = node_labels(catalog.nodes[node])
    present = node_cluster_networks(catalog, node)
    networks = catalog.all(model.Network)
    host_networks = [
        hn
        for hn in catalog.all(model.HostNetwork)
        if hn.cluster_network in present and selects(hn.node_selector, labels)
    ]

    cns: list[model.ClusterNetworkIntent] = []
    for cn in present:
        vids: list[tuple[int, int]] = []
        for net in networks:
            if net.cluster_network == cn:
                vids.extend(network_vids(net))
        vids.extend((hn.vlan, hn.vlan) for hn in host_networks if hn.cluster_network == cn)
        if cn == model.MGMT:
            cns.append(
                model.ClusterNetworkIntent(
                    name=cn,
                    bridge=bridge_name(cn),
                    bond_name=bond_name(cn),
                    managed=False,
                    bond=None,
                    mtu=DEFAULT_MTU,
                    uplink_vlans=_tagged(merge_ranges(vids)),
                )
            )
            continue
        vc = vlan_config_for(catalog, cn, node)
        assert vc is not None
        bond = _bond_intent(vc, cn)
        uplink = [VlanRange(vid=1, pvid=True, untagged=True)]
        uplink += _tagged(merge_ranges([r for r in vids if r != (1, 1)]))
        cns.append(
            model.ClusterNetworkIntent(
                name=cn,
                bridge=bridge_name(cn),
                bond_name=bond.name,
                managed=True,
                bond=bond,
                mtu=bond.mtu,
                uplink_vlans=uplink,
            )
        )

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

    vm_ports: list[model.VmPortIntent] = []
    nics = [
        (entry.created, entry.spec)
        for entry in catalog.entries_of(model.VmNic.kind)
        if isinstance(entry.spec, model.VmNic) and entry.spec.node == node
    ]
    per_vm: dict[str, int] = {}
    for _, nic in sorted(nics, key=lambda item: (item[1].vm, item[0], item[1].name)):
        assert isinstance(nic, model.VmNic)
        vm_net = catalog.get(model.Network, nic.network)
        if vm_net is None or vm_net.cluster_network not in present:
            continue  # validation refuses this; a node relabelled since is skipped
        net = vm_net
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
                cni_config=nad_config(catalog, net),
            )
        )

    return model.NodeIntent(
        node=node,
        generation=generation,
        cluster_networks=cns,
        host_vlans=host_vlans,
        vm_ports=vm_ports,
    )


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
