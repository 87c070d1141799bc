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
from dataclasses import dataclass

from services.planner.catalog import Catalog, node_labels, selects
from shared.domain import mgmtpath, model, names
from shared.domain.errors import Code
from shared.domain.vocabulary import (
    BOND_INT_MAX,
    DEFAULT_MTU,
    IFNAME_MAX,
    MAX_ARP_TARGETS,
    UPLINK_MTU_MAX,
    UPLINK_MTU_MIN,
    VID_MAX,
    VID_MIN,
    BondMode,
    ifname_error,
)
from shared.wire.api import Problem

NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_NAME_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")

MAX_NAME = 63
MAX_CLUSTER_NETWORK_NAME = 12

_BOND_INT_OPTIONS: tuple[tuple[str, str], ...] = (
    ("miimon", "miimon"),
    ("updelay", "updelay"),
    ("downdelay", "downdelay"),
    ("arpInterval", "arp_interval"),
)
"""Numeric bond options: (field, BondOptions attribute)."""

_MODE_ONLY: tuple[tuple[str, str, tuple[BondMode, ...]], ...] = (
    ("lacpRate", "lacp_rate", ("802.3ad",)),
    ("adSelect", "ad_select", ("802.3ad",)),
    ("primary", "primary", ("active-backup", "balance-tlb", "balance-alb")),
    ("xmitHashPolicy", "xmit_hash_policy", ("balance-xor", "802.3ad", "balance-tlb")),
)
"""Bond options the kernel refuses outside some modes (``bond_options.c``, ``unsuppmodes``):
(field, BondOptions attribute, the modes that take it)."""

_NO_ARP_MODES: tuple[BondMode, ...] = ("802.3ad", "balance-tlb", "balance-alb")
"""Modes without ARP link monitoring (``arp_interval``'s ``unsuppmodes``)."""

_NEEDS_MONITOR: tuple[tuple[str, str, str], ...] = (
    ("updelay", "updelay", "miimon"),
    ("downdelay", "downdelay", "miimon"),
    ("arpIpTargets", "arp_ip_targets", "arpInterval"),
    ("arpValidate", "arp_validate", "arpInterval"),
)
"""Bond options that mean nothing without a link monitor: (field, attribute, monitor)."""


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
        if ifname_error(nic) is not None:
            c.add(f"uplink.nics[{i}]", f"{nic!r} is not a valid interface name")
        if nic in seen:
            c.add(f"uplink.nics[{i}]", f"{nic!r} is listed twice")
        seen.add(nic)
    _check_bond(c, vc.uplink.bond_options, nics)
    la = vc.uplink.link_attributes
    if la.mtu != 0 and not UPLINK_MTU_MIN <= la.mtu <= UPLINK_MTU_MAX:
        c.add(
            "uplink.linkAttributes.mtu",
            f"{la.mtu} is out of range: 0 ({DEFAULT_MTU}) or {UPLINK_MTU_MIN}-{UPLINK_MTU_MAX}",
        )
    if la.tx_q_len is not None and not 0 <= la.tx_q_len <= 2**31 - 1:
        c.add("uplink.linkAttributes.txQLen", f"{la.tx_q_len} must be >= 0 (or -1 for the default)")
    if la.hardware_addr is not None and not MAC_RE.fullmatch(la.hardware_addr):
        c.add("uplink.linkAttributes.hardwareAddr", f"{la.hardware_addr!r} is not a MAC address")


def _check_bond(c: _Collector, bo: model.BondOptions, nics: list[str]) -> None:
    """The bond options, as the kernel would take them: ranges, link monitors, modes.

    The mode and the enumerated options are of the vocabulary's values already (the
    decoder refuses any other); what is left is how they combine.
    """
    f = "uplink.bondOptions"
    for opt, attr in _BOND_INT_OPTIONS:
        value = getattr(bo, attr)
        if value is not None and not 0 <= value <= BOND_INT_MAX:
            c.add(f"{f}.{opt}", f"{value} must be >= 0")
    monitors = {"miimon": bo.miimon or 0, "arpInterval": bo.arp_interval or 0}
    if monitors["miimon"] > 0 and monitors["arpInterval"] > 0:
        c.add(
            f"{f}.arpInterval", "miimon and arpInterval cannot both be set; choose one link monitor"
        )
    for opt, attr, monitor in _NEEDS_MONITOR:
        if getattr(bo, attr) and monitors[monitor] <= 0:
            c.add(f"{f}.{opt}", f"{opt} needs {monitor}")
    miimon = monitors["miimon"]
    for opt, value in (("updelay", bo.updelay), ("downdelay", bo.downdelay)):
        if value and miimon > 0 and value % miimon:
            c.add(f"{f}.{opt}", f"{value} is not a multiple of miimon ({miimon})")
    for opt, attr, modes in _MODE_ONLY:
        if getattr(bo, attr) is not None and bo.mode not in modes:
            which = "mode" if len(modes) == 1 else "modes"
            c.add(f"{f}.{opt}", f"{opt} applies only to {which} {', '.join(modes)}, not {bo.mode}")
    if bo.primary is not None and bo.primary not in nics:
        c.add(f"{f}.primary", f"{bo.primary!r} is not one of the uplink's NICs")
    _check_arp_monitor(c, bo, arp=monitors["arpInterval"] > 0)


def _check_arp_monitor(c: _Collector, bo: model.BondOptions, *, arp: bool) -> None:
    """ARP link monitoring: a mode that has it, and its targets."""
    f = "uplink.bondOptions"
    if arp and bo.mode in _NO_ARP_MODES:
        c.add(f"{f}.arpInterval", f"ARP monitoring is not supported in mode {bo.mode}; use miimon")
    if arp and not bo.arp_ip_targets:
        c.add(f"{f}.arpIpTargets", "arpInterval needs at least one arpIpTargets address")
    if len(bo.arp_ip_targets) > MAX_ARP_TARGETS:
        c.add(f"{f}.arpIpTargets", f"at most {MAX_ARP_TARGETS} targets")
    for i, target in enumerate(bo.arp_ip_targets):
        try:
            ipaddress.IPv4Address(target)
        except ValueError:
            c.add(f"{f}.arpIpTargets[{i}]", f"{target!r} is not an IPv4 address")


def _check_network(c: _Collector, net: model.Network) -> None:
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
            _check_trunk_range(c, f"trunk[{i}]", rng)


def _check_trunk_range(c: _Collector, field: str, rng: model.TrunkRange) -> None:
    if rng.id is not None:
        if rng.min_id is not None or rng.max_id is not None:
            c.add(field, "give either id or minID/maxID, not both")
        _check_vid(c, f"{field}.id", rng.id)
        return
    if rng.min_id is None or rng.max_id is None:
        c.add(field, "needs both minID and maxID (or a single id)")
        return
    _check_vid(c, f"{field}.minID", rng.min_id)
    _check_vid(c, f"{field}.maxID", rng.max_id)
    if rng.min_id > rng.max_id:
        c.add(field, f"minID {rng.min_id} is greater than maxID {rng.max_id}")


def _check_host_network(c: _Collector, hn: model.HostNetwork) -> None:
    _check_vid(c, "vlan", hn.vlan)
    _check_selector(c, "nodeSelector", hn.node_selector)
    ifname = host_vlan_ifname(hn.cluster_network, hn.vlan)
    if len(ifname) > IFNAME_MAX:
        c.add(
            "vlan",
            f"host interface name {ifname!r} is {len(ifname)} characters; "
            f"Linux allows {IFNAME_MAX} (use a shorter cluster network name)",
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


class _Problems:
    """Problems across objects, each about the object it names (one object: :class:`_Collector`)."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, spec: model.Spec, field: str, message: str) -> None:
        self.problems.append(Problem(kind=spec.kind, name=spec.name, field=field, message=message))


Where = Callable[[model.Spec], str]
"""Where a submitted object comes from (`` (document 2, line 7)``), or ``""``."""


def check_catalog(
    catalog: Catalog, located: Mapping[tuple[str, str], tuple[int, int]] | None = None
) -> list[Problem]:
    """Rules across objects and nodes; the catalog is the state a submission would produce.

    ``located`` gives the document and line of each submitted object, so that a problem
    between two objects names where both come from. Linear in the objects and nodes: a
    problem message names a bounded number of other objects.
    """
    found = _Problems()

    def where(spec: model.Spec) -> str:
        at = (located or {}).get((spec.kind, spec.name))
        return f" (document {at[0]}, line {at[1]})" if at else ""

    by_network = _check_vlan_configs(found, catalog)
    uplinks: dict[tuple[str, str], model.VlanConfig] = {}
    for node_name, node in sorted(catalog.nodes.items()):
        _check_node_uplinks(
            found, catalog, by_network, _NodeNics.of(node_name, node), uplinks, where
        )
    for net in catalog.all(model.Network):
        if not catalog.cluster_network_exists(net.cluster_network):
            found.add(
                net, "clusterNetwork", f"cluster network {net.cluster_network!r} does not exist"
            )
    _check_host_networks(found, catalog)
    found.problems.extend(check_mgmt_path(catalog))
    _check_vm_nics(found, catalog, uplinks)
    return found.problems


def _check_vlan_configs(found: _Problems, catalog: Catalog) -> dict[str, list[model.VlanConfig]]:
    """Each VlanConfig's cluster network exists; all of one cluster network use one MTU (VMs
    and uplinks must agree). The VlanConfigs by cluster network."""
    by_network: dict[str, list[model.VlanConfig]] = defaultdict(list)
    for vc in catalog.all(model.VlanConfig):
        by_network[vc.cluster_network].append(vc)
        if vc.cluster_network != model.MGMT and not catalog.cluster_network_exists(
            vc.cluster_network
        ):
            found.add(
                vc, "clusterNetwork", f"cluster network {vc.cluster_network!r} does not exist"
            )
    for cn, members in by_network.items():
        by_mtu: dict[int, list[str]] = defaultdict(list)
        for vc in members:
            by_mtu[vc.uplink.link_attributes.mtu or DEFAULT_MTU].append(vc.name)
        if len(by_mtu) > 1:
            detail = "; ".join(f"{m} in {_names(names)}" for m, names in sorted(by_mtu.items()))
            for vc in members:
                found.add(
                    vc,
                    "uplink.linkAttributes.mtu",
                    f"all VlanConfigs of cluster network {cn} must use one MTU ({detail})",
                )
    return by_network


@dataclass
class _NodeNics:
    """One node's NICs while its uplinks are checked: those it reports, and who holds each."""

    node: str
    known: set[str]
    """The NICs the node reports (empty: it reports none, and none is checked)."""
    owner: dict[str, tuple[str, model.VlanConfig | None]]
    """NIC -> (cluster network, VlanConfig): the built-in mgmt bond (no VlanConfig), or the
    first VlanConfig that took it."""

    @classmethod
    def of(cls, name: str, node: model.Node) -> _NodeNics:
        mgmt: tuple[str, model.VlanConfig | None] = (model.MGMT, None)
        owner = {nic.name: mgmt for nic in node.nics if nic.master == f"{model.MGMT}-bo"}
        if node.mgmt is not None:
            owner.update((nic, mgmt) for nic in node.mgmt.nics)
        return cls(node=name, known={nic.name for nic in node.nics}, owner=owner)


def _check_node_uplinks(
    found: _Problems,
    catalog: Catalog,
    by_network: Mapping[str, list[model.VlanConfig]],
    nics: _NodeNics,
    uplinks: dict[tuple[str, str], model.VlanConfig],
    where: Where,
) -> None:
    """One node: one VlanConfig per cluster network; one cluster network per NIC; NICs
    exist. Records the node's uplink per cluster network in ``uplinks``."""
    by_cn = catalog.vlan_configs_selecting(nics.node)
    for cn, matched in sorted(by_cn.items()):
        uplinks.setdefault((nics.node, cn), matched[0])
        if len(matched) > 1:
            _check_one_uplink(found, nics.node, cn, matched)
        for vc in matched:
            _check_uplink_nics(found, nics, cn, vc, where)


def _check_one_uplink(
    found: _Problems, node: str, cn: str, matched: list[model.VlanConfig]
) -> None:
    for vc in matched:
        others = [v.name for v in matched[:4] if v is not vc][:3]
        more = len(matched) - 1 - len(others)
        also = ", ".join(others) + (f" and {more} more" if more else "")
        found.add(
            vc,
            "nodeSelector",
            f"node {node} is also selected by VlanConfig {also} of cluster "
            f"network {cn}; a node may have one uplink per cluster network",
        )


def _check_uplink_nics(
    found: _Problems, nics: _NodeNics, cn: str, vc: model.VlanConfig, where: Where
) -> None:
    for i, nic in enumerate(vc.uplink.nics):
        if nics.known and nic not in nics.known:
            found.add(vc, f"uplink.nics[{i}]", f"node {nics.node} has no NIC {nic!r}")
        owner = nics.owner.get(nic)
        if owner is None:
            nics.owner[nic] = (cn, vc)
        elif owner[0] == model.MGMT and owner[1] is None and cn != model.MGMT:
            found.add(
                vc,
                f"uplink.nics[{i}]",
                f"NIC {nic} of node {nics.node} is in the uplink of the management "
                "cluster network mgmt (mgmt-bo): it is a member of mgmt-bo, the "
                "node's management path, and taking it into another bond would cut "
                "the node off",
            )
        elif owner[0] != cn:
            found.problems.append(_nic_conflict(nics.node, nic, owner, (cn, vc), where))


def _check_host_networks(found: _Problems, catalog: Catalog) -> None:
    host_vlans: dict[tuple[str, int], str] = {}
    for hn in catalog.all(model.HostNetwork):
        if not catalog.cluster_network_exists(hn.cluster_network):
            found.add(
                hn, "clusterNetwork", f"cluster network {hn.cluster_network!r} does not exist"
            )
        key = (hn.cluster_network, hn.vlan)
        if key in host_vlans:
            found.add(
                hn,
                "vlan",
                f"host network {host_vlans[key]} already uses VLAN {hn.vlan} "
                f"on cluster network {hn.cluster_network}",
            )
        host_vlans.setdefault(key, hn.name)
        for node_name in hn.ips:
            ip_node = catalog.nodes.get(node_name)
            if ip_node is not None and not selects(hn.node_selector, node_labels(ip_node)):
                found.add(
                    hn, f"ips.{node_name}", f"node {node_name} is not selected by nodeSelector"
                )
        if hn.cluster_network == model.MGMT:
            for node_name, node in catalog.nodes.items():
                if node.mgmt_vlan == hn.vlan and selects(hn.node_selector, node_labels(node)):
                    found.add(
                        hn,
                        "vlan",
                        f"VLAN {hn.vlan} is the management VLAN of node {node_name}; "
                        "its interface is built in",
                    )


def _check_vm_nics(
    found: _Problems, catalog: Catalog, uplinks: Mapping[tuple[str, str], model.VlanConfig]
) -> None:
    vm_nodes: dict[str, str] = {}
    for vm_nic in catalog.all(model.VmNic):
        vm_net = catalog.get(model.Network, vm_nic.network)
        if vm_net is None:
            found.add(vm_nic, "network", f"network {vm_nic.network!r} does not exist")
        if vm_nic.node not in catalog.nodes:
            found.add(
                vm_nic, "node", f"node {vm_nic.node!r} is not registered (is its executor running?)"
            )
        elif (
            vm_net is not None
            and vm_net.cluster_network != model.MGMT
            and (vm_nic.node, vm_net.cluster_network) not in uplinks
        ):
            found.add(
                vm_nic,
                "network",
                f"node {vm_nic.node} is not in cluster network "
                f"{vm_net.cluster_network} (no VlanConfig selects it)",
            )
        other = vm_nodes.setdefault(vm_nic.vm, vm_nic.node)
        if other != vm_nic.node:
            found.add(
                vm_nic,
                "node",
                f"VM {vm_nic.vm} already has a NIC on node {other}; a VM runs on one node",
            )


def _nic_conflict(
    node: str,
    nic: str,
    first: tuple[str, model.VlanConfig | None],
    second: tuple[str, model.VlanConfig],
    where: Where,
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
    """Everything that would cut a node's management path (:mod:`shared.domain.mgmtpath`).

    Networks on mgmt: no VID 1 (mgmt-bo's PVID), no node's management VLAN. Host networks on
    mgmt: not VID 1 (mgmt-br's own untagged VID). Host addresses, on any cluster network:
    clear of what the node reports of its management path (subnets, gateway routes,
    gateways, NATS servers) and of every node's management address. VM NICs on mgmt: not
    below the node's management MTU. (The NICs of mgmt-bo are in the per-node NIC rule of
    :func:`check_catalog`.)
    """
    found = _Problems()
    _check_mgmt_vids(found, catalog)
    _check_host_addresses(found, catalog)
    _check_mgmt_mtu(found, catalog)
    return found.problems


def _check_mgmt_vids(found: _Problems, catalog: Catalog) -> None:
    """Networks on mgmt: no VID 1, no node's management VLAN."""
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
                found.add(net, field, why)
                continue
            for vid, nodes in sorted(mgmt_vlans.items()):
                if lo <= vid <= hi:
                    detail = mgmtpath.vid_problem(vid, vid, mgmt_vlan=vid)
                    found.add(net, field, f"{detail} (the management VLAN of {', '.join(nodes)})")


def _check_host_addresses(found: _Problems, catalog: Catalog) -> None:
    """Host networks: not VID 1 on mgmt; addresses clear of every management path."""
    mgmt_addresses = {
        name: list(node.mgmt.addresses)
        for name, node in catalog.nodes.items()
        if node.mgmt is not None
    }
    for hn in catalog.all(model.HostNetwork):
        if hn.cluster_network == model.MGMT:
            why = mgmtpath.host_vid_problem(hn.vlan, mgmt_vlan=None)
            if why is not None:
                found.add(hn, "vlan", why)
        for node_name, cidr in sorted(hn.ips.items()):
            ip_node = catalog.nodes.get(node_name)
            if ip_node is None:
                continue
            peers = {n: a for n, a in mgmt_addresses.items() if n != node_name}
            why = mgmtpath.address_problem(cidr, ip_node.mgmt, peers=peers)
            if why is not None:
                found.add(hn, f"ips.{node_name}", f"node {node_name}: {why}")


def _check_mgmt_mtu(found: _Problems, catalog: Catalog) -> None:
    """VM NICs on mgmt: not below their node's management MTU."""
    mgmt_mtu = DEFAULT_MGMT_NETWORK_MTU
    for vm_nic in catalog.all(model.VmNic):
        vm_net = catalog.get(model.Network, vm_nic.network)
        vm_node = catalog.nodes.get(vm_nic.node)
        if vm_net is None or vm_node is None or vm_net.cluster_network != model.MGMT:
            continue
        why = mgmtpath.mtu_problem(mgmt_mtu, vm_node.mgmt)
        if why is not None:
            found.add(
                vm_nic,
                "network",
                f"network {vm_net.name} is on mgmt and its VM NICs get MTU {mgmt_mtu}; "
                f"node {vm_nic.node}: {why}",
            )


DEFAULT_MGMT_NETWORK_MTU = DEFAULT_MTU
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
