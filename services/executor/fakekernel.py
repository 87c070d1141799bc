"""A :class:`~services.executor.kernel.Kernel` in memory: the pure core's algebra without Linux.

:class:`FakeKernel` holds a node's L2 state (links, VIDs per port, VM namespaces) and applies
:class:`~services.executor.planning.Step` objects to it the way the kernel, the bridge CNI
plugin and :class:`~services.executor.kernel.NetlinkKernel` do, so that the executor's own
code (:func:`~services.executor.reconciling.converge`, its rollback) runs against it
unchanged, in microseconds. The property tests (``tests/executor/test_fake_kernel.py``)
prove with it that a plan reaches its desired state, that a rollback from any step returns
to the snapshot exactly, and that a second plan is empty. The lab proves the real kernel
behaves the same; this proves the algebra. Only tests and benches use it.

What it models of the kernel, because the plan's order depends on it (a refusal is a
:class:`~services.executor.kernel.KernelError`, as from the real one):

* a port is enslaved to a bond only while down (``EPERM``); the bond opens it, gives it its
  MTU, and a release (by a step, or with its bond) closes it and restores its own MTU;
* a bond's mode changes only while it has no ports and is down; its MAC only while none of
  its ports is up (``EBUSY``); its MTU goes to its ports;
* a port joining a bridge (and a new bridge, for itself) gets VID 1 PVID untagged, and loses
  its VIDs when it leaves; a port has one PVID at most (a new one moves it);
* deleting a link releases its ports and deletes the VLAN devices on it; deleting a VM
  namespace takes its NIC, and so the host veth, along;
* deleting an IPv4 subnet's primary address deletes the subnet's other addresses;
* the bridge CNI plugin names the host veth (here after the VM NIC, so a NIC plugged again
  gets the same name) and needs its namespace and bridge.

What it does not: operational state, carrier, MAC inheritance between bonds and ports,
bond options a mode refuses, MTU limits of VLAN devices.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
from collections.abc import AsyncIterator, Callable

import msgspec

from services.executor.kernel import KernelError
from services.executor.planning import Step
from shared.domain.l2state import (
    LinkState,
    NodeL2State,
    VlanFlags,
    build_actual,
    compress_vlans,
    expand_vlans,
    owner_alias,
    parse_alias,
    port_key,
    vlan_changes,
)
from shared.domain.model import Nic, VlanRange

DEFAULT_MTU = 1500
DEFAULT_TXQLEN = 1000
BOND_DEFAULTS: dict[str, object] = {
    "miimon": 0,
    "updelay": 0,
    "downdelay": 0,
    "arp_interval": 0,
    "xmit_hash_policy": "layer2",
    "lacp_rate": "slow",
    "ad_select": "stable",
    "arp_validate": "none",
}
"""The options a new bond reads back with (the kernel reports every one)."""


def _mac(name: str) -> str:
    """A stable, locally administered unicast MAC for a link made here."""
    digest = hashlib.sha1(name.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def veth_name(key: str) -> str:
    """The host veth name the fake CNI plugin gives VM NIC ``<vm>/<ifname>``."""
    return "veth" + hashlib.sha1(key.encode()).hexdigest()[:8]


class FakeKernel:
    """:class:`~services.executor.kernel.Kernel` over a :class:`NodeL2State` in memory.

    ``state`` is what the node holds at first (as :meth:`read` reports it); ``fail`` is
    called before every step and may raise to make the kernel refuse it.
    """

    def __init__(
        self, state: NodeL2State, *, fail: Callable[[Step], str | None] | None = None
    ) -> None:
        self.node = state.node
        self.mgmt_vlan = state.mgmt_vlan
        self._links: dict[str, LinkState] = {
            name: msgspec.structs.replace(
                link,
                index=None,
                oper=None,
                bond_active=None,
                bond_options=dict(link.bond_options) if link.bond_options is not None else None,
                addresses=list(link.addresses or []),
            )
            for name, link in state.links.items()
        }
        self._vids: dict[str, dict[int, VlanFlags]] = {
            name: expand_vlans(ranges) for name, ranges in state.vlans.items()
        }
        self._namespaces = set(state.namespaces)
        self._owned = set(state.owned_namespaces)
        self._own_mtu: dict[str, int] = {
            name: link.mtu or DEFAULT_MTU
            for name, link in self._links.items()
            if link.master in self._links and self._links[link.master].kind == "bond"
        }
        """A bond port's MTU before it was enslaved (restored on release)."""
        self._fail = fail
        self._writes = 0
        self.applied: list[Step] = []

    # -- the Kernel protocol --------------------------------------------------------------

    @property
    def writes(self) -> int:
        return self._writes

    async def read(self) -> NodeL2State:
        return self.state()

    async def apply(self, step: Step) -> None:
        why = self._fail(step) if self._fail is not None else None
        if why is not None:
            raise KernelError(step, why)
        self.run(step)

    def run(self, step: Step) -> None:
        """:meth:`apply` without the event loop (and without ``fail``)."""
        handler = _HANDLERS.get(step.op)
        if handler is None:
            raise KernelError(step, f"unknown step operation {step.op!r}")
        self._writes += 1
        handler(self, step)
        self.applied.append(step)

    async def events(self) -> AsyncIterator[str]:
        return
        yield  # an async generator that reports nothing: nothing changes by itself here

    async def nics(self) -> list[Nic]:
        return [
            Nic(name=n, mac=lk.mac or "", state="up" if lk.up else "down", master=lk.master)
            for n, lk in sorted(self._links.items())
            if lk.kind == "device"
        ]

    async def close(self) -> None:
        return None

    # -- reading ----------------------------------------------------------------------------

    def state(self) -> NodeL2State:
        """What the node holds now, as :meth:`NetlinkKernel.read` reports it."""
        links = [
            msgspec.structs.replace(
                link,
                bond_options=dict(link.bond_options) if link.bond_options is not None else None,
                addresses=sorted(link.addresses or []),
            )
            for link in self._links.values()
        ]
        return build_actual(
            node=self.node,
            links=links,
            vlans={name: compress_vlans(vids) for name, vids in self._vids.items()},
            namespaces=self._namespaces,
            mgmt_vlan=self.mgmt_vlan,
            owned_namespaces=self._owned,
        )

    def _link(self, step: Step, name: str | None, kind: str | None = None) -> LinkState:
        link = self._links.get(name or "")
        if link is None:
            raise KernelError(step, f"no link named {name}", code=errno.ENODEV)
        if kind is not None and link.kind != kind:
            raise KernelError(step, f"{name} is not a {kind}", code=errno.EOPNOTSUPP)
        return link

    def _ports(self, master: str) -> list[LinkState]:
        return [lk for lk in self._links.values() if lk.master == master]

    # -- links ----------------------------------------------------------------------------

    def _link_create(self, step: Step) -> None:
        a = step.args
        kind = a.get("kind")
        if step.target in self._links:
            raise KernelError(step, "File exists", code=errno.EEXIST)
        link = LinkState(
            name=step.target,
            kind=kind,
            alias=a.get("alias"),
            up=False,
            mtu=a.get("mtu") or DEFAULT_MTU,
            mac=a.get("mac") or _mac(step.target),
            txqlen=a["txqlen"] if a.get("txqlen") is not None else DEFAULT_TXQLEN,
            addresses=[],
        )
        if kind == "bond":
            link.bond_mode = a.get("bond_mode") or "balance-rr"
            link.bond_options = {**BOND_DEFAULTS, **(a.get("bond_options") or {})}
        elif kind == "bridge":
            link.vlan_filtering = bool(a.get("vlan_filtering"))
            self._vids[step.target] = {1: (True, True)}
        elif kind == "vlan":
            lower = self._link(step, a.get("vlan_link"))
            link.vlan_id, link.vlan_link = a["vlan_id"], lower.name
            link.mtu = a.get("mtu") or lower.mtu
        else:
            raise KernelError(step, f"l2net does not create links of kind {kind!r}")
        self._links[step.target] = link

    def _link_set(self, step: Step) -> None:
        link = self._link(step, step.target)
        a = step.args
        if "bond_mode" in a or "bond_options" in a:
            self._set_bond(step)
        if a.get("vlan_filtering") is not None:
            self._link(step, step.target, "bridge").vlan_filtering = bool(a["vlan_filtering"])
        if a.get("mac"):
            if link.kind == "bond" and any(p.up for p in self._ports(link.name)):
                raise KernelError(step, "a port of the bond is up", code=errno.EBUSY)
            link.mac = a["mac"]
        if a.get("mtu") is not None:
            link.mtu = a["mtu"]
            if link.kind == "bond":
                for port in self._ports(link.name):
                    port.mtu = a["mtu"]
        if a.get("txqlen") is not None:
            link.txqlen = a["txqlen"]
        if "alias" in a:
            link.alias = a["alias"] or None
        if "master" in a:
            self._set_master(step, link, a["master"])
        if "up" in a:
            link.up = bool(a["up"])

    def _set_bond(self, step: Step) -> None:
        bond = self._link(step, step.target, "bond")
        if "bond_mode" in step.args:
            if bond.up or self._ports(bond.name):
                raise KernelError(
                    step, "a bond changes mode only down and without ports", code=errno.EBUSY
                )
            bond.bond_mode = step.args["bond_mode"]
        bond.bond_options = {**(bond.bond_options or {}), **(step.args.get("bond_options") or {})}

    def _set_master(self, step: Step, link: LinkState, master: str | None) -> None:
        if master == link.master:
            return
        new = self._link(step, master) if master is not None else None
        if new is not None and new.kind not in ("bond", "bridge"):
            raise KernelError(step, f"{master} takes no ports", code=errno.EOPNOTSUPP)
        self._release(link)
        if new is None:
            return
        if new.kind == "bond":
            if link.up:
                raise KernelError(step, "Device can not be enslaved while up", code=errno.EPERM)
            self._own_mtu[link.name] = link.mtu or DEFAULT_MTU
            link.mtu = new.mtu
            link.up = True  # the bond opens the ports it enslaves
        else:
            self._vids[link.name] = {1: (True, True)}
        link.master = new.name

    def _release(self, port: LinkState) -> None:
        """``port`` out of its master: a bond closes it and gives it its MTU back; a bridge
        takes its VIDs."""
        master = self._links.get(port.master or "")
        port.master = None
        if master is None:
            return
        if master.kind == "bond":
            port.up = False
            port.mtu = self._own_mtu.pop(port.name, port.mtu)
        else:
            self._vids.pop(port.name, None)

    def _link_delete(self, step: Step) -> None:
        self._delete(self._link(step, step.target))

    def _delete(self, link: LinkState) -> None:
        for port in self._ports(link.name):
            self._release(port)
        for upper in [lk for lk in self._links.values() if lk.vlan_link == link.name]:
            self._delete(upper)
        self._release(link)
        del self._links[link.name]
        self._vids.pop(link.name, None)
        self._own_mtu.pop(link.name, None)

    # -- addresses --------------------------------------------------------------------------

    def _addr_add(self, step: Step) -> None:
        link = self._link(step, step.target)
        addresses = link.addresses if link.addresses is not None else []
        if step.args["address"] in addresses:
            raise KernelError(step, "File exists", code=errno.EEXIST)
        link.addresses = [*addresses, step.args["address"]]

    def _addr_del(self, step: Step) -> None:
        link = self._link(step, step.target)
        addresses = list(link.addresses or [])
        gone = step.args["address"]
        if gone not in addresses:
            return  # gone already (with its primary): NetlinkKernel does not mind either
        subnet = _subnet(gone)
        primary = next((a for a in addresses if subnet and _subnet(a) == subnet), None)
        if subnet is not None and primary == gone:
            # Without promote_secondaries, the primary takes its subnet's secondaries along.
            link.addresses = [a for a in addresses if _subnet(a) != subnet]
        else:
            link.addresses = [a for a in addresses if a != gone]

    # -- VLANs ------------------------------------------------------------------------------

    def _vid_port(self, step: Step, name: str, *, self_: bool) -> LinkState:
        link = self._link(step, name)
        if self_:
            return self._link(step, name, "bridge")
        master = self._links.get(link.master or "")
        if master is None or master.kind != "bridge":
            raise KernelError(step, f"{name} is not a bridge port", code=errno.EOPNOTSUPP)
        return link

    def _add_vids(self, port: str, ranges: list[VlanRange]) -> None:
        vids = self._vids.setdefault(port, {})
        for vid, (pvid, untagged) in expand_vlans(ranges).items():
            if pvid:  # one PVID per port: the new one moves it
                vids.update({v: (False, u) for v, (p, u) in vids.items() if p})
            vids[vid] = (pvid, untagged)

    def _del_vids(self, port: str, ranges: list[VlanRange]) -> None:
        vids = self._vids.get(port, {})
        for vid in expand_vlans(ranges):
            vids.pop(vid, None)

    def _vlan(self, step: Step) -> None:
        port = self._vid_port(step, step.target, self_=bool(step.args.get("self")))
        if step.op == "vlan.add":
            self._add_vids(port.name, step.args["ranges"])
        else:
            self._del_vids(port.name, step.args["ranges"])

    def _exact_vids(self, step: Step, port: LinkState, want: list[VlanRange]) -> None:
        self._vid_port(step, port.name, self_=port.kind == "bridge")
        add, delete = vlan_changes(want, compress_vlans(self._vids.get(port.name, {})))
        self._del_vids(port.name, delete)
        self._add_vids(port.name, add)

    def _vlan_exact(self, step: Step) -> None:
        self._exact_vids(step, self._link(step, step.target), step.args["vlans"])

    def _vm_vlans(self, step: Step) -> None:
        host = self._vm_host(step.target.removeprefix("vm/"))
        if host is None:
            raise KernelError(step, f"VM NIC {step.target} is not plugged", code=errno.ENODEV)
        bridge = self._links.get(host.master or "")
        if bridge is not None and bridge.kind == "bridge" and not bridge.vlan_filtering:
            want = expand_vlans(step.args["vlans"])
            if set(want) <= {1} and all(f == (True, True) for f in want.values()):
                return  # no VLAN filtering: the port is untagged anyway
        self._exact_vids(step, host, step.args["vlans"])

    # -- VM namespaces and NICs -------------------------------------------------------------

    def _vm_host(self, key: str) -> LinkState | None:
        found = None
        for link in self._links.values():
            fields = parse_alias(link.alias)
            if fields and port_key(fields.get("vm", ""), fields.get("if", "")) == key:
                found = link
        return found

    def _netns_add(self, step: Step) -> None:
        if step.target in self._namespaces:
            raise KernelError(step, "File exists", code=errno.EEXIST)
        self._owned.add(step.target)
        self._namespaces.add(step.target)

    def _netns_del(self, step: Step) -> None:
        for link in list(self._links.values()):
            fields = parse_alias(link.alias)
            if fields and fields.get("vm") == step.target and "if" in fields:
                self._delete(link)  # the VM's end goes with its namespace, and the pair
        self._namespaces.discard(step.target)
        self._owned.discard(step.target)

    def _cni_add(self, step: Step) -> None:
        a = step.args
        key = port_key(a["vm"], a["ifname"])
        if a["vm"] not in self._namespaces:
            raise KernelError(step, f"no network namespace {a['vm']}", code=errno.ENOENT)
        bridge = self._link(step, a.get("bridge"), "bridge")
        if self._vm_host(key) is not None or veth_name(key) in self._links:
            raise KernelError(step, f"{a['ifname']} already exists", code=errno.EEXIST)
        name = veth_name(key)
        self._links[name] = LinkState(
            name=name,
            kind="veth",
            alias=owner_alias(vm=a["vm"], net=a.get("network") or "", **{"if": a["ifname"]}),
            master=bridge.name,
            up=True,
            mtu=bridge.mtu,
            mac=_mac(name),
            txqlen=DEFAULT_TXQLEN,
            addresses=[],
        )
        self._vids[name] = {1: (True, True)}

    def _cni_del(self, step: Step) -> None:
        host = self._vm_host(port_key(step.args["vm"], step.args["ifname"]))
        if host is not None:
            self._delete(host)


def _subnet(address: str) -> str | None:
    iface = ipaddress.ip_interface(address)
    return str(iface.network) if iface.version == 4 else None


_HANDLERS: dict[str, Callable[[FakeKernel, Step], None]] = {
    "link.create": FakeKernel._link_create,
    "link.set": FakeKernel._link_set,
    "link.delete": FakeKernel._link_delete,
    "addr.add": FakeKernel._addr_add,
    "addr.del": FakeKernel._addr_del,
    "vlan.add": FakeKernel._vlan,
    "vlan.del": FakeKernel._vlan,
    "vlan.exact": FakeKernel._vlan_exact,
    "vm.vlans": FakeKernel._vm_vlans,
    "netns.add": FakeKernel._netns_add,
    "netns.del": FakeKernel._netns_del,
    "cni.add": FakeKernel._cni_add,
    "cni.del": FakeKernel._cni_del,
}
