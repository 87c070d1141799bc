"""From differences to ordered steps: what the executor will do to the kernel, and in what order.

:func:`plan` is pure. It takes the desired and the actual
:class:`~shared.domain.l2state.NodeL2State`,
asks :func:`shared.domain.l2state.diff` what differs (the same diff the auditor reports as drift),
and turns the items into :class:`Step` objects in the safe order of DESIGN.md.

The items are typed (:class:`~shared.domain.l2state.Difference`: an operation, an object kind and
name, a field) and indexed by object (:class:`Changes`); the plan reads as its phases, each a
small function whose results the next ones take explicitly (:class:`BondPhase`,
:class:`EnslavePhase`): **removals** in reverse order of creation (host VLAN interfaces,
VIDs, ports released, bonds and bridges deleted, NICs given back) → **bonds** (created,
rebuilt for a mode or MAC, options) → **enslave** (ports down, then into their bond) →
**link fields** (MTU, txqlen, MAC, alias; then up) → **bridges** (with ``vlan_filtering``,
their ports, up; then VIDs, one request per range) → **VLAN links** (host VLAN interfaces,
their addresses) → **VM ports** (namespaces, bridge CNI, exact VIDs) → **unplug** (CNI DEL
and the namespaces left empty).

Kernel surprises the order encodes: a bond's mode (and MAC, which it passes to its ports) can
only change with no ports and the bond down; a port is enslaved while down; a bridge takes
its ports' MTU when they change, so its own is set again after; deleting an IPv4 primary
address deletes its subnet's secondaries, so deletions come first; a port that sits in a link
l2net does not own is never taken from it (the kernel would silently move it).

Crashes: the plan is made from what the kernel holds, and every step leaves a state the next
plan continues from, so an executor that died anywhere converges when it starts again. What
it left half-made reads as l2net's (see :mod:`services.executor.kernel`): an unnamed link it
created is completed or deleted, a VM namespace it recorded and no VM wants is deleted, a
NIC's record of what l2net found (:func:`shared.domain.l2state.port_record`) is kept while it is
held and restored when it is released for good.

No differences → no steps: the executor then writes nothing at all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from shared.domain.errors import Refused
from shared.domain.l2state import (
    Difference,
    Field,
    LinkState,
    NodeL2State,
    ObjectKind,
    Op,
    diff,
    owned_links,
    parse_port_record,
    port_record,
    vlan_changes,
)
from shared.domain.model import VlanRange


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


# ---------------------------------------------------------------------------
# The typed index of changes
# ---------------------------------------------------------------------------

_SETTABLE: dict[Field, str] = {
    Field.MTU: "mtu",
    Field.TXQLEN: "txqlen",
    Field.MAC: "mac",
    Field.ALIAS: "alias",
    Field.VLAN_FILTERING: "vlan_filtering",
}
"""Fields one ``link.set`` changes in place, by their step argument."""


@dataclass(frozen=True)
class Changes:
    """The diff of ``desired`` against ``actual``, indexed by object (in the diff's order)."""

    desired: NodeL2State
    actual: NodeL2State
    by_object: Mapping[tuple[ObjectKind, str], list[Difference]]

    @classmethod
    def of(cls, desired: NodeL2State, actual: NodeL2State) -> Changes:
        by_object: dict[tuple[ObjectKind, str], list[Difference]] = {}
        for item in diff(desired, actual):
            by_object.setdefault((item.kind, item.name), []).append(item)
        return cls(desired=desired, actual=actual, by_object=by_object)

    def items(self, name: str, kind: ObjectKind = ObjectKind.LINK) -> list[Difference]:
        return self.by_object.get((kind, name), [])

    def missing(self, name: str, kind: ObjectKind = ObjectKind.LINK) -> bool:
        return any(d.op is Op.ADD for d in self.items(name, kind))

    def extra(self, name: str, kind: ObjectKind = ObjectKind.LINK) -> bool:
        return any(d.op is Op.REMOVE for d in self.items(name, kind))

    def change(
        self, name: str, field: Field, kind: ObjectKind = ObjectKind.LINK
    ) -> Difference | None:
        return next((d for d in self.items(name, kind) if d.field is field), None)

    def changed(self, name: str, field: Field, kind: ObjectKind = ObjectKind.LINK) -> bool:
        return self.change(name, field, kind) is not None

    def bond_options(self, name: str) -> dict[str, Any]:
        """The bond options of ``name`` to set, by kernel name."""
        return {
            d.key: d.desired for d in self.items(name) if d.field is Field.BOND_OPTION and d.key
        }

    def settable(self, name: str) -> dict[str, Any]:
        """The fields of ``name`` one ``link.set`` changes, as its arguments."""
        return {_SETTABLE[d.field]: d.desired for d in self.items(name) if d.field in _SETTABLE}

    def fresh(self, port: str) -> bool:
        """A port whose VIDs the kernel resets (new, or joining a bridge): set them exactly."""
        return (
            port not in self.actual.links or self.missing(port) or self.changed(port, Field.MASTER)
        )


@dataclass(frozen=True)
class Groups:
    """The desired links by kind, in the intent's order: what each phase walks."""

    bonds: list[str]
    bridges: list[str]
    vlan_links: list[str]
    others: list[str]
    """NICs: bond ports (and bridge ports that are neither bonds nor VLAN devices)."""

    @classmethod
    def of(cls, desired: NodeL2State) -> Groups:
        def kind(k: str) -> list[str]:
            return [n for n, lk in desired.links.items() if lk.kind == k]

        bonds, bridges, vlan_links = kind("bond"), kind("bridge"), kind("vlan")
        grouped = {*bonds, *bridges, *vlan_links}
        others = [n for n in desired.links if n not in grouped]
        return cls(bonds=bonds, bridges=bridges, vlan_links=vlan_links, others=others)


@dataclass(frozen=True)
class BondPhase:
    """What the bonds phase did, for the phases after it."""

    steps: list[Step]
    rebuilt: frozenset[str]
    """Bonds emptied and downed for a mode or MAC change."""
    released: frozenset[str]
    """Every port out of its master now: released by the removals or by a rebuild."""


@dataclass(frozen=True)
class EnslavePhase:
    """What the enslave phase did, for the phases after it."""

    steps: list[Step]
    enslaved: frozenset[str]
    downed: frozenset[str]
    """Ports downed to be enslaved (the kernel enslaves a port only while it is down)."""


# ---------------------------------------------------------------------------
# The plan, phase by phase
# ---------------------------------------------------------------------------


def plan(desired: NodeL2State, actual: NodeL2State) -> list[Step]:
    """The ordered steps that take ``actual`` to ``desired`` (empty when they agree)."""
    changes = Changes.of(desired, actual)
    if not changes.by_object:
        return []
    _refuse_protected(changes)
    released = _released_ports(changes)
    groups = Groups.of(desired)
    vid_deletions, vid_additions = _vid_steps(changes)
    bonds = _bond_phase(changes, groups, released)
    enslave = _enslave_phase(changes, groups, bonds.released)
    return [
        *_removals(changes, released, vid_deletions),
        *bonds.steps,
        *enslave.steps,
        *_link_fields(changes, groups, enslaved=enslave.enslaved, rebuilt=bonds.rebuilt),
        *_ups(changes, [*groups.others, *groups.bonds], downed=bonds.rebuilt | enslave.downed),
        *_bridges(changes, groups, released=bonds.released),
        *_addresses(changes, [*groups.bonds, *groups.others, *groups.bridges]),
        # Ports that just joined a bridge got VID 1 PVID untagged from the kernel: set exactly.
        *vid_additions,
        *_vlan_links(changes, groups),
        *_downs(changes),
        *_vm_ports(changes),
        *_unplug(changes),
    ]


def _refuse_protected(changes: Changes) -> None:
    protected = set(changes.desired.protected)
    for (kind, name), items in changes.by_object.items():
        if kind is not ObjectKind.LINK or name not in protected:
            continue
        if any(d.field is None for d in items):
            raise PlanError(
                f"{name} is missing: l2net never creates it (the node's installer does);"
                " networks on mgmt cannot be applied on this node"
            )
        touched = [d for d in items if d.field is not Field.VLANS]
        if touched:
            what = "; ".join(str(d) for d in touched)
            raise PlanError(f"{name} is protected and is never changed by l2net ({what})")


def _released_ports(changes: Changes) -> frozenset[str]:
    """Ports that leave their master: extra ports of owned links, and ports moving between
    owned links (released now, enslaved again later). A port of a link l2net does not own is
    never taken (the kernel would silently move it), except back to a snapshot."""
    desired, actual = changes.desired, changes.actual
    owned = owned_links(actual)
    released: set[str] = set()
    for name, link in sorted(actual.links.items()):
        d = changes.change(name, Field.MASTER)
        if d is None or link.master is None:
            continue
        if name in desired.links and link.master not in owned and not desired.exact:
            raise PlanError(
                f"{d}: {name} belongs to {link.master}, which l2net does not manage;"
                " release it first"
            )
        released.add(name)
    return frozenset(released)


def _vid_steps(changes: Changes) -> tuple[list[Step], list[Step]]:
    """The VID changes of every port: (deletions, run with the removals; additions, run
    once the ports are in their bridges)."""
    desired, actual = changes.desired, changes.actual
    ports = list(desired.vlans)
    if desired.exact:
        ports += sorted(set(actual.vlans) - set(desired.vlans))
    deletions: list[Step] = []
    additions: list[Step] = []
    for port in ports:
        want = desired.vlans.get(port, [])
        if changes.fresh(port) and port in desired.links:
            additions.append(Step(op="vlan.exact", target=port, args={"vlans": want}))
        elif changes.changed(port, Field.VLANS):
            add, delete = vlan_changes(want, actual.vlans.get(port, []))
            is_self = actual.links[port].kind == "bridge"
            if delete:
                deletions.append(_vid_step("vlan.del", port, delete, is_self=is_self))
            if add:
                additions.append(_vid_step("vlan.add", port, add, is_self=is_self))
    return deletions, additions


def _vid_step(op: str, port: str, ranges: list[VlanRange], *, is_self: bool) -> Step:
    return Step(op=op, target=port, args={"ranges": ranges, "self": is_self})


def _removals(changes: Changes, released: frozenset[str], vid_deletions: list[Step]) -> list[Step]:
    """In reverse order of creation: host VLAN interfaces, VIDs, ports released, bonds and
    bridges deleted, NICs released for good."""
    actual = changes.actual
    extra = [n for n in sorted(owned_links(actual)) if changes.extra(n)]

    def deleted(kind: str) -> list[Step]:
        return [Step(op="link.delete", target=n) for n in extra if actual.links[n].kind == kind]

    return [
        *deleted("vlan"),
        *vid_deletions,
        *(Step(op="link.set", target=n, args={"master": None}) for n in sorted(released)),
        *deleted("bond"),
        *deleted("bridge"),
        *_restored_nics(changes),
    ]


def _restored_nics(changes: Changes) -> list[Step]:
    """NICs released for good: the admin state and alias l2net found (the release, by a step
    or with its bond, left them down). One request: alias and state together."""
    if changes.desired.exact:
        return []
    steps = []
    for name, link in sorted(changes.actual.links.items()):
        found = parse_port_record(link.alias)
        if found is None or not changes.changed(name, Field.ALIAS):
            continue
        restore: dict[str, Any] = {"alias": found.alias}
        if found.up:
            restore["up"] = True
        steps.append(Step(op="link.set", target=name, args=restore))
    return steps


def _bond_phase(changes: Changes, groups: Groups, released: frozenset[str]) -> BondPhase:
    """Bonds created, rebuilt (mode, MAC) or given their changed options."""
    steps: list[Step] = []
    rebuilt: set[str] = set()
    out = set(released)
    for name in groups.bonds:
        want = changes.desired.links[name]
        if changes.missing(name):
            steps.append(Step(op="link.create", target=name, args=_create_args(want)))
            continue
        if changes.changed(name, Field.BOND_MODE) or changes.changed(name, Field.MAC):
            ports = _bond_ports(changes.actual, name, exclude=out)
            steps += _rebuild_bond(changes, name, ports)
            rebuilt.add(name)
            out.update(ports)
        options = changes.bond_options(name)
        if options and not changes.changed(name, Field.BOND_MODE):  # a new mode sets them all
            steps.append(Step(op="link.set", target=name, args={"bond_options": options}))
    return BondPhase(steps=steps, rebuilt=frozenset(rebuilt), released=frozenset(out))


def _bond_ports(actual: NodeL2State, bond: str, *, exclude: set[str]) -> list[str]:
    return [p for p, lk in sorted(actual.links.items()) if lk.master == bond and p not in exclude]


def _rebuild_bond(changes: Changes, name: str, ports: list[str]) -> list[Step]:
    """The kernel refuses a mode change while the bond has ports or is up, and a bond passes
    a new MAC on to every port (EBUSY from a port that is up): both are made with the bond
    empty and down; its ports are enslaved again by the next phase."""
    want = changes.desired.links[name]
    rebuild: dict[str, Any] = {}
    if changes.changed(name, Field.BOND_MODE):
        rebuild = {"bond_mode": want.bond_mode, "bond_options": want.bond_options or {}}
    if changes.changed(name, Field.MAC):
        rebuild["mac"] = want.mac
    return [
        *(Step(op="link.set", target=port, args={"master": None}) for port in ports),
        Step(op="link.set", target=name, args={"up": False}),
        Step(op="link.set", target=name, args=rebuild),
    ]


def _enslave_phase(changes: Changes, groups: Groups, released: frozenset[str]) -> EnslavePhase:
    """NICs enslaved to their bonds, each while down."""
    desired, actual = changes.desired, changes.actual
    for name in groups.others:
        if name not in actual.links:
            raise PlanError(f"{name}: desired present, actual absent: no such NIC on this node")
    enslaved = [
        name
        for name in groups.others
        if desired.links[name].master in groups.bonds
        and (name in released or actual.links[name].master != desired.links[name].master)
    ]
    steps: list[Step] = []
    downed: set[str] = set()
    for name in enslaved:
        have = actual.links[name]
        # What l2net found goes into the NIC's alias in the same request that first changes
        # it (an executor may die right after): restored when the NIC is released for good.
        record: dict[str, Any] = {}
        free = have.master is None  # not one l2net already holds (a bond mode change)
        if free and not desired.exact and parse_port_record(have.alias) is None:
            record = {"alias": port_record(up=bool(have.up), alias=have.alias)}
        if have.up:
            steps.append(Step(op="link.set", target=name, args={"up": False, **record}))
            downed.add(name)
            record = {}
        master = desired.links[name].master
        steps.append(Step(op="link.set", target=name, args={"master": master, **record}))
    return EnslavePhase(steps=steps, enslaved=frozenset(enslaved), downed=frozenset(downed))


def _link_fields(
    changes: Changes, groups: Groups, *, enslaved: frozenset[str], rebuilt: frozenset[str]
) -> list[Step]:
    """Fields of bonds and NICs changed in place (MTU, txqlen, MAC, alias)."""
    steps = []
    for name in [*groups.bonds, *groups.others]:
        if changes.missing(name):
            continue
        fields = changes.settable(name)
        if name in enslaved:
            fields.pop("mtu", None)  # a bond gives its MTU to every port it enslaves
        if name in rebuilt:
            fields.pop("mac", None)  # set with the bond empty, by the bond phase
        if fields:
            steps.append(Step(op="link.set", target=name, args=fields))
    return steps


def _ups(changes: Changes, names: list[str], *, downed: frozenset[str]) -> list[Step]:
    """Links brought up: desired up, and down now (or downed by an earlier phase)."""
    return [
        Step(op="link.set", target=name, args={"up": True})
        for name in names
        if _wants_up(changes.desired.links[name], changes.actual.links.get(name), name in downed)
    ]


def _bridges(changes: Changes, groups: Groups, *, released: frozenset[str]) -> list[Step]:
    """Bridges created or changed, their ports (bonds, NICs) enslaved, then bridges up."""
    ports = [*groups.bonds, *groups.others]
    made = [_bridge_step(changes, name, ports) for name in groups.bridges]
    joining = [
        Step(op="link.set", target=name, args={"master": changes.desired.links[name].master})
        for name in ports
        if changes.desired.links[name].master in groups.bridges
        and (changes.missing(name) or changes.changed(name, Field.MASTER) or name in released)
    ]
    return [
        *(step for step in made if step is not None),
        *joining,
        *_ups(changes, groups.bridges, downed=frozenset()),
    ]


def _bridge_step(changes: Changes, name: str, ports: list[str]) -> Step | None:
    want = changes.desired.links[name]
    if changes.missing(name):
        return Step(op="link.create", target=name, args=_create_args(want))
    fields = changes.settable(name)
    ports_mtu = any(
        changes.desired.links[p].master == name and changes.changed(p, Field.MTU) for p in ports
    )
    if ports_mtu and want.mtu is not None:
        # The kernel gives a bridge its ports' MTU when they change: set it again.
        fields["mtu"] = want.mtu
    return Step(op="link.set", target=name, args=fields) if fields else None


def _vlan_links(changes: Changes, groups: Groups) -> list[Step]:
    """Host VLAN interfaces: re-created when their VID or link changes, else changed in
    place; their addresses (deletions first), then up."""
    steps: list[Step] = []
    for name in groups.vlan_links:
        want = changes.desired.links[name]
        recreate = changes.changed(name, Field.VLAN_ID) or changes.changed(name, Field.VLAN_LINK)
        new = changes.missing(name) or recreate
        if recreate:
            steps.append(Step(op="link.delete", target=name))
        if new:
            steps.append(Step(op="link.create", target=name, args=_create_args(want)))
        elif fields := changes.settable(name):
            steps.append(Step(op="link.set", target=name, args=fields))
        steps += _address_steps(changes, name, want.addresses or [], new=new)
        if _wants_up(want, None if recreate else changes.actual.links.get(name), False):
            steps.append(Step(op="link.set", target=name, args={"up": True}))
    return steps


def _addresses(changes: Changes, names: list[str]) -> list[Step]:
    """Addresses of links other than VLAN interfaces: only a snapshot (rollback) has an
    opinion on them, and a link made again has none."""
    steps: list[Step] = []
    for name in names:
        want = changes.desired.links[name].addresses
        if want is not None and (changes.missing(name) or changes.changed(name, Field.ADDRESSES)):
            steps += _address_steps(changes, name, want, new=changes.missing(name))
    return steps


def _address_steps(changes: Changes, name: str, want: list[str], *, new: bool) -> list[Step]:
    """Deletions, then additions, that give ``name`` the addresses ``want`` (``new``: a
    link made by this plan, without any)."""
    have = [] if new else changes.actual.links[name].addresses or []
    add, delete = _address_changes(want, have)
    return [
        *(Step(op="addr.del", target=name, args={"address": a}) for a in delete),
        *(Step(op="addr.add", target=name, args={"address": a}) for a in add),
    ]


def _downs(changes: Changes) -> list[Step]:
    """Links desired down that are up (a snapshot's)."""
    actual = changes.actual.links
    return [
        Step(op="link.set", target=name, args={"up": False})
        for name, want in changes.desired.links.items()
        if want.up is False and name in actual and actual[name].up
    ]


def _vm_ports(changes: Changes) -> list[Step]:
    """VM namespaces made, then VM NICs plugged (bridge CNI) or put back on their bridge,
    each followed by its exact VIDs."""
    desired, actual = changes.desired, changes.actual
    steps = [
        Step(op="netns.add", target=vm)
        for vm in desired.namespaces
        if changes.missing(vm, ObjectKind.NETNS)
    ]
    for key, vport in desired.vm_ports.items():
        obj = f"vm/{key}"
        fix = Step(op="vm.vlans", target=obj, args={"vlans": vport.vlans or []})
        if changes.missing(key, ObjectKind.VM_PORT):
            if vport.bridge not in desired.links and vport.bridge not in actual.links:
                # The bridge plugin would quietly create a bridge of its own.
                raise PlanError(
                    f"{obj}: its bridge {vport.bridge} does not exist on this node and is not"
                    " part of the intent"
                )
            steps += [Step(op="cni.add", target=obj, args=_cni_args(vport)), fix]
        elif changes.changed(key, Field.BRIDGE, ObjectKind.VM_PORT):
            # Released or moved by hand: the VM keeps its NIC, the veth goes back in place.
            host = actual.vm_ports[key].host_ifname or ""
            steps += [Step(op="link.set", target=host, args={"master": vport.bridge}), fix]
        elif changes.changed(key, Field.VLANS, ObjectKind.VM_PORT):
            steps.append(fix)
    return steps


def _unplug(changes: Changes) -> list[Step]:
    """VM NICs unplugged (CNI DEL), then the VM namespaces left empty: those emptied now, and
    those l2net made that no VM wants (one left half-made by an executor that died, with a
    half-plugged NIC inside: deleting it takes that along)."""
    desired, actual = changes.desired, changes.actual
    gone = {key for key in actual.vm_ports if changes.extra(key, ObjectKind.VM_PORT)}
    steps = [
        Step(op="cni.del", target=f"vm/{key}", args=_cni_args(vport))
        for key, vport in sorted(actual.vm_ports.items())
        if key in gone
    ]
    emptied = {actual.vm_ports[key].vm for key in gone}
    emptied |= {vm for vm in actual.owned_namespaces if changes.extra(vm, ObjectKind.NETNS)}
    remaining = {p.vm for k, p in actual.vm_ports.items() if k not in gone}
    steps += [
        Step(op="netns.del", target=vm)
        for vm in sorted(emptied - remaining - set(desired.namespaces))
        if vm in actual.namespaces or vm in actual.owned_namespaces
    ]
    return steps


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
