"""Validation: every rule a submission must pass, against the whole state it would produce.

:func:`check_object` looks at one object alone (names, ranges, bond options);
:func:`check_catalog` looks at all objects and nodes together (references, one VlanConfig
per node and cluster network, one cluster network per NIC, MTU agreement, name lengths).
Both return problems instead of raising, so that one answer lists every reason.
"""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from collections.abc import Callable, Mapping

from services.planner.catalog import HOSTNAME_LABEL, Catalog, node_labels, selects
from shared import mgmtpath, model, names
from shared.api import Problem
from shared.errors import Code

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_NAME_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
IFNAME_RE = re.compile(r"^[^\s/:]+$")
MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")

MAX_NAME = 63
MAX_CLUSTER_NETWORK_NAME = 12
MTU_MIN, MTU_MAX = 576, 9000
VID_MIN, VID_MAX = 1, 4094
MAX_ARP_TARGETS = 16

LACP_RATES = ("slow", "fast")
AD_SELECTS = ("stable", "bandwidth", "count")
ARP_VALIDATES = ("none", "active", "backup", "all", "filter", "filter_active", "filter_backup")
XMIT_HASH_POLICIES = ("layer2", "layer2+3", "layer3+4", "encap2+3", "encap3+4", "vlan+srcmac")
PRIMARY_MODES = ("active-backup", "balance-tlb", "balance-alb")
XMIT_HASH_MODES = ("balance-xor", "802.3ad", "balance-tlb")
NO_ARP_MODES = ("802.3ad", "balance-tlb", "balance-alb")


def host_vlan_ifname(cluster_network: str, vlan: int) -> str:
    return f"{cluster_network}-br.{vlan}"


class _Collector:
    def __init__(self, spec: model.Spec) -> None:
        self.kind = spec.kind
        self.name = spec.name
        self.problems: list[Problem] = []

    def add(self, field: str, message: str) -> None:
        self.problems.append(Problem(kind=self.kind, name=self.name, field=field, message=message))


def check_name(value: str, *, max_len: int = MAX_NAME) -> str | None:
    if not value:
        return "must not be empty"
    if len(value) > max_len:
        return f"{value!r} is {len(value)} characters; the limit is {max_len}"
    if not NAME_RE.fullmatch(value):
        return (
            f"{value!r} is not a lowercase RFC 1123 label "
            "(a-z, 0-9 and '-', starting and ending with a letter or digit)"
        )
    return None


def check_label_key(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if not name or len(name) > MAX_NAME or not LABEL_NAME_RE.fullmatch(name):
        return f"label key {key!r} is not a valid label name"
    if prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN_RE.fullmatch(prefix)):
        return f"label key {key!r} has an invalid prefix {prefix!r}"
    return None


def _check_selector(c: _Collector, field: str, selector: dict[str, str]) -> None:
    for key, value in selector.items():
        err = check_label_key(key)
        if err:
            c.add(f"{field}.{key}", err)
        if len(value) > MAX_NAME or not LABEL_NAME_RE.fullmatch(value):
            c.add(f"{field}.{key}", f"label value {value!r} is not valid")


def _check_vid(c: _Collector, field: str, vid: int | None) -> None:
    if vid is None:
        c.add(field, f"required: a VLAN ID {VID_MIN}-{VID_MAX}")
    elif not VID_MIN <= vid <= VID_MAX:
        c.add(field, f"VLAN ID {vid} is out of range {VID_MIN}-{VID_MAX}")


def check_object(spec: model.Spec) -> list[Problem]:
    """Rules that need only the object itself."""
    c = _Collector(spec)
    max_len = MAX_CLUSTER_NETWORK_NAME if isinstance(spec, model.ClusterNetwork) else MAX_NAME
    err = check_name(spec.name, max_len=max_len)
    if err:
        if isinstance(spec, model.ClusterNetwork) and len(spec.name) > max_len:
            err += " (so that <name>-br and <name>-bo fit Linux's 15-character interface names)"
        c.add("name", err)
    if isinstance(spec, model.ClusterNetwork):
        if spec.name == model.MGMT:
            c.add("name", "mgmt is the built-in cluster network; it cannot be created or changed")
    elif isinstance(spec, model.VlanConfig):
        _check_vlan_config(c, spec)
    elif isinstance(spec, model.Network):
        _check_network(c, spec)
    elif isinstance(spec, model.HostNetwork):
        _check_host_network(c, spec)
    elif isinstance(spec, model.VmNic):
        _check_vm_nic(c, spec)
    return c.problems


def _check_vlan_config(c: _Collector, vc: model.VlanConfig) -> None:
    if vc.cluster_network == model.MGMT:
        c.add("clusterNetwork", "the mgmt cluster network's uplink is built in; no VlanConfig")
    elif check_name(vc.cluster_network, max_len=MAX_CLUSTER_NETWORK_NAME):
        c.add("clusterNetwork", f"{vc.cluster_network!r} is not a valid cluster network name")
    _check_selector(c, "nodeSelector", vc.node_selector)
    nics = vc.uplink.nics
    if not nics:
        c.add("uplink.nics", "at least one NIC is required")
    seen: set[str] = set()
    for i, nic in enumerate(nics):
        if (
            not nic
            or len(nic) > model.MAX_IFNAME
            or not IFNAME_RE.fullmatch(nic)
            or nic in (".", "..")
        ):
            c.add(f"uplink.nics[{i}]", f"{nic!r} is not a valid interface name")
        if nic in seen:
            c.add(f"uplink.nics[{i}]", f"{nic!r} is listed twice")
        seen.add(nic)
    _check_bond(c, vc.uplink.bond_options, nics)
    la = vc.uplink.link_attributes
    if la.mtu != 0 and not MTU_MIN <= la.mtu <= MTU_MAX:
        c.add(
            "uplink.linkAttributes.mtu",
            f"{la.mtu} is out of range: 0 (1500) or {MTU_MIN}-{MTU_MAX}",
        )
    if la.tx_q_len is not None and not 0 <= la.tx_q_len <= 2**31 - 1:
        c.add("uplink.linkAttributes.txQLen", f"{la.tx_q_len} must be >= 0 (or -1 for the default)")
    if la.hardware_addr is not None and not MAC_RE.fullmatch(la.hardware_addr):
        c.add("uplink.linkAttributes.hardwareAddr", f"{la.hardware_addr!r} is not a MAC address")


def _check_bond(c: _Collector, bo: model.BondOptions, nics: list[str]) -> None:
    f = "uplink.bondOptions"
    mode = bo.mode
    if mode not in model.BOND_MODES:
        c.add(
            f"{f}.mode",
            f"unknown bond mode {mode!r} (one of {', '.join(model.BOND_MODES)}, or 0-6)",
        )
    for opt, value in (
        ("miimon", bo.miimon),
        ("updelay", bo.updelay),
        ("downdelay", bo.downdelay),
        ("arpInterval", bo.arp_interval),
    ):
        if value is not None and not 0 <= value <= 2**31 - 1:
            c.add(f"{f}.{opt}", f"{value} must be >= 0")
    miimon = bo.miimon or 0
    arp = bo.arp_interval or 0
    if miimon > 0 and arp > 0:
        c.add(
            f"{f}.arpInterval", "miimon and arpInterval cannot both be set; choose one link monitor"
        )
    for opt, value in (("updelay", bo.updelay), ("downdelay", bo.downdelay)):
        if value:
            if miimon <= 0:
                c.add(f"{f}.{opt}", f"{opt} needs miimon")
            elif value % miimon:
                c.add(f"{f}.{opt}", f"{value} is not a multiple of miimon ({miimon})")
    if bo.lacp_rate is not None:
        if bo.lacp_rate not in LACP_RATES:
            c.add(f"{f}.lacpRate", f"{bo.lacp_rate!r} is not one of {', '.join(LACP_RATES)}")
        if mode != "802.3ad":
            c.add(f"{f}.lacpRate", f"lacpRate applies only to mode 802.3ad, not {mode}")
    if bo.ad_select is not None:
        if bo.ad_select not in AD_SELECTS:
            c.add(f"{f}.adSelect", f"{bo.ad_select!r} is not one of {', '.join(AD_SELECTS)}")
        if mode != "802.3ad":
            c.add(f"{f}.adSelect", f"adSelect applies only to mode 802.3ad, not {mode}")
    if bo.primary is not None:
        if mode not in PRIMARY_MODES:
            c.add(
                f"{f}.primary",
                f"primary applies only to modes {', '.join(PRIMARY_MODES)}, not {mode}",
            )
        if bo.primary not in nics:
            c.add(f"{f}.primary", f"{bo.primary!r} is not one of the uplink's NICs")
    if bo.xmit_hash_policy is not None:
        if bo.xmit_hash_policy not in XMIT_HASH_POLICIES:
            c.add(
                f"{f}.xmitHashPolicy",
                f"{bo.xmit_hash_policy!r} is not one of {', '.join(XMIT_HASH_POLICIES)}",
            )
        if mode not in XMIT_HASH_MODES:
            c.add(
                f"{f}.xmitHashPolicy",
                f"xmitHashPolicy applies only to modes {', '.join(XMIT_HASH_MODES)}, not {mode}",
            )
    if arp > 0 and mode in NO_ARP_MODES:
        c.add(f"{f}.arpInterval", f"ARP monitoring is not supported in mode {mode}; use miimon")
    if bo.arp_ip_targets:
        if arp <= 0:
            c.add(f"{f}.arpIpTargets", "arpIpTargets needs arpInterval")
        if len(bo.arp_ip_targets) > MAX_ARP_TARGETS:
            c.add(f"{f}.arpIpTargets", f"at most {MAX_ARP_TARGETS} targets")
        for i, target in enumerate(bo.arp_ip_targets):
            try:
                ipaddress.IPv4Address(target)
            except ValueError:
                c.add(f"{f}.arpIpTargets[{i}]", f"{target!r} is not an IPv4 address")
    elif arp > 0:
        c.add(f"{f}.arpIpTargets", "arpInterval needs at least one arpIpTargets address")
    if bo.arp_validate is not None:
        if bo.arp_validate not in ARP_VALIDATES:
            c.add(
                f"{f}.arpValidate", f"{bo.arp_validate!r} is not one of {', '.join(ARP_VALIDATES)}"
            )
        if arp <= 0:
            c.add(f"{f}.arpValidate", "arpValidate needs arpInterval")


def _check_network(c: _Collector, net: model.Network) -> None:
    if net.type not in model.NETWORK_TYPES:
        c.add(
            "type", f"unknown network type {net.type!r} (one of {', '.join(model.NETWORK_TYPES)})"
        )
        return
    if net.type == "L2VlanNetwork":
        _check_vid(c, "vlan", net.vlan)
        if net.trunk:
            c.add("trunk", "only an L2VlanTrunkNetwork has trunk ranges")
    elif net.type == "UntaggedNetwork":
        if net.vlan is not None:
            c.add("vlan", "an UntaggedNetwork has no VLAN ID")
        if net.trunk:
            c.add("trunk", "only an L2VlanTrunkNetwork has trunk ranges")
    else:
        if net.vlan is not None:
            c.add("vlan", "an L2VlanTrunkNetwork has trunk ranges, not a single vlan")
        if not net.trunk:
            c.add("trunk", "at least one trunk range is required")
        for i, rng in enumerate(net.trunk):
            field = f"trunk[{i}]"
            if rng.id is not None:
                if rng.min_id is not None or rng.max_id is not None:
                    c.add(field, "give either id or minID/maxID, not both")
                _check_vid(c, f"{field}.id", rng.id)
                continue
            if rng.min_id is None or rng.max_id is None:
                c.add(field, "needs both minID and maxID (or a single id)")
                continue
            _check_vid(c, f"{field}.minID", rng.min_id)
            _check_vid(c, f"{field}.maxID", rng.max_id)
            if rng.min_id > rng.max_id:
                c.add(field, f"minID {rng.min_id} is greater than maxID {rng.max_id}")


def _check_host_network(c: _Collector, hn: model.HostNetwork) -> None:
    _check_vid(c, "vlan", hn.vlan)
    if hn.mode != "static":
        c.add("mode", f"only mode static is supported, not {hn.mode!r}")
    _check_selector(c, "nodeSelector", hn.node_selector)
    ifname = host_vlan_ifname(hn.cluster_network, hn.vlan)
    if len(ifname) > model.MAX_IFNAME:
        c.add(
            "vlan",
            f"host interface name {ifname!r} is {len(ifname)} characters; "
            f"Linux allows {model.MAX_IFNAME} (use a shorter cluster network name)",
        )
    for node, cidr in hn.ips.items():
        err = check_name(node)
        if err:
            c.add(f"ips.{node}", f"node name {err}")
        try:
            ipaddress.ip_interface(cidr)
        except ValueError:
            c.add(
                f"ips.{node}", f"{cidr!r} is not an address with prefix length (like 10.0.0.5/24)"
            )
        else:
            if "/" not in cidr:
                c.add(f"ips.{node}", f"{cidr!r} needs a prefix length (like 10.0.0.5/24)")


def _check_vm_nic(c: _Collector, nic: model.VmNic) -> None:
    for field, value in (("vm", nic.vm), ("network", nic.network)):
        err = check_name(value)
        if err:
            c.add(field, err)
    node_err = names.node_name_error(nic.node, what="node")
    if node_err:
        c.add("node", node_err)
    if nic.mac is not None and not MAC_RE.fullmatch(nic.mac):
        c.add("mac", f"{nic.mac!r} is not a MAC address (like 52:54:00:12:34:56)")


def _names(names: list[str], limit: int = 3) -> str:
    """At most ``limit`` names, then how many more: a message stays short however many."""
    shown = ", ".join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown


def check_catalog(
    catalog: Catalog, located: Mapping[tuple[str, str], tuple[int, int]] | None = None
) -> list[Problem]:
    """Rules across objects and nodes; the catalog is the state a submission would produce.

    ``located`` gives the document and line of each submitted object, so that a problem
    between two objects names where both come from. Linear in the objects and nodes: a
    problem message names a bounded number of other objects.
    """
    problems: list[Problem] = []

    def add(spec: model.Spec, field: str, message: str) -> None:
        problems.append(Problem(kind=spec.kind, name=spec.name, field=field, message=message))

    def where(spec: model.Spec) -> str:
        found = (located or {}).get((spec.kind, spec.name))
        return f" (document {found[0]}, line {found[1]})" if found else ""

    vcs = catalog.all(model.VlanConfig)
    by_network: dict[str, list[model.VlanConfig]] = defaultdict(list)
    for vc in vcs:
        by_network[vc.cluster_network].append(vc)
        if vc.cluster_network != model.MGMT and not catalog.cluster_network_exists(
            vc.cluster_network
        ):
            add(vc, "clusterNetwork", f"cluster network {vc.cluster_network!r} does not exist")

    # MTU: one value per cluster network (VMs and uplinks must agree).
    for cn, members in by_network.items():
        by_mtu: dict[int, list[str]] = defaultdict(list)
        for vc in members:
            by_mtu[vc.uplink.link_attributes.mtu or 1500].append(vc.name)
        if len(by_mtu) > 1:
            detail = "; ".join(f"{m} in {_names(names)}" for m, names in sorted(by_mtu.items()))
            for vc in members:
                add(
                    vc,
                    "uplink.linkAttributes.mtu",
                    f"all VlanConfigs of cluster network {cn} must use one MTU ({detail})",
                )

    # Per node: one VlanConfig per cluster network; one cluster network per NIC; NICs exist.
    uplinks: dict[tuple[str, str], model.VlanConfig] = {}
    for node_name, node in sorted(catalog.nodes.items()):
        labels = node_labels(node)
        # Who holds each NIC: the built-in mgmt bond, or the first VlanConfig that took it.
        nic_owner: dict[str, tuple[str, model.VlanConfig | None]] = {
            nic.name: (model.MGMT, None) for nic in node.nics if nic.master == f"{model.MGMT}-bo"
        }
        if node.mgmt is not None:
            nic_owner.update((nic, (model.MGMT, None)) for nic in node.mgmt.nics)
        known_nics = {nic.name for nic in node.nics}
        by_cn: dict[str, list[model.VlanConfig]] = defaultdict(list)
        for cn in by_network:  # only the VlanConfigs that may select this node: linear
            for vc in catalog.vlan_configs_of(cn, labels[HOSTNAME_LABEL]):
                if selects(vc.node_selector, labels):
                    by_cn[cn].append(vc)
        for cn, matched in sorted(by_cn.items()):
            uplinks.setdefault((node_name, cn), matched[0])
            if len(matched) > 1:
                for vc in matched:
                    others = [v.name for v in matched[:4] if v is not vc][:3]
                    more = len(matched) - 1 - len(others)
                    also = ", ".join(others) + (f" and {more} more" if more else "")
                    add(
                        vc,
                        "nodeSelector",
                        f"node {node_name} is also selected by VlanConfig {also} of cluster "
                        f"network {cn}; a node may have one uplink per cluster network",
                    )
            for vc in matched:
                for i, nic in enumerate(vc.uplink.nics):
                    if node.nics and nic not in known_nics:
                        add(vc, f"uplink.nics[{i}]", f"node {node_name} has no NIC {nic!r}")
                    owner = nic_owner.get(nic)
                    if owner is None:
                        nic_owner[nic] = (cn, vc)
                    elif owner[0] == model.MGMT and owner[1] is None and cn != model.MGMT:
                        add(
                            vc,
                            f"uplink.nics[{i}]",
                            f"NIC {nic} of node {node_name} is in the uplink of the management "
                            "cluster network mgmt (mgmt-bo): it is a member of mgmt-bo, the "
                            "node's management path, and taking it into another bond would cut "
                            "the node off",
                        )
                    elif owner[0] != cn:
                        problems.append(_nic_conflict(node_name, nic, owner, (cn, vc), where))

    for net in catalog.all(model.Network):
        if not catalog.cluster_network_exists(net.cluster_network):
            add(net, "clusterNetwork", f"cluster network {net.cluster_network!r} does not exist")

    host_vlans: dict[tuple[str, int], str] = {}
    for hn in catalog.all(model.HostNetwork):
        if not catalog.cluster_network_exists(hn.cluster_network):
            add(hn, "clusterNetwork", f"cluster network {hn.cluster_network!r} does not exist")
        key = (hn.cluster_network, hn.vlan)
        if key in host_vlans:
            add(
                hn,
                "vlan",
                f"host network {host_vlans[key]} already uses VLAN {hn.vlan} "
                f"on cluster network {hn.cluster_network}",
            )
        host_vlans.setdefault(key, hn.name)
        for node_name in hn.ips:
            ip_node = catalog.nodes.get(node_name)
            if ip_node is not None and not selects(hn.node_selector, node_labels(ip_node)):
                add(hn, f"ips.{node_name}", f"node {node_name} is not selected by nodeSelector")
        if hn.cluster_network == model.MGMT:
            for node_name, node in catalog.nodes.items():
                if node.mgmt_vlan == hn.vlan and selects(hn.node_selector, node_labels(node)):
                    add(
                        hn,
                        "vlan",
                        f"VLAN {hn.vlan} is the management VLAN of node {node_name}; "
                        "its interface is built in",
                    )

    problems.extend(check_mgmt_path(catalog))

    vm_nodes: dict[str, str] = {}
    for vm_nic in catalog.all(model.VmNic):
        vm_net = catalog.get(model.Network, vm_nic.network)
        if vm_net is None:
            add(vm_nic, "network", f"network {vm_nic.network!r} does not exist")
        if vm_nic.node not in catalog.nodes:
            add(
                vm_nic, "node", f"node {vm_nic.node!r} is not registered (is its executor running?)"
            )
        elif (
            vm_net is not None
            and vm_net.cluster_network != model.MGMT
            and (vm_nic.node, vm_net.cluster_network) not in uplinks
        ):
            add(
                vm_nic,
                "network",
                f"node {vm_nic.node} is not in cluster network "
                f"{vm_net.cluster_network} (no VlanConfig selects it)",
            )
        other = vm_nodes.setdefault(vm_nic.vm, vm_nic.node)
        if other != vm_nic.node:
            add(
                vm_nic,
                "node",
                f"VM {vm_nic.vm} already has a NIC on node {other}; a VM runs on one node",
            )
    return problems


def _nic_conflict(
    node: str,
    nic: str,
    first: tuple[str, model.VlanConfig | None],
    second: tuple[str, model.VlanConfig],
    where: Callable[[model.Spec], str],
) -> Problem:
    """One NIC in the uplinks of two cluster networks: name both holders, with the document
    and line of each that comes from the submission, and blame a submitted one if any."""
    (cn1, vc1), (cn2, vc2) = first, second
    if vc1 is None:
        holder = f"the management cluster network {cn1} ({cn1}-bo)"
    else:
        holder = f"VlanConfig {vc1.name}{where(vc1)} of cluster network {cn1}"
    blamed, index_of = vc2, vc2.uplink.nics.index(nic)
    other = f"VlanConfig {vc2.name}{where(vc2)} of cluster network {cn2}"
    if vc1 is not None and where(vc1) and not where(vc2):
        blamed, index_of = vc1, vc1.uplink.nics.index(nic)
    return Problem(
        kind=blamed.kind,
        name=blamed.name,
        field=f"uplink.nics[{index_of}]",
        message=f"NIC {nic} of node {node} is in the uplink of {holder} and of {other}; "
        "a NIC can be in one cluster network only",
    )


def _network_vid_fields(net: model.Network) -> list[tuple[str, int, int]]:
    """(field, first VID, last VID) of each VID entry of a network, as written."""
    if net.type == "L2VlanNetwork" and net.vlan is not None:
        return [("vlan", net.vlan, net.vlan)]
    out: list[tuple[str, int, int]] = []
    if net.type == "L2VlanTrunkNetwork":
        for i, rng in enumerate(net.trunk):
            if rng.id is not None:
                out.append((f"trunk[{i}].id", rng.id, rng.id))
            elif rng.min_id is not None and rng.max_id is not None:
                out.append((f"trunk[{i}]", rng.min_id, rng.max_id))
    return out


def check_mgmt_path(catalog: Catalog) -> list[Problem]:
    """Everything that would cut a node's management path (:mod:`shared.mgmtpath`).

    Networks on mgmt: no VID 1 (mgmt-bo's PVID), no node's management VLAN. Host networks on
    mgmt: not VID 1 (mgmt-br's own untagged VID). Host addresses, on any cluster network:
    clear of what the node reports of its management path (subnets, gateway routes,
    gateways, NATS servers) and of every node's management address. VM NICs on mgmt: not
    below the node's management MTU. (The NICs of mgmt-bo are in the per-node NIC rule of
    :func:`check_catalog`.)
    """
    problems: list[Problem] = []

    def add(spec: model.Spec, field: str, message: str) -> None:
        problems.append(Problem(kind=spec.kind, name=spec.name, field=field, message=message))

    mgmt_vlans: dict[int, list[str]] = defaultdict(list)
    for node_name, node in sorted(catalog.nodes.items()):
        if node.mgmt_vlan is not None:
            mgmt_vlans[node.mgmt_vlan].append(node_name)

    for net in catalog.all(model.Network):
        if net.cluster_network != model.MGMT:
            continue
        for field, lo, hi in _network_vid_fields(net):
            why = mgmtpath.vid_problem(lo, hi, mgmt_vlan=None)
            if why is not None:
                add(net, field, why)
                continue
            for vid, nodes in sorted(mgmt_vlans.items()):
                if lo <= vid <= hi:
                    detail = mgmtpath.vid_problem(vid, vid, mgmt_vlan=vid)
                    add(net, field, f"{detail} (the management VLAN of {', '.join(nodes)})")

    mgmt_addresses = {
        name: list(node.mgmt.addresses)
        for name, node in catalog.nodes.items()
        if node.mgmt is not None
    }
    for hn in catalog.all(model.HostNetwork):
        if hn.cluster_network == model.MGMT:
            why = mgmtpath.host_vid_problem(hn.vlan, mgmt_vlan=None)
            if why is not None:
                add(hn, "vlan", why)
        for node_name, cidr in sorted(hn.ips.items()):
            ip_node = catalog.nodes.get(node_name)
            if ip_node is None:
                continue
            peers = {n: a for n, a in mgmt_addresses.items() if n != node_name}
            why = mgmtpath.address_problem(cidr, ip_node.mgmt, peers=peers)
            if why is not None:
                add(hn, f"ips.{node_name}", f"node {node_name}: {why}")

    mgmt_mtu = DEFAULT_MGMT_NETWORK_MTU
    for vm_nic in catalog.all(model.VmNic):
        vm_net = catalog.get(model.Network, vm_nic.network)
        vm_node = catalog.nodes.get(vm_nic.node)
        if vm_net is None or vm_node is None or vm_net.cluster_network != model.MGMT:
            continue
        why = mgmtpath.mtu_problem(mgmt_mtu, vm_node.mgmt)
        if why is not None:
            add(
                vm_nic,
                "network",
                f"network {vm_net.name} is on mgmt and its VM NICs get MTU {mgmt_mtu}; "
                f"node {vm_nic.node}: {why}",
            )
    return problems


DEFAULT_MGMT_NETWORK_MTU = 1500
"""The MTU the bridge CNI config gives VM NICs on mgmt (no VlanConfig sets mgmt's MTU)."""


def check_delete(catalog: Catalog, kind: str, name: str) -> list[Problem]:
    """Rules for deleting one object from the current catalog."""
    problems: list[Problem] = []

    def refuse(message: str, field: str = "", code: Code = Code.REFUSED) -> None:
        problems.append(Problem(code=code, kind=kind, name=name, field=field, message=message))

    if kind not in model.USER_KINDS:
        known = ", ".join(model.USER_KINDS)
        refuse(f"unknown kind {kind!r} (known: {known})", field="kind", code=Code.INVALID)
        return problems
    if kind == model.ClusterNetwork.kind and name == model.MGMT:
        refuse("mgmt is the built-in cluster network; it cannot be deleted")
        return problems
    if (kind, name) not in catalog.entries:
        refuse("not found", code=Code.NOT_FOUND)
        return problems
    if kind == model.ClusterNetwork.kind:
        users = [
            f"{s.kind} {s.name}"
            for s in (
                *catalog.all(model.VlanConfig),
                *catalog.all(model.Network),
                *catalog.all(model.HostNetwork),
            )
            if getattr(s, "cluster_network", None) == name
        ]
        if users:
            refuse(f"still in use by {', '.join(users)}; delete those first")
    elif kind == model.Network.kind:
        users = [f"VmNic {n.name}" for n in catalog.all(model.VmNic) if n.network == name]
        if users:
            refuse(f"still in use by {', '.join(users)}; delete those first")
    return problems
