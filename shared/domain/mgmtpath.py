"""The management path: the rules that keep a node reachable from the control plane.

A node reaches NATS over its management interface (``mgmt-br``, or ``mgmt-br.<vid>`` with a
management VLAN) through the bond ``mgmt-bo``. One netlink write can cut that path; these
are the ways an l2net object could, each answered by one small pure check that the planner
(validation, with what nodes report in :class:`~shared.domain.model.MgmtPath`) and the executor
(:func:`shared.domain.l2state.desired_state`, with what it reads from its own kernel) both apply:

* **VID 1 on mgmt.** Untagged management traffic rides ``mgmt-bo``'s PVID, VID 1 egress
  untagged. A network on mgmt carrying VID 1 (a VLAN 1 network, a trunk range over 1) would
  re-add VID 1 tagged and take the PVID away; a host network on mgmt with VLAN 1 would do the
  same to ``mgmt-br``'s own (``self``) VID 1.
* **The management VLAN.** A network on mgmt carrying the node's management VLAN would put
  VMs into it (any of them can then answer for the gateway's or the node's address).
* **Addresses.** A host address adds a connected route for its subnet on another
  interface. That route takes the path to NATS away when the subnet contains the NATS server
  (any server the executor may connect to), a management gateway, the node's own
  management address or another node's, when it is a management subnet itself (two equal
  routes: either may win), or when it overlaps a destination the node routes through a
  gateway on its management interface. A subnet inside the management subnet that holds
  none of those shadows only that slice of it, and is allowed (the lab, whose every address
  is in 169.254.0.0/16 by rule, needs that).
* **MTU.** A VM port joining ``mgmt-br`` with an MTU below the management interface's lowers
  the bridge's MTU to it (the kernel sizes a bridge to its smallest port).
* **NICs.** A NIC under ``mgmt-bo`` taken into another bond leaves the management bond.

Every function returns the reason as text (None: no problem), worded to follow the name
of the object and field that carry the value. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from shared.domain.model import MgmtPath
from shared.domain.vocabulary import DEFAULT_MTU

MGMT_PVID = 1
"""The VID untagged management traffic rides on ``mgmt-bo`` (PVID, egress untagged)."""

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def vid_problem(lo: int, hi: int, *, mgmt_vlan: int | None) -> str | None:
    """Why VIDs ``lo``..``hi`` cannot ride the mgmt cluster network (None: they can)."""
    if lo <= MGMT_PVID <= hi:
        return (
            f"VID {MGMT_PVID} is mgmt-bo's PVID, which carries the untagged management "
            "traffic; tagging it on mgmt would cut every node off from the control plane"
        )
    if mgmt_vlan is not None and lo <= mgmt_vlan <= hi:
        return (
            f"VLAN {mgmt_vlan} is the management VLAN; VMs on it could take the "
            "management addresses and cut the node off from the control plane"
        )
    return None


def host_vid_problem(vid: int, *, mgmt_vlan: int | None) -> str | None:
    """Why a host VLAN interface ``mgmt-br.<vid>`` cannot exist (None: it can)."""
    if vid == MGMT_PVID:
        return (
            f"VID {MGMT_PVID} is mgmt-br's own untagged VID, where the management address "
            "listens; a host VLAN interface on it would cut the node off from the control plane"
        )
    if mgmt_vlan is not None and vid == mgmt_vlan:
        return f"VLAN {vid} is the management VLAN; its interface is built in"
    return None


def _networks(cidrs: Iterable[str], *, host: bool) -> list[IpNetwork]:
    out: list[IpNetwork] = []
    for text in cidrs:
        try:
            out.append(
                ipaddress.ip_interface(text).network if host else ipaddress.ip_network(text, False)
            )
        except ValueError:
            continue  # a report l2net cannot read is no reason to refuse anything
    return out


def _addresses(texts: Iterable[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    out = []
    for text in texts:
        try:
            out.append(ipaddress.ip_address(text))
        except ValueError:
            continue
    return out


def address_problem(
    cidr: str, mgmt: MgmtPath | None, *, peers: dict[str, list[str]] | None = None
) -> str | None:
    """Why host address ``cidr`` would cut the management path ``mgmt`` (None: it would not).

    ``peers``: other nodes' management addresses (CIDR) by node, when known (the planner).
    See the module docstring for the rule.
    """
    try:
        net = ipaddress.ip_interface(cidr).network
    except ValueError:
        return None  # the address itself is refused elsewhere, with its own reason
    why = _own_path_problem(cidr, net, mgmt) if mgmt is not None else None
    if why is not None:
        return why
    for peer, addresses in sorted((peers or {}).items()):
        for text in addresses:
            try:
                peer_ip = ipaddress.ip_interface(text).ip
            except ValueError:
                continue
            if peer_ip.version == net.version and peer_ip in net:
                return (
                    f"{cidr} contains the management address {peer_ip} of node {peer}; its "
                    "route would send the traffic to that node out of the wrong interface"
                )
    return None


def _own_path_problem(cidr: str, net: IpNetwork, mgmt: MgmtPath) -> str | None:
    """The node's own path: its subnets and addresses, gateway routes, gateways, NATS."""
    where = mgmt.interface or "the management interface"
    for text in mgmt.addresses:
        try:
            own = ipaddress.ip_interface(text)
        except ValueError:
            continue
        if own.version != net.version:
            continue
        if own.network == net:
            return (
                f"{cidr} is the management subnet {own.network} (on {where}); a second route "
                "to it can take the path to the control plane away from the management "
                "interface"
            )
        if own.ip in net:
            return (
                f"{cidr} contains the node's management address {own.ip} (on {where}); its "
                "route would take the management traffic away from the management interface"
            )
    for dst in _networks(mgmt.routes, host=False):
        if dst.prefixlen and dst.version == net.version and net.overlaps(dst):
            return (
                f"{cidr} overlaps {dst}, routed through {where} on the way to the control "
                "plane; its route would take that path away"
            )
    for label, addresses in (
        ("the NATS server", mgmt.nats_addresses),
        ("the management gateway", mgmt.gateways),
    ):
        for addr in _addresses(addresses):
            if addr.version == net.version and addr in net:
                return (
                    f"{cidr} contains {label} {addr}; its route would send the node's "
                    f"traffic to {addr} out of the wrong interface"
                )
    return None


def mtu_problem(mtu: int, mgmt: MgmtPath | None) -> str | None:
    """Why a port of MTU ``mtu`` (0: the kernel's 1500) cannot join ``mgmt-br``."""
    if mgmt is None or not mgmt.mtu:
        return None
    mtu = mtu or DEFAULT_MTU
    if mtu < mgmt.mtu:
        return (
            f"MTU {mtu} is below the management MTU {mgmt.mtu} ({mgmt.interface or 'mgmt'}); "
            "a smaller port lowers mgmt-br's MTU to its own"
        )
    return None


def nic_problem(nic: str, mgmt: MgmtPath | None) -> str | None:
    """Why ``nic`` cannot be taken into another bond (a member of the management bond)."""
    if mgmt is not None and nic in mgmt.nics:
        return (
            f"{nic} is a member of mgmt-bo, the management path; taking it would cut the "
            "node off from the control plane"
        )
    return None
