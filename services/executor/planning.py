"""From differences to ordered steps: what the executor will do to the kernel, and in what order.

:func:`plan` is pure. It takes the desired and the actual :class:`~shared.l2state.NodeL2State`,
asks :func:`shared.l2state.diff` what differs (the same diff the auditor reports as drift),
and turns the items into :class:`Step` objects in the safe order of DESIGN.md:

removals first, in reverse (host VLAN interfaces, VIDs, ports released, bonds and bridges
deleted), then additions and changes: bond with mode and options → ports down → enslave →
MTU → up → bridge with ``vlan_filtering`` → bond as bridge port → VIDs (ranges, one request
each) → host VLAN interfaces with the ``self`` VID → VM namespaces and NICs (bridge CNI, then
exact VIDs). VM NICs to unplug (CNI DEL) and their emptied namespaces come last.

Kernel surprises the order encodes: a bond's mode (and MAC, which it passes to its ports) can
only change with no ports and the bond down; a port is enslaved while down; a bridge takes
its ports' MTU when they change, so its own is set again after; deleting an IPv4 primary
address deletes its subnet's secondaries, so deletions come first; a port that sits in a link
l2net does not own is never taken from it (the kernel would silently move it).

Crashes: the plan is made from what the kernel holds, and every step leaves a state the next
plan continues from, so an executor that died anywhere converges when it starts again. What
it left half-made reads as l2net's (see :mod:`services.executor.kernel`): an unnamed link it
created is completed or deleted, a VM namespace it recorded and no VM wants is deleted, a
NIC's record of what l2net found (:func:`shared.l2state.port_record`) is kept while it is
held and restored when it is released for good.

No differences → no steps: the executor then writes nothing at all.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from typing import Any

import msgspec

from shared.errors import Refused
from shared.l2state import (
    ABSENT,
    PRESENT,
    Difference,
    LinkState,
    NodeL2State,
    diff,
    is_owned,
    is_vm_port,
    parse_port_record,
    port_record,
    vlan_changes,
)
from shared.model import VlanRange


class Step(msgspec.Struct, kw_only=True, frozen=True):
    """One kernel change. ``target`` is a link name, ``vm/<vm>/<ifname>`` or a VM name.

    Operations: ``link.create``, ``link.set``, ``link.delete``, ``addr.add``, ``addr.del``,
    ``vlan.add``, ``vlan.del`` (``args.ranges``, ``args.self`` for a bridge's own VIDs),
    ``vm.vlans`` (make a VM NIC's VIDs exactly ``args.vlans``), ``netns.add``, ``netns.del``,
    ``cni.add``, ``cni.del``.
    """

    op: str
    target: str
    args: dict[str, Any] = msgspec.field(default_factory=dict)

    def describe(self) -> str:
        """One line for logs, status results and span names."""
        details = []
        for key, value in self.args.items():
            if key == "config":
                continue
            if key in ("ranges", "vlans"):
                value = ",".join(_range_text(r) for r in value) or "none"
            details.append(f"{key}={value}")
        return f"{self.op} {self.target}" + (f" ({', '.join(details)})" if details else "")


def _range_text(r: VlanRange) -> str:
    text = f"{r.vid}-{r.last}" if r.last != r.vid else str(r.vid)
    return text + (" pvid" if r.pvid else "") + (" untagged" if r.untagged else "")


class PlanError(Refused, ValueError):
    """The desired state cannot be reached without touching what l2net must not touch."""


_SETTABLE = ("mtu", "txqlen", "mac", "alias", "vlan_filtering")


def plan(desired: NodeL2State, actual: NodeL2State) -> list[Step]:
    """The ordered steps that take ``actual`` to ``desired`` (empty when they agree)."""
    items = diff(desired, actual)
    if not items:
        return []
    by_obj: dict[str, dict[str, Difference]] = defaultdict(dict)
    for item in items:
        by_obj[item.object][item.path] = item
    protected = set(desired.protected)
    _refuse_protected(by_obj, protected)

    def missing(obj: str) -> bool:
        d = by_obj.get(obj, {}).get("")
        return d is not None and d.desired == PRESENT

    def extra(obj: str) -> bool:
        d = by_obj.get(obj, {}).get("")
        return d is not None and d.desired == ABSENT

    def changed(obj: str, path: str) -> bool:
        return path in by_obj.get(obj, {})

    removal: list[Step] = []
    create: list[Step] = []
    last: list[Step] = []
    owned = {n for n, lk in actual.links.items() if is_owned(lk) and not is_vm_port(lk)}

    # Ports that leave their master: extra ports of owned links, and ports moving between
    # owned links (released now, enslaved again below). A port of a link l2net does not
    # own is never taken (the kernel would silently move it), except back to a snapshot.
    released: set[str] = set()
    for name, link in sorted(actual.links.items()):
        d = by_obj.get(name, {}).get("master")
        if d is None or link.master is None:
            continue
        if name in desired.links and link.master not in owned and not desired.exact:
            raise PlanError(
                f"{d}: {name} belongs to {link.master}, which l2net does not manage;"
                " release it first"
            )
        released.add(name)

    def fresh(port: str) -> bool:
        """A port whose VIDs the kernel resets (new, or joining a bridge): set them exactly."""
        return port not in actual.links or missing(port) or changed(port, "master")

    # -- removals, in reverse order of creation -----------------------------------------
    for name in sorted(owned):
        if extra(name) and actual.links[name].kind == "vlan":
            removal.append(Step(op="link.delete", target=name))
    vlan_adds: list[Step] = []
    vlan_ports = list(desired.vlans)
    if desired.exact:
        vlan_ports += sorted(set(actual.vlans) - set(desired.vlans))
    for port in vlan_ports:
        want_vlans = desired.vlans.get(port, [])
        if fresh(port) and port in desired.links:
            vlan_adds.append(Step(op="vlan.exact", target=port, args={"vlans": want_vlans}))
            continue
        if not changed(port, "vlans"):
            continue
        add, delete = vlan_changes(want_vlans, actual.vlans.get(port, []))
        is_self = actual.links[port].kind == "bridge"
        if delete:
            removal.append(
                Step(op="vlan.del", target=port, args={"ranges": delete, "self": is_self})
            )
        if add:
            vlan_adds.append(
                Step(op="vlan.add", target=port, args={"ranges": add, "self": is_self})
            )
    for name in sorted(released):
        removal.append(Step(op="link.set", target=name, args={"master": None}))
    for kind in ("bond", "bridge"):
        for name in sorted(owned):
            if extra(name) and actual.links[name].kind == kind:
                removal.append(Step(op="link.delete", target=name))
    # NICs released for good: the admin state and alias l2net found (the release, by a
    # step or with its bond, left them down). One request: alias and state together.
    for name, link in sorted(actual.links.items()):
        found = parse_port_record(link.alias)
        if found is None or not changed(name, "alias") or desired.exact:
            continue
        restore: dict[str, Any] = {"alias": found.alias}
        if found.up:
            restore["up"] = True
        removal.append(Step(op="link.set", target=name, args=restore))

    # -- creations and changes, in the safe order ---------------------------------------
    downed: set[str] = set()
    bonds = [n for n, lk in desired.links.items() if lk.kind == "bond"]
    rebuilt: set[str] = set()  # bonds emptied and downed for a mode or MAC change
    bridges = [n for n, lk in desired.links.items() if lk.kind == "bridge"]
    vlan_links = [n for n, lk in desired.links.items() if lk.kind == "vlan"]
    others = [n for n in desired.links if n not in {*bonds, *bridges, *vlan_links}]

    for name in bonds:
        want = desired.links[name]
        if missing(name):
            create.append(Step(op="link.create", target=name, args=_create_args(want)))
            continue
        if changed(name, "bond.mode") or changed(name, "mac"):
            # The kernel refuses a mode change while the bond has ports or is up, and a bond
            # passes a new MAC on to every port (EBUSY from a port that is up): both are
            # made with the bond empty and down; its ports are enslaved again below.
            rebuilt.add(name)
            for port, link in sorted(actual.links.items()):
                if link.master == name and port not in released:
                    create.append(Step(op="link.set", target=port, args={"master": None}))
                    released.add(port)
            create.append(Step(op="link.set", target=name, args={"up": False}))
            downed.add(name)
            rebuild: dict[str, Any] = {}
            if changed(name, "bond.mode"):
                rebuild = {"bond_mode": want.bond_mode, "bond_options": want.bond_options or {}}
            if changed(name, "mac"):
                rebuild["mac"] = want.mac
            create.append(Step(op="link.set", target=name, args=rebuild))
        else:
            opts = {
                d.path.removeprefix("bond.options."): d.desired
                for p, d in by_obj.get(name, {}).items()
                if p.startswith("bond.options.")
            }
            if opts:
                create.append(Step(op="link.set", target=name, args={"bond_options": opts}))

    enslave: list[str] = []
    for name in others:
        want = desired.links[name]
        have = actual.links.get(name)
        if have is None:
            raise PlanError(f"{name}: desired present, actual absent: no such NIC on this node")
        if want.master in bonds and (name in released or have.master != want.master):
            enslave.append(name)
    for name in enslave:
        have = actual.links[name]
        # What l2net found goes into the NIC's alias in the same request that first changes
        # it (an executor may die right after): restored when the NIC is released for good.
        record: dict[str, Any] = {}
        free = have.master is None  # not one l2net already holds (a bond mode change)
        if free and not desired.exact and parse_port_record(have.alias) is None:
            record = {"alias": port_record(up=bool(have.up), alias=have.alias)}
        if have.up:
            create.append(Step(op="link.set", target=name, args={"up": False, **record}))
            downed.add(name)
            record = {}
        enslaving = {"master": desired.links[name].master, **record}
        create.append(Step(op="link.set", target=name, args=enslaving))
    for name in [*bonds, *others]:
        if missing(name):
            continue
        fields = _settable_changes(by_obj.get(name, {}))
        if name in enslave:
            fields.pop("mtu", None)  # a bond gives its MTU to every port it enslaves
        if name in bonds and name in rebuilt:
            fields.pop("mac", None)  # set with the bond empty, above
        if fields:
            create.append(Step(op="link.set", target=name, args=fields))
    for name in [*others, *bonds]:
        if _wants_up(desired.links[name], actual.links.get(name), name in downed):
            create.append(Step(op="link.set", target=name, args={"up": True}))

    for name in bridges:
        want = desired.links[name]
        if missing(name):
            create.append(Step(op="link.create", target=name, args=_create_args(want)))
        else:
            fields = _settable_changes(by_obj.get(name, {}))
            ports_mtu = any(
                desired.links[p].master == name and changed(p, "mtu") for p in [*bonds, *others]
            )
            if ports_mtu and want.mtu is not None:
                # The kernel gives a bridge its ports' MTU when they change: set it again.
                fields["mtu"] = want.mtu
            if fields:
                create.append(Step(op="link.set", target=name, args=fields))
    for name in [*bonds, *others]:
        want = desired.links[name]
        if want.master in bridges and (
            missing(name) or changed(name, "master") or name in released
        ):
            create.append(Step(op="link.set", target=name, args={"master": want.master}))
    for name in bridges:
        if _wants_up(desired.links[name], actual.links.get(name), False):
            create.append(Step(op="link.set", target=name, args={"up": True}))
    # Ports that just joined a bridge got VID 1 PVID untagged from the kernel: set exactly.
    create.extend(vlan_adds)

    for name in vlan_links:
        want = desired.links[name]
        recreate = changed(name, "vlan.id") or changed(name, "vlan.link")
        if recreate:
            create.append(Step(op="link.delete", target=name))
        if missing(name) or recreate:
            create.append(Step(op="link.create", target=name, args=_create_args(want)))
        else:
            fields = _settable_changes(by_obj.get(name, {}))
            if fields:
                create.append(Step(op="link.set", target=name, args=fields))
        have_addrs = [] if (missing(name) or recreate) else actual.links[name].addresses or []
        add_addrs, del_addrs = _address_changes(want.addresses or [], have_addrs)
        for address in del_addrs:
            create.append(Step(op="addr.del", target=name, args={"address": address}))
        for address in add_addrs:
            create.append(Step(op="addr.add", target=name, args={"address": address}))
        if _wants_up(want, None if recreate else actual.links.get(name), False):
            create.append(Step(op="link.set", target=name, args={"up": True}))

    for name, want in desired.links.items():
        if want.up is False and actual.links.get(name) is not None and actual.links[name].up:
            create.append(Step(op="link.set", target=name, args={"up": False}))

    for vm in desired.namespaces:
        if missing(f"netns/{vm}"):
            create.append(Step(op="netns.add", target=vm))
    for key, vport in desired.vm_ports.items():
        obj = f"vm/{key}"
        fix = Step(op="vm.vlans", target=obj, args={"vlans": vport.vlans or []})
        if missing(obj):
            if vport.bridge not in desired.links and vport.bridge not in actual.links:
                # The bridge plugin would quietly create a bridge of its own.
                raise PlanError(
                    f"{obj}: its bridge {vport.bridge} does not exist on this node and is not"
                    " part of the intent"
                )
            create += [Step(op="cni.add", target=obj, args=_cni_args(vport)), fix]
        elif changed(obj, "bridge"):
            # Released or moved by hand: the VM keeps its NIC, the veth goes back in place.
            host = actual.vm_ports[key].host_ifname or ""
            create += [Step(op="link.set", target=host, args={"master": vport.bridge}), fix]
        elif changed(obj, "vlans"):
            create.append(fix)

    emptied: set[str] = set()
    for key, vport in sorted(actual.vm_ports.items()):
        if extra(f"vm/{key}"):
            last.append(Step(op="cni.del", target=f"vm/{key}", args=_cni_args(vport)))
            emptied.add(vport.vm)
    remaining = {p.vm for k, p in actual.vm_ports.items() if not extra(f"vm/{k}")}
    # Namespaces emptied now, and those l2net made that no VM wants (one left half-made by
    # an executor that died, with a half-plugged NIC inside: deleting it takes that along).
    emptied |= {vm for vm in actual.owned_namespaces if extra(f"netns/{vm}")}
    for vm in sorted(emptied - remaining - set(desired.namespaces)):
        if vm in actual.namespaces or vm in actual.owned_namespaces:
            last.append(Step(op="netns.del", target=vm))
    return removal + create + last


def _address_changes(want: list[str], have: list[str]) -> tuple[list[str], list[str]]:
    """(to add, to delete) for a link's addresses, deletions to run first.

    The kernel deletes an IPv4 subnet's secondary addresses with its primary (unless
    ``promote_secondaries``), so a subnet with a deletion is emptied and its desired
    addresses added again: a new address in the same subnet then never dies with the old.
    """
    add = set(want) - set(have)
    delete = set(have) - set(want)
    touched = {_subnet(a) for a in delete} - {None}
    for address in set(want) & set(have):
        if _subnet(address) in touched:
            add.add(address)
            delete.add(address)
    return sorted(add), sorted(delete)


def _subnet(address: str) -> str | None:
    try:
        iface = ipaddress.ip_interface(address)
    except ValueError:
        return None
    return str(iface.network) if iface.version == 4 else None


def _refuse_protected(by_obj: dict[str, dict[str, Difference]], protected: set[str]) -> None:
    for obj, paths in by_obj.items():
        if obj in protected and "" in paths:
            raise PlanError(
                f"{obj} is missing: l2net never creates it (the node's installer does);"
                " networks on mgmt cannot be applied on this node"
            )
        if obj in protected and set(paths) - {"vlans"}:
            what = "; ".join(str(d) for d in paths.values() if d.path != "vlans")
            raise PlanError(f"{obj} is protected and is never changed by l2net ({what})")


def _settable_changes(paths: dict[str, Difference]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for d in paths.values():
        name = {"bridge.vlanFiltering": "vlan_filtering"}.get(d.path, d.path)
        if name in _SETTABLE:
            fields[name] = d.desired
    return fields


def _wants_up(want: LinkState, have: LinkState | None, downed: bool) -> bool:
    return bool(want.up) and (have is None or downed or not have.up)


def _create_args(want: LinkState) -> dict[str, Any]:
    raw = msgspec.structs.asdict(want)
    keep = (
        "kind",
        "alias",
        "mtu",
        "txqlen",
        "mac",
        "bond_mode",
        "bond_options",
        "vlan_filtering",
        "vlan_id",
        "vlan_link",
    )
    return {k: raw[k] for k in keep if raw.get(k) is not None}


def _cni_args(port: Any) -> dict[str, Any]:
    return {
        "vm": port.vm,
        "ifname": port.ifname,
        "network": port.network,
        "bridge": port.bridge,
        "config": port.cni_config,
        "mac": port.mac,
    }
