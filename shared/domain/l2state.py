"""The actual L2 state of a node, and the one diff between desired and actual.

A node's L2 state is three things the kernel holds:

* **links** by name (bridges, bonds, NICs, VLAN devices, the host side of VM veths) with the
  attributes l2net cares about (master, admin state, MTU, bond mode and options, VLAN
  filtering, ownership alias, addresses);
* **VLANs** per bridge port (and per bridge, for its ``self`` entries), as canonical
  :class:`~shared.domain.model.VlanRange` lists;
* **namespaces**: the VMs (network namespaces named after them).

The same :class:`NodeL2State` describes what a node *should* look like (built from a
:class:`~shared.domain.model.NodeIntent` by :func:`desired_state`, where ``None`` fields mean "no
opinion") and what it *does* look like (read from the kernel, every field filled). The one
:func:`diff` turns the pair into :class:`Difference` items: typed for programs (an
operation, the object's kind and name, the field) and read in nmstate's style (object, field
path, desired, actual): the executor plans its steps from them and the auditor reports them as
drift, so the two can never disagree about what "converged" means.

Ownership is recorded in the kernel itself: every link l2net creates carries an interface
alias starting with ``l2net`` (:func:`owner_alias`), so an executor restarted with no memory
still knows which bridges, bonds, VLAN devices and VM ports are its own, and never touches
anything else. The mgmt bridge, bond and VLAN device are never owned, only their VIDs.

A link l2net was creating when its executor died has no alias yet; the kernel layer marks
such a link at its creation (:data:`UNFINISHED_ALIAS` when read), so it is owned too, and
completed or removed. A VM namespace l2net made is recorded (``owned_namespaces``), so that
one left behind half-made is removed. A NIC l2net enslaves keeps what l2net found (admin
state, alias) in its alias (:func:`port_record`), restored when l2net releases it for good.

Everything here is pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import ipaddress
import itertools
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeGuard

import msgspec

from shared.domain import mgmtpath
from shared.domain.errors import BadInput
from shared.domain.model import (
    MGMT,
    BondIntent,
    ClusterNetworkIntent,
    HostVlanIntent,
    MgmtPath,
    NodeIntent,
    ObservedState,
    VlanRange,
    VmPortIntent,
)
from shared.domain.vocabulary import (
    BOND_ENUMS,
    BOND_INT_MAX,
    BOND_INT_OPTIONS,
    BOND_MODE_NAMES,
    BOND_MODES,
    BOND_OPTIONS,
    CNI_KEYS,
    CNI_PLUGIN,
    DEFAULT_MTU,
    KERNEL_MTU_MAX,
    KERNEL_MTU_MIN,
    MAX_ARP_TARGETS,
    VID_MAX,
    VID_MIN,
    BondMode,
    bridge_cni_config,
    ifname_error,
)

MGMT_BRIDGE = f"{MGMT}-br"
MGMT_BOND = f"{MGMT}-bo"
ALIAS_PREFIX = "l2net"
PORT_RECORD_PREFIX = "l2net-port"
"""A NIC's alias while l2net holds it in a bond: what it found (admin state, alias)."""

_MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")

DEFAULT_PVID = VlanRange(vid=1, pvid=True, untagged=True)
"""What a port gets when it joins a VLAN-filtering bridge: VID 1, PVID, egress untagged."""


class StateError(BadInput, ValueError):
    """A desired state that cannot be expressed (unknown bond option, bad VID...)."""


# ---------------------------------------------------------------------------
# The state structs
# ---------------------------------------------------------------------------


class LinkState(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    """One network interface. In a desired state, ``None`` means "no opinion".

    ``kind`` is the kernel's link kind (``bridge``, ``bond``, ``vlan``, ``veth``) or
    ``device`` for anything without one (a physical NIC).
    """

    name: str
    kind: str | None = None
    index: int | None = None
    alias: str | None = None
    master: str | None = None
    up: bool | None = None
    oper: str | None = None
    mtu: int | None = None
    mac: str | None = None
    txqlen: int | None = None
    bond_mode: str | None = None
    bond_options: dict[str, Any] | None = None
    bond_active: bool | None = None
    vlan_filtering: bool | None = None
    vlan_id: int | None = None
    vlan_link: str | None = None
    addresses: list[str] | None = None


class VmPort(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    """A VM NIC: ``ifname`` inside netns ``vm``, its host veth enslaved to ``bridge``."""

    vm: str
    ifname: str
    network: str
    bridge: str | None = None
    host_ifname: str | None = None
    vlans: list[VlanRange] | None = None
    cni_config: dict[str, Any] | None = None
    mac: str | None = None
    """The VM-side MAC asked for (given to the CNI plugin); not read back from the host."""

    @property
    def key(self) -> str:
        return port_key(self.vm, self.ifname)


class NodeL2State(msgspec.Struct, kw_only=True, rename="camel"):
    """The L2 state of one node: links, VLANs per port, VM namespaces and VM ports.

    Read from the kernel, ``links`` holds every link of the namespace and ``vlans`` every
    port the kernel reported VLANs for. Built from an intent, both hold only what the intent
    has an opinion on. ``protected`` names links l2net must never delete or change.
    """

    node: str = ""
    links: dict[str, LinkState] = msgspec.field(default_factory=dict)
    vlans: dict[str, list[VlanRange]] = msgspec.field(default_factory=dict)
    namespaces: list[str] = msgspec.field(default_factory=list)
    vm_ports: dict[str, VmPort] = msgspec.field(default_factory=dict)
    protected: list[str] = msgspec.field(default_factory=list)
    mgmt_vlan: int | None = None
    owned_namespaces: list[str] = msgspec.field(default_factory=list)
    """VM namespaces this node's executor made (recorded before each was made), mounted or
    not: one not desired is removed, even when it holds no VM NIC l2net knows of (an
    executor that died while making it, or while plugging its NIC)."""
    exact: bool = False
    """A snapshot to return to (rollback): every field counts, ``None`` included."""


class Op(enum.StrEnum):
    """What a :class:`Difference` asks for: an object added or removed, or a field changed."""

    ADD = "add"
    REMOVE = "remove"
    CHANGE = "change"


class ObjectKind(enum.StrEnum):
    """What a :class:`Difference` is about; the value is the prefix of its object's name."""

    LINK = ""
    VM_PORT = "vm/"
    NETNS = "netns/"
    RECORD = "record"
    """Not the kernel's: an intent or observed state the auditor cannot judge (its name is
    ``intent`` or ``observed``, written without a prefix)."""


class Field(enum.StrEnum):
    """A field a :class:`Difference` changes; the value is how its path reads."""

    KIND = "kind"
    ALIAS = "alias"
    MASTER = "master"
    UP = "up"
    MTU = "mtu"
    MAC = "mac"
    TXQLEN = "txqlen"
    BOND_MODE = "bond.mode"
    BOND_OPTION = "bond.options"
    """One bond option, named by :attr:`Difference.key`."""
    VLAN_FILTERING = "bridge.vlanFiltering"
    VLAN_ID = "vlan.id"
    VLAN_LINK = "vlan.link"
    ADDRESSES = "addresses"
    VLANS = "vlans"
    BRIDGE = "bridge"
    """A VM NIC's bridge."""
    GENERATION = "generation"
    """A record's generation, :attr:`Difference.key` (the auditor's findings)."""


class Difference(msgspec.Struct, kw_only=True, frozen=True):
    """One way actual differs from desired, in nmstate's words.

    Structured for programs: ``op`` (add, remove, change), the object (``kind`` and
    ``name``: a link name, ``<vm>/<ifname>`` for a VM NIC, a VM name for its namespace) and
    the ``field`` it changes (None for the object's presence; ``key`` names a bond option).
    ``desired`` and ``actual`` are plain JSON values (``"present"``/``"absent"`` for
    presence). Rendered for people (drift items, status texts) as :attr:`object` (``oob-bo``,
    ``vm/<vm>/<ifname>``, ``netns/<vm>``) and :attr:`path` (``bond.options.miimon``, ``""``
    for presence).
    """

    op: Op
    kind: ObjectKind
    name: str
    field: Field | None = None
    key: str | None = None
    desired: Any
    actual: Any

    @classmethod
    def added(cls, kind: ObjectKind, name: str) -> Difference:
        """``name`` is missing and must be made."""
        return cls(op=Op.ADD, kind=kind, name=name, desired=PRESENT, actual=ABSENT)

    @classmethod
    def removed(cls, kind: ObjectKind, name: str) -> Difference:
        """``name`` is extra and must go."""
        return cls(op=Op.REMOVE, kind=kind, name=name, desired=ABSENT, actual=PRESENT)

    @classmethod
    def changed(
        cls,
        kind: ObjectKind,
        name: str,
        field: Field,
        *,
        desired: Any,
        actual: Any,
        key: str | None = None,
    ) -> Difference:
        """``name``'s ``field`` (bond option ``key``) is ``actual`` and must be ``desired``."""
        return cls(
            op=Op.CHANGE,
            kind=kind,
            name=name,
            field=field,
            key=key,
            desired=desired,
            actual=actual,
        )

    @property
    def object(self) -> str:
        """The object as people read it: ``oob-bo``, ``vm/<vm>/<ifname>``, ``netns/<vm>``."""
        if self.kind is ObjectKind.RECORD:
            return self.name
        return f"{self.kind.value}{self.name}"

    @property
    def path(self) -> str:
        """The field as people read it: ``bond.options.miimon``; ``""`` for presence."""
        if self.field is None:
            return ""
        if self.field is Field.GENERATION:
            return f"{self.field.value} {self.key}"
        if self.key is not None:
            return f"{self.field.value}.{self.key}"
        return self.field.value

    def __str__(self) -> str:
        where = f"{self.object}.{self.path}" if self.path else self.object
        # JSON values, as on the wire (no Python reprs: a client in any language reads them).
        desired, actual = _json(self.desired), _json(self.actual)
        return f"{where}: desired {desired}, actual {actual}"


def _json(value: Any) -> str:
    return msgspec.json.encode(value).decode()


PRESENT = "present"
ABSENT = "absent"


def port_key(vm: str, ifname: str) -> str:
    """Key of a VM NIC in :attr:`NodeL2State.vm_ports`: ``<vm>/<ifname>``."""
    return f"{vm}/{ifname}"


# ---------------------------------------------------------------------------
# Ownership aliases
# ---------------------------------------------------------------------------


def owner_alias(**fields: str) -> str:
    """The interface alias that marks a link as l2net's: ``l2net k=v k=v`` (sorted keys)."""
    return " ".join([ALIAS_PREFIX, *(f"{k}={v}" for k, v in sorted(fields.items()))])


def parse_alias(alias: str | None) -> dict[str, str] | None:
    """The fields of an l2net alias, or None when the link is not l2net's."""
    if not alias:
        return None
    words = alias.split()
    if not words or words[0] != ALIAS_PREFIX:
        return None
    out: dict[str, str] = {}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if sep:
            out[key] = value
    return out


UNFINISHED_ALIAS = owner_alias(unfinished="create")
"""How a link l2net created but had not yet named as its own reads (see module)."""


class PortRecord(msgspec.Struct, frozen=True):
    """What l2net found on a NIC before enslaving it: its admin state and its alias."""

    up: bool
    alias: str | None


def port_record(*, up: bool, alias: str | None) -> str:
    """The alias a NIC carries while l2net holds it: ``l2net-port up=1 <its own alias>``."""
    return f"{PORT_RECORD_PREFIX} up={int(up)}" + (f" {alias}" if alias else "")


def parse_port_record(alias: str | None) -> PortRecord | None:
    """The record :func:`port_record` wrote, or None when ``alias`` is not one."""
    words = (alias or "").split(" ", 2)
    if len(words) < 2 or words[0] != PORT_RECORD_PREFIX or words[1] not in ("up=0", "up=1"):
        return None
    return PortRecord(up=words[1] == "up=1", alias=words[2] if len(words) > 2 else None)


def is_owned(link: LinkState) -> bool:
    """True when l2net created this link (its alias says so)."""
    return parse_alias(link.alias) is not None


# ---------------------------------------------------------------------------
# VLAN sets
# ---------------------------------------------------------------------------
#
# A VID set is kept as ranges end to end: merged, compared and diffed as sorted runs, never
# one entry per VID, so the cost follows the number of ranges, not their width (a 2-4094
# trunk costs what one VID does). expand_vlans and compress_vlans stay for code that wants
# the VID-by-VID map (the fake kernel), and as the reference the range algorithm is tested
# against (tests/shared/test_vlan_ranges.py).

VlanFlags = tuple[bool, bool]
Run = tuple[int, int, VlanFlags]
"""Consecutive VIDs ``first``..``last`` (both included) with the same flags."""


def _checked_last(r: VlanRange) -> int:
    """The last VID of ``r``, or StateError when ``r`` is not a range a port can hold."""
    last = r.last
    if not (VID_MIN <= r.vid <= last <= VID_MAX):
        raise StateError(f"VLAN range {r.vid}-{last} is outside {VID_MIN}-{VID_MAX}")
    if r.pvid and last != r.vid:
        raise StateError(f"VLAN range {r.vid}-{last} cannot be a PVID (one VID only)")
    return last


def expand_vlans(ranges: Iterable[VlanRange]) -> dict[int, VlanFlags]:
    """VID -> (pvid, untagged); a later entry for the same VID wins."""
    out: dict[int, VlanFlags] = {}
    for r in ranges:
        last = _checked_last(r)
        for vid in range(r.vid, last + 1):
            out[vid] = (r.pvid, r.untagged)
    return out


def compress_vlans(entries: Mapping[int, VlanFlags]) -> list[VlanRange]:
    """Canonical ranges: sorted, consecutive VIDs with equal flags merged, PVID alone."""
    return _ranges(_merged((vid, vid, entries[vid]) for vid in sorted(entries)))


def _runs(ranges: Iterable[VlanRange]) -> list[Run]:
    """Sorted, disjoint runs of ``ranges`` (a later entry for the same VID wins), unmerged."""
    items = [(r.vid, _checked_last(r), (r.pvid, r.untagged)) for r in ranges]
    if all(items[i - 1][1] < items[i][0] for i in range(1, len(items))):
        return items  # sorted and disjoint already: what every canonical list is
    # A sweep over the range boundaries: between two boundaries the same ranges hold, and
    # of those the latest entry wins (a heap of the ranges open there, latest on top).
    starts = sorted(range(len(items)), key=lambda i: items[i][0])
    bounds = sorted({b for first, last, _ in items for b in (first, last + 1)})
    open_: list[tuple[int, int]] = []  # (-index, last)
    out: list[Run] = []
    s = 0
    for lo, nxt in itertools.pairwise(bounds):
        while s < len(starts) and items[starts[s]][0] == lo:
            heapq.heappush(open_, (-starts[s], items[starts[s]][1]))
            s += 1
        while open_ and open_[0][1] < lo:
            heapq.heappop(open_)
        if open_:
            out.append((lo, nxt - 1, items[-open_[0][0]][2]))
    return out


def _merged(runs: Iterable[Run]) -> list[Run]:
    """Sorted disjoint ``runs`` with touching ones of equal flags joined (a PVID stays alone)."""
    out: list[Run] = []
    for first, last, flags in runs:
        if out:
            p_first, p_last, p_flags = out[-1]
            if first == p_last + 1 and flags == p_flags and not flags[0]:
                out[-1] = (p_first, last, flags)
                continue
        out.append((first, last, flags))
    return out


def _ranges(runs: Iterable[Run]) -> list[VlanRange]:
    return [_range(first, last, flags) for first, last, flags in runs]


def _range(first: int, last: int, flags: VlanFlags) -> VlanRange:
    return VlanRange(
        vid=first, vid_end=last if last != first else 0, pvid=flags[0], untagged=flags[1]
    )


def _is_canonical(ranges: list[VlanRange]) -> bool:
    """True when ``ranges`` is written the one way already (the judge's common case: one
    pass, no copy). Kept tight: the auditor asks this of every VID list it judges."""
    prev_last = VID_MIN - 1  # the first VID must be at least VID_MIN
    prev_pvid, prev_untagged = True, False
    for r in ranges:
        vid, end, pvid, untagged = r.vid, r.vid_end, r.pvid, r.untagged
        if vid <= prev_last or vid > VID_MAX:
            return False  # unsorted, overlapping, or outside the VIDs
        if end and (end <= vid or end > VID_MAX or pvid):
            return False  # a one-VID range has no end; a PVID is one VID
        if vid == prev_last + 1 and not pvid and not prev_pvid and untagged == prev_untagged:
            return False  # touches the one before with the same flags: one range
        prev_last, prev_pvid, prev_untagged = end or vid, pvid, untagged
    return True


def canonical_vlans(ranges: Iterable[VlanRange]) -> list[VlanRange]:
    """The one way to write a VID set (what ``compress_vlans(expand_vlans(ranges))`` gives):
    sorted, consecutive VIDs with equal flags merged, a PVID alone; a later entry for the
    same VID wins. StateError for a range no port can hold."""
    ranges = list(ranges)
    if _is_canonical(ranges):
        return ranges
    return _ranges(_merged(_runs(ranges)))


def format_vlans(ranges: Iterable[VlanRange]) -> list[str]:
    """Readable VLAN entries, as ``bridge vlan show`` words: ``1 PVID untagged``, ``2-10``."""
    out = []
    for r in canonical_vlans(ranges):
        text = f"{r.vid}-{r.last}" if r.last != r.vid else str(r.vid)
        if r.pvid:
            text += " PVID"
        if r.untagged:
            text += " untagged"
        out.append(text)
    return out


def vlan_changes(
    desired: Iterable[VlanRange], actual: Iterable[VlanRange]
) -> tuple[list[VlanRange], list[VlanRange]]:
    """(to add, to delete) that turn ``actual`` into ``desired``, as canonical ranges.

    A VID whose flags change is re-added with the new flags (the kernel updates it in place),
    so it appears only in the "add" list.
    """
    want = _runs(canonical_vlans(desired))
    have = _runs(canonical_vlans(actual))
    add: list[Run] = []
    delete: list[Run] = []
    for first, last, w, h in _side_by_side(want, have):
        if w is not None and w != h:
            add.append((first, last, w))
        elif w is None and h is not None:
            delete.append((first, last, h))
    return _ranges(_merged(add)), _ranges(_merged(delete))


def _side_by_side(
    a: list[Run], b: list[Run]
) -> Iterator[tuple[int, int, VlanFlags | None, VlanFlags | None]]:
    """Two sorted disjoint run lists cut at each other's boundaries: ``(first, last, flags
    in a, flags in b)``, None where a list has none of those VIDs."""
    bounds = sorted({x for first, last, _ in (*a, *b) for x in (first, last + 1)})
    i = j = 0
    for lo, nxt in itertools.pairwise(bounds):
        while i < len(a) and a[i][1] < lo:
            i += 1
        while j < len(b) and b[j][1] < lo:
            j += 1
        fa = a[i][2] if i < len(a) and a[i][0] <= lo else None
        fb = b[j][2] if j < len(b) and b[j][0] <= lo else None
        if fa is not None or fb is not None:
            yield lo, nxt - 1, fa, fb


# ---------------------------------------------------------------------------
# Bond options
# ---------------------------------------------------------------------------


def normalize_bond_mode(mode: str | int) -> BondMode:
    """A bond mode by name, given by name or by the kernel's number (StateError if neither)."""
    if isinstance(mode, int) or (isinstance(mode, str) and mode.isdigit()):
        number = int(mode)
        if number not in BOND_MODE_NAMES:
            raise StateError(f"bond mode {mode!r} is not one of 0-6")
        return BOND_MODE_NAMES[number]
    for name in BOND_MODES:
        if mode == name:
            return name
    raise StateError(f"bond mode {mode!r} is not one of {sorted(BOND_MODES)}")


def _bond_int(key: str, value: Any) -> int:
    """A numeric bond option's value, or StateError: an intent is outside data, and a value
    of the wrong type or range must be refused before any kernel write."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise StateError(f"bond option {key}={value!r} is not a whole number")
    try:
        number = int(value)
    except ValueError:
        raise StateError(f"bond option {key}={str(value)[:40]!r} is not a whole number") from None
    if not 0 <= number <= BOND_INT_MAX:
        raise StateError(f"bond option {key}={number} is out of range 0-{BOND_INT_MAX}")
    return number


def normalize_bond_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Bond options by kernel name with enumerations as names; None values dropped."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if value is None:
            continue
        if key in BOND_INT_OPTIONS:
            out[key] = _bond_int(key, value)
        elif key in BOND_ENUMS:
            names = BOND_ENUMS[key]
            if isinstance(value, int) or str(value).isdigit():
                if _bond_int(key, value) not in names:
                    raise StateError(f"bond option {key}={value!r} is not a known value")
                out[key] = names[int(value)]
            elif value in names.values():
                out[key] = value
            else:
                raise StateError(
                    f"bond option {key}={value!r} is not one of {sorted(names.values())}"
                )
        elif key == "arp_ip_target":
            targets = value if isinstance(value, list) else str(value).split(",")
            cleaned = sorted(str(t).strip() for t in targets if str(t).strip())
            if cleaned:
                out[key] = cleaned
        elif key == "primary":
            if value:
                out[key] = str(value)
        else:
            raise StateError(f"bond option {key!r} is not supported (known: {BOND_OPTIONS})")
    return out


# ---------------------------------------------------------------------------
# Desired state from an intent
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Checking an intent's values (outside data: every value may be hostile)
# ---------------------------------------------------------------------------

UINT32_MAX = 2**32 - 1
MAX_GENERATION = 2**63 - 1  # JetStream and JSON consumers keep 64-bit integers
MAX_NETNS_NAME = 64


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _token_error(value: object) -> str | None:
    """A name that travels in an interface alias (``l2net k=v``) or a namespace path."""
    if not isinstance(value, str) or not value:
        return f"{value!r} must be a non-empty string"
    if len(value) > MAX_NETNS_NAME or value in (".", ".."):
        return f"{value!r} is not a valid name (at most {MAX_NETNS_NAME} characters)"
    if any(c in "/=\x00" or c.isspace() or not c.isprintable() for c in value):
        return f"{value!r} is not a valid name (no '/', '=', spaces or control characters)"
    return None


def _mac_error(value: object) -> str | None:
    if not isinstance(value, str) or not _MAC_RE.fullmatch(value):
        return f"{value!r} is not a MAC address (xx:xx:xx:xx:xx:xx)"
    first = int(value[:2], 16)
    if first & 1:
        return f"{value!r} is a multicast MAC address"
    if value.replace(":", "").strip("0") == "":
        return f"{value!r} is the all-zero MAC address"
    return None


def _vlans_error(ranges: object) -> str | None:
    try:
        canonical_vlans(ranges)  # type: ignore[arg-type]
    except StateError as exc:
        return str(exc)
    except (TypeError, AttributeError):
        return f"{ranges!r} is not a list of VLAN ranges"
    return None


def _bond_option_error(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if key in BOND_INT_OPTIONS:
        if not _is_int(value) or not 0 <= value <= BOND_INT_MAX:
            return f"{value!r} must be an integer 0-{BOND_INT_MAX}"
    elif key in BOND_ENUMS:
        known = BOND_ENUMS[key]
        if _is_int(value):
            if value not in known:
                return f"{value!r} is not one of {sorted(known)}"
        elif not isinstance(value, str) or value not in known.values():
            return f"{value!r} is not one of {sorted(known.values())}"
    elif key == "arp_ip_target":
        return _arp_targets_error(value)
    elif key == "primary":
        return ifname_error(value)
    else:
        return f"{key!r} is not a supported bond option (known: {', '.join(BOND_OPTIONS)})"
    return None


def _arp_targets_error(value: object) -> str | None:
    if not isinstance(value, list) or len(value) > MAX_ARP_TARGETS:
        return f"{value!r} must be a list of at most {MAX_ARP_TARGETS} IPv4 addresses"
    for target in value:
        try:
            if not isinstance(target, str):  # IPv4Address(1) would be 0.0.0.1
                raise TypeError(target)
            ipaddress.IPv4Address(target)
        except (ValueError, TypeError):
            return f"{target!r} is not an IPv4 address"
    return None


def _bond_mode_error(mode: str | int) -> str | None:
    try:
        normalize_bond_mode(mode)
    except StateError as exc:
        return str(exc)
    return None


def _mtu_error(value: object) -> str | None:
    if not _is_int(value) or not KERNEL_MTU_MIN <= value <= KERNEL_MTU_MAX:
        return f"{value!r} must be an integer {KERNEL_MTU_MIN}-{KERNEL_MTU_MAX}"
    return None


def _address_error(address: object) -> str | None:
    try:
        if not isinstance(address, str):
            raise TypeError(address)
        ipaddress.ip_interface(address)
    except (ValueError, TypeError):
        return f"{address!r} is not an address/prefix"
    return None


Checks = Iterator[tuple[str, str | None]]
"""(field path, what is wrong with it or None), checked in order: one check may rely on
those before it (a port list is hashed once each port is known to be a name)."""


def check_intent(intent: NodeIntent) -> None:
    """StateError naming the first field of ``intent`` whose value is of the wrong type, out
    of range or not a valid name or address; nothing else (no I/O, no policy).

    An intent comes from outside (the bus, a file): its types are checked by the decoder,
    but not its ranges, and ``options`` and ``cni_config`` are free-form. Checked here, a bad
    value is refused before any netlink write, with a message naming the field, rather than
    failing half-way through an apply (pyroute2 cannot pack ``miimon: 99999999999``).
    """
    for path, problem in _intent_checks(intent):
        if problem is not None:
            raise StateError(
                f"intent for {intent.node!r} generation {intent.generation}: {path}: {problem}"
            )


def _intent_checks(intent: NodeIntent) -> Checks:
    generation = intent.generation
    if not _is_int(generation) or not 0 <= generation <= MAX_GENERATION:
        yield "generation", f"{generation!r} must be 0-{MAX_GENERATION}"
    for i, cn in enumerate(intent.cluster_networks):
        yield from _cluster_network_checks(f"clusterNetworks[{i}]", cn)
    for i, hv in enumerate(intent.host_vlans):
        yield from _host_vlan_checks(f"hostVlans[{i}]", hv)
    for i, vp in enumerate(intent.vm_ports):
        yield from _vm_port_checks(f"vmPorts[{i}]", vp)


def _cluster_network_checks(at: str, cn: ClusterNetworkIntent) -> Checks:
    yield f"{at}.name", _token_error(cn.name)
    yield f"{at}.bridge", ifname_error(cn.bridge)
    yield f"{at}.bondName", ifname_error(cn.bond_name)
    yield f"{at}.mtu", _mtu_error(cn.mtu)
    yield f"{at}.uplinkVlans", _vlans_error(cn.uplink_vlans)
    if cn.bond is not None:
        yield from _bond_checks(f"{at}.bond", cn.bond)


def _bond_checks(at: str, bond: BondIntent) -> Checks:
    yield f"{at}.name", ifname_error(bond.name)
    yield f"{at}.ports", None if bond.ports else "at least one port is required"
    for k, port in enumerate(bond.ports):
        yield f"{at}.ports[{k}]", ifname_error(port)
    if len(set(bond.ports)) != len(bond.ports):
        yield f"{at}.ports", f"{bond.ports!r} names a port twice"
    yield f"{at}.mode", _bond_mode_error(bond.mode)
    for key, value in bond.options.items():
        yield f"{at}.options.{key}", _bond_option_error(key, value)
    yield f"{at}.mtu", _mtu_error(bond.mtu)
    if bond.txqlen is not None and not 0 <= bond.txqlen <= UINT32_MAX:
        yield f"{at}.txqlen", f"{bond.txqlen!r} must be 0-{UINT32_MAX}"
    if bond.hwaddr is not None:
        yield f"{at}.hwaddr", _mac_error(bond.hwaddr)


def _host_vlan_checks(at: str, hv: HostVlanIntent) -> Checks:
    yield f"{at}.name", ifname_error(hv.name)
    yield f"{at}.hostNetwork", _token_error(hv.host_network)
    yield f"{at}.clusterNetwork", _token_error(hv.cluster_network)
    yield f"{at}.bridge", ifname_error(hv.bridge)
    if not VID_MIN <= hv.vlan <= VID_MAX:
        yield f"{at}.vlan", f"{hv.vlan!r} must be {VID_MIN}-{VID_MAX}"
    yield f"{at}.mtu", _mtu_error(hv.mtu)
    for k, address in enumerate(hv.addresses):
        yield f"{at}.addresses[{k}]", _address_error(address)


def _vm_port_checks(at: str, vp: VmPortIntent) -> Checks:
    yield f"{at}.vm", _token_error(vp.vm)
    yield f"{at}.ifname", ifname_error(vp.ifname)
    yield f"{at}.network", _token_error(vp.network)
    yield f"{at}.bridge", ifname_error(vp.bridge)
    yield f"{at}.vlans", _vlans_error(vp.vlans)
    if vp.mac is not None:
        yield f"{at}.mac", _mac_error(vp.mac)


def mgmt_vlan_interface(mgmt_vlan: int | None) -> str | None:
    return f"{MGMT_BRIDGE}.{mgmt_vlan}" if mgmt_vlan else None


def protected_links(mgmt_vlan: int | None) -> list[str]:
    """Links l2net never deletes or changes: mgmt bridge, bond, and mgmt VLAN interface."""
    out = [MGMT_BRIDGE, MGMT_BOND]
    vif = mgmt_vlan_interface(mgmt_vlan)
    if vif:
        out.append(vif)
    return out


_CNI_VERSION = re.compile(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}")


def _vid(value: object, where: str) -> int:
    # bool is an int to Python, never a VID to l2net.
    if isinstance(value, bool) or not isinstance(value, int) or not VID_MIN <= value <= VID_MAX:
        raise StateError(f"{where} is {value!r}, not a VLAN id {VID_MIN}-{VID_MAX}")
    return value


def _trunk_vids(value: object, where: str) -> list[VlanRange]:
    """The VIDs of a ``vlanTrunk`` list as the planner writes it (``{id}``, ``{minID, maxID}``),
    as canonical ranges (no flags)."""
    if not isinstance(value, list) or not value:
        raise StateError(f"{where} is {value!r}, not a non-empty list of VLAN ranges")
    ranges: list[VlanRange] = []
    for i, item in enumerate(value):
        at = f"{where}[{i}]"
        if isinstance(item, dict) and set(item) == {"id"}:
            ranges.append(VlanRange(vid=_vid(item["id"], f"{at}.id")))
        elif isinstance(item, dict) and set(item) == {"minID", "maxID"}:
            lo, hi = _vid(item["minID"], f"{at}.minID"), _vid(item["maxID"], f"{at}.maxID")
            if lo > hi:
                raise StateError(f"{at}: minID {lo} is above maxID {hi}")
            ranges.append(VlanRange(vid=lo, vid_end=hi))
        else:
            raise StateError(f"{at} is {item!r}: expected {{id}} or {{minID, maxID}}")
    return canonical_vlans(ranges)


def check_cni_config(port: VmPortIntent) -> None:
    """Refuse (:class:`StateError`) a VM NIC whose CNI config is not one l2net generates.

    The executor runs the plugin an intent names, with the options it gives, as root: a
    ``host-device`` config would move any NIC (mgmt's too) into a VM. So only what the
    planner's ``nad_config`` produces is run: the ``bridge`` plugin on the bridge of the
    port's own cluster network, the port's network as its name, the VLAN or trunk that the
    port's VIDs say, an empty ``ipam``, and no other key.
    """
    where = f"VM NIC {port.vm}/{port.ifname} (network {port.network}): cniConfig"
    cfg: Any = port.cni_config
    if not isinstance(cfg, dict):
        raise StateError(f"{where} is not an object")
    _check_cni_identity(port, cfg, where)
    _check_cni_link(cfg, where)
    _check_cni_vlans(port, cfg, where)


def _check_cni_identity(port: VmPortIntent, cfg: dict[str, Any], where: str) -> None:
    """Only keys l2net writes; the bridge plugin on the port's own bridge, named after its
    network, in a version l2net knows."""
    unknown = sorted(str(k) for k in cfg if k not in CNI_KEYS)
    if unknown:
        raise StateError(f"{where} has keys l2net never generates: {', '.join(unknown)}")
    if cfg.get("type") != CNI_PLUGIN:
        raise StateError(
            f"{where}.type is {cfg.get('type')!r}: only the bridge plugin l2net generates is run"
        )
    own_bridge = f"{port.cluster_network}-br"
    if port.bridge != own_bridge or cfg.get("bridge") != own_bridge:
        raise StateError(
            f"{where}.bridge is {cfg.get('bridge')!r} (port bridge {port.bridge!r}): the bridge"
            f" of cluster network {port.cluster_network!r} is {own_bridge!r}"
        )
    version = cfg.get("cniVersion")
    if not isinstance(version, str) or not _CNI_VERSION.fullmatch(version):
        raise StateError(f"{where}.cniVersion is {version!r}, not a version like '0.3.1'")
    if cfg.get("name") != port.network:
        raise StateError(f"{where}.name is {cfg.get('name')!r}, not the network {port.network!r}")


def _check_cni_link(cfg: dict[str, Any], where: str) -> None:
    """No addresses; a boolean promiscMode; an MTU the kernel takes."""
    if not isinstance(cfg.get("promiscMode", True), bool):
        raise StateError(f"{where}.promiscMode is {cfg['promiscMode']!r}, not true or false")
    if cfg.get("ipam", {}) != {}:
        raise StateError(f"{where}.ipam is {cfg['ipam']!r}: l2net gives VM NICs no addresses")
    mtu = cfg.get("mtu", DEFAULT_MTU)
    if (
        isinstance(mtu, bool)
        or not isinstance(mtu, int)
        or not KERNEL_MTU_MIN <= mtu <= KERNEL_MTU_MAX
    ):
        raise StateError(f"{where}.mtu is {mtu!r}, not an MTU {KERNEL_MTU_MIN}-{KERNEL_MTU_MAX}")


def _check_cni_vlans(port: VmPortIntent, cfg: dict[str, Any], where: str) -> None:
    """The VLAN or trunk the config gives is exactly the port's VIDs."""
    if "vlan" in cfg and "vlanTrunk" in cfg:
        raise StateError(f"{where} has both vlan and vlanTrunk")
    if "vlan" in cfg:
        expected = [VlanRange(vid=_vid(cfg["vlan"], f"{where}.vlan"), pvid=True, untagged=True)]
    elif "vlanTrunk" in cfg:
        expected = _trunk_vids(cfg["vlanTrunk"], f"{where}.vlanTrunk")
    else:
        expected = [DEFAULT_PVID]  # an untagged network rides the PVID, VID 1
    if canonical_vlans(port.vlans) != expected:
        raise StateError(
            f"{where} gives VLANs {format_vlans(expected)}, the port's VLANs"
            f" are {format_vlans(port.vlans)}"
        )


class Refusal(msgspec.Struct, frozen=True, kw_only=True):
    """A part of an intent that :func:`desired_state` leaves out, and why: ``what`` and
    ``name`` say whose part (``cluster network oob``, ``VM NIC vm1/eth0``)."""

    what: str
    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.what} {self.name}: {self.reason}"


def desired_state(
    intent: NodeIntent,
    *,
    mgmt_vlan: int | None = None,
    mgmt: MgmtPath | None = None,
    guard_mgmt: bool = True,
) -> tuple[NodeL2State, list[Refusal]]:
    """The state a node must reach for ``intent``, and what of the intent was refused.

    Refused (with a reason each, and left out of the state): anything that would create,
    delete or change ``mgmt-br``, ``mgmt-bo`` or the mgmt VLAN interface, and anything that
    would cut the management path (:mod:`shared.domain.mgmtpath`; ``mgmt`` is the path as the node
    sees it, None when unknown): a VID range over VID 1 or a VM port in the management VLAN
    on mgmt, a host VLAN interface on VID 1 of ``mgmt-br``, a host address overlapping the
    management subnets or routes, a VM port on ``mgmt-br`` with a smaller MTU, a bond taking
    a NIC of ``mgmt-bo``. What mgmt keeps under l2net's hands is the VIDs of networks placed
    on it: on ``mgmt-bo`` and, for host networks on mgmt, on ``mgmt-br`` itself.

    ``guard_mgmt=False`` turns the management-path refusals off (never the protected
    links): a test-only switch, to prove that a change which cuts the node off is rolled
    back by the executor's confirm (``--test-only-allow-mgmt-cuts``).
    """
    check_intent(intent)
    state = _DesiredBuilder(
        protected=protected_links(mgmt_vlan),
        mgmt_vlan=mgmt_vlan,
        mgmt=mgmt if guard_mgmt else None,
        guard=guard_mgmt,
    )
    for cn in intent.cluster_networks:
        state.add_cluster_network(cn)
    for hv in intent.host_vlans:
        state.add_host_vlan(hv)
    for vp in intent.vm_ports:
        state.add_vm_port(vp)
    return (
        NodeL2State(
            node=intent.node,
            links=state.links,
            vlans=state.vlans,
            namespaces=sorted({p.vm for p in state.vm_ports.values()}),
            vm_ports=state.vm_ports,
            protected=state.protected,
            mgmt_vlan=mgmt_vlan,
        ),
        state.refused,
    )


@dataclasses.dataclass
class _DesiredBuilder:
    """A desired state being built from an intent's parts, with what was refused on the way
    (see :func:`desired_state`)."""

    protected: list[str]
    mgmt_vlan: int | None
    mgmt: MgmtPath | None
    guard: bool
    links: dict[str, LinkState] = dataclasses.field(default_factory=dict)
    vlans: dict[str, list[VlanRange]] = dataclasses.field(default_factory=dict)
    vm_ports: dict[str, VmPort] = dataclasses.field(default_factory=dict)
    refused: list[Refusal] = dataclasses.field(default_factory=list)

    @property
    def base_mgmt(self) -> list[VlanRange]:
        """What ``mgmt-br`` and ``mgmt-bo`` carry whatever the intent: VID 1, the mgmt VLAN."""
        return [DEFAULT_PVID] + ([VlanRange(vid=self.mgmt_vlan)] if self.mgmt_vlan else [])

    def add_cluster_network(self, cn: ClusterNetworkIntent) -> None:
        if cn.name == MGMT or cn.bridge in self.protected or cn.bond_name in self.protected:
            self._add_protected_network(cn)
        elif cn.managed and cn.bond is not None:
            self._add_bond_and_bridge(cn, cn.bond)
        # else: the planner has no uplink for this cluster network on this node.

    def _add_protected_network(self, cn: ClusterNetworkIntent) -> None:
        """mgmt: only the VIDs of its networks, on its bond."""
        if cn.managed or cn.bond is not None:
            self.refused.append(
                Refusal(
                    what="cluster network",
                    name=cn.name,
                    reason=f"{cn.bridge} and {cn.bond_name} are protected;"
                    " only the VIDs of its networks are applied",
                )
            )
        uplink = cn.uplink_vlans
        if self.guard:
            uplink = []
            for r in cn.uplink_vlans:
                why = mgmtpath.vid_problem(r.vid, r.last, mgmt_vlan=None)
                if why is None:
                    uplink.append(r)
                    continue
                vids = f"VIDs {r.vid}-{r.last}" if r.last != r.vid else f"VID {r.vid}"
                self.refused.append(
                    Refusal(
                        what="cluster network",
                        name=cn.name,
                        reason=f"{vids} not applied to {cn.bond_name}: {why}",
                    )
                )
        self.vlans[cn.bond_name] = canonical_vlans([*self.base_mgmt, *uplink])

    def _add_bond_and_bridge(self, cn: ClusterNetworkIntent, bond: BondIntent) -> None:
        self.links[cn.bridge] = LinkState(
            name=cn.bridge,
            kind="bridge",
            alias=owner_alias(cn=cn.name),
            up=True,
            mtu=cn.mtu,
            vlan_filtering=True,
            master=None,
        )
        self.links[bond.name] = LinkState(
            name=bond.name,
            kind="bond",
            alias=owner_alias(cn=cn.name),
            master=cn.bridge,
            up=True,
            mtu=bond.mtu,
            txqlen=bond.txqlen,
            mac=bond.hwaddr.lower() if bond.hwaddr else None,
            bond_mode=normalize_bond_mode(bond.mode),
            bond_options=normalize_bond_options(bond.options),
        )
        for nic in bond.ports:
            why = (
                "is protected, not enslaved"
                if nic in self.protected
                else _not_enslaved(mgmtpath.nic_problem(nic, self.mgmt))
            )
            if why is not None:
                self.refused.append(
                    Refusal(what="cluster network", name=cn.name, reason=f"{nic} {why}")
                )
                continue
            self.links[nic] = LinkState(name=nic, master=bond.name, up=True, mtu=bond.mtu)
        self.vlans[bond.name] = canonical_vlans([DEFAULT_PVID, *cn.uplink_vlans])
        self.vlans[cn.bridge] = [DEFAULT_PVID]

    def add_host_vlan(self, hv: HostVlanIntent) -> None:
        if hv.name in self.protected:
            self.refused.append(
                Refusal(
                    what="host network",
                    name=hv.host_network,
                    reason=f"{hv.name} is protected, unchanged",
                )
            )
            return
        why = _host_vlan_problem(hv, mgmt=self.mgmt, guard=self.guard)
        if why is not None:
            self.refused.append(
                Refusal(
                    what="host network",
                    name=hv.host_network,
                    reason=f"{hv.name} not applied: {why}",
                )
            )
            return
        self.links[hv.name] = LinkState(
            name=hv.name,
            kind="vlan",
            alias=owner_alias(hostnet=hv.host_network),
            vlan_link=hv.bridge,
            vlan_id=hv.vlan,
            up=True,
            mtu=hv.mtu,
            addresses=sorted(hv.addresses),
        )
        # The bridge's own (self) VID, so the VLAN interface hears its VLAN.
        base = self.base_mgmt if hv.bridge == MGMT_BRIDGE else [DEFAULT_PVID]
        current = self.vlans.get(hv.bridge, base)
        self.vlans[hv.bridge] = canonical_vlans([*current, VlanRange(vid=hv.vlan)])

    def add_vm_port(self, vp: VmPortIntent) -> None:
        check_cni_config(vp)  # before any write: only the plugin and options l2net generates
        why = _vm_port_problem(vp, mgmt_vlan=self.mgmt_vlan, mgmt=self.mgmt, guard=self.guard)
        if why is not None:
            self.refused.append(
                Refusal(what="VM NIC", name=f"{vp.vm}/{vp.ifname}", reason=f"not plugged: {why}")
            )
            return
        port = VmPort(
            vm=vp.vm,
            ifname=vp.ifname,
            network=vp.network,
            bridge=vp.bridge,
            vlans=canonical_vlans(vp.vlans),
            cni_config=vp.cni_config,
            mac=vp.mac,
        )
        self.vm_ports[port.key] = port


def _not_enslaved(why: str | None) -> str | None:
    return None if why is None else f"not enslaved: {why}"


def _host_vlan_problem(hv: HostVlanIntent, *, mgmt: MgmtPath | None, guard: bool) -> str | None:
    """Why a host VLAN interface would cut the management path (None: it would not)."""
    if not guard:
        return None
    if hv.bridge == MGMT_BRIDGE:
        why = mgmtpath.host_vid_problem(hv.vlan, mgmt_vlan=None)
        if why is not None:
            return why
    for cidr in hv.addresses:
        why = mgmtpath.address_problem(cidr, mgmt)
        if why is not None:
            return why
    return None


def _vm_port_problem(
    vp: VmPortIntent, *, mgmt_vlan: int | None, mgmt: MgmtPath | None, guard: bool
) -> str | None:
    """Why a VM NIC on ``mgmt-br`` would cut the management path (None: it would not)."""
    if not guard or vp.bridge != MGMT_BRIDGE:
        return None
    if mgmt_vlan is not None:
        for r in vp.vlans:
            if r.vid <= mgmt_vlan <= r.last:
                return mgmtpath.vid_problem(mgmt_vlan, mgmt_vlan, mgmt_vlan=mgmt_vlan)
    raw_mtu = vp.cni_config.get("mtu") if isinstance(vp.cni_config, dict) else None
    mtu = raw_mtu if isinstance(raw_mtu, int) and not isinstance(raw_mtu, bool) else 0
    return mgmtpath.mtu_problem(mtu, mgmt)


# ---------------------------------------------------------------------------
# Actual state from kernel facts
# ---------------------------------------------------------------------------


def build_actual(
    *,
    node: str,
    links: Iterable[LinkState],
    vlans: Mapping[str, list[VlanRange]],
    namespaces: Iterable[str],
    mgmt_vlan: int | None = None,
    owned_namespaces: Iterable[str] = (),
) -> NodeL2State:
    """An actual state from what the kernel reported; VM ports are found by their alias."""
    by_name = {link.name: link for link in links}
    canon = {name: canonical_vlans(r) for name, r in vlans.items() if name in by_name}
    vm_ports: dict[str, VmPort] = {}
    for link in by_name.values():
        fields = parse_alias(link.alias)
        if fields and "vm" in fields and "if" in fields:
            port = VmPort(
                vm=fields["vm"],
                ifname=fields["if"],
                network=fields.get("net", ""),
                bridge=link.master,
                host_ifname=link.name,
                vlans=canon.get(link.name, []),
            )
            vm_ports[port.key] = port
    return NodeL2State(
        node=node,
        links=by_name,
        vlans=canon,
        namespaces=sorted(set(namespaces)),
        vm_ports=vm_ports,
        protected=protected_links(mgmt_vlan),
        mgmt_vlan=mgmt_vlan,
        owned_namespaces=sorted(set(owned_namespaces)),
    )


def is_vm_port(link: LinkState) -> bool:
    fields = parse_alias(link.alias)
    return bool(fields and "vm" in fields)


def relevant_links(state: NodeL2State) -> list[str]:
    """Links an observer of the node cares about: protected, owned, their ports, and the
    physical NICs (so that a port released from its bond is seen as ``master`` changed,
    not as a missing link)."""
    owners = set(state.protected) | {n for n, lk in state.links.items() if is_owned(lk)}
    names = set(owners)
    for name, link in state.links.items():
        if link.master in owners or (link.kind == "device" and name != "lo"):
            names.add(name)
    return sorted(n for n in names if n in state.links)


def observed_from(state: NodeL2State, *, generation: int, reason: str, at: float) -> ObservedState:
    """What an executor publishes on ``l2.observed.<node>``: the managed part of ``state``."""
    names = relevant_links(state)
    vm_ns = sorted({p.vm for p in state.vm_ports.values()})
    return ObservedState(
        node=state.node,
        generation=generation,
        links=[msgspec.to_builtins(state.links[n]) for n in names],
        vlans={n: state.vlans[n] for n in names if n in state.vlans},
        namespaces=[ns for ns in state.namespaces if ns in vm_ns],
        mgmt_vlan=state.mgmt_vlan,
        reason=reason,
        at=at,
    )


def exact_desired(snapshot: NodeL2State) -> NodeL2State:
    """``snapshot`` as a state to return to, field for field (the executor's rollback).

    VM NICs are compared as VM NICs (their host veth names are the CNI plugin's choice);
    a VM NIC to re-plug gets the minimal bridge CNI configuration its alias allows.
    """
    links = {n: lk for n, lk in snapshot.links.items() if not is_vm_port(lk)}
    ports = {
        key: msgspec.structs.replace(
            port,
            host_ifname=None,
            cni_config=port.cni_config
            or bridge_cni_config(network=port.network or "l2net", bridge=port.bridge or ""),
        )
        for key, port in snapshot.vm_ports.items()
    }
    return NodeL2State(
        node=snapshot.node,
        links=links,
        vlans={n: v for n, v in snapshot.vlans.items() if n in links},
        # Only VM namespaces: other namespaces on the machine are not l2net's to restore.
        namespaces=[ns for ns in snapshot.namespaces if ns in {p.vm for p in ports.values()}],
        vm_ports=ports,
        protected=list(snapshot.protected),
        mgmt_vlan=snapshot.mgmt_vlan,
        exact=True,
    )


def state_from_observed(observed: ObservedState) -> NodeL2State:
    """The :class:`NodeL2State` an :class:`ObservedState` describes (the auditor's side)."""
    links = [msgspec.convert(raw, LinkState) for raw in observed.links]
    return build_actual(
        node=observed.node,
        links=links,
        vlans=observed.vlans,
        namespaces=observed.namespaces,
        mgmt_vlan=observed.mgmt_vlan,
    )


# ---------------------------------------------------------------------------
# The diff
# ---------------------------------------------------------------------------

_LINK_FIELDS: tuple[tuple[str, Field], ...] = (
    ("kind", Field.KIND),
    ("alias", Field.ALIAS),
    ("master", Field.MASTER),
    ("up", Field.UP),
    ("mtu", Field.MTU),
    ("mac", Field.MAC),
    ("txqlen", Field.TXQLEN),
    ("bond_mode", Field.BOND_MODE),
    ("vlan_filtering", Field.VLAN_FILTERING),
    ("vlan_id", Field.VLAN_ID),
    ("vlan_link", Field.VLAN_LINK),
    ("addresses", Field.ADDRESSES),
)
"""The :class:`LinkState` attributes the diff compares, in its order, and their fields."""

_LINK = ObjectKind.LINK


def owned_links(state: NodeL2State) -> set[str]:
    """The links l2net created (by their alias), VM NICs' host veths aside."""
    return {n for n, lk in state.links.items() if is_owned(lk) and not is_vm_port(lk)}


def diff(desired: NodeL2State, actual: NodeL2State) -> list[Difference]:
    """Every way ``actual`` differs from ``desired``, in a stable order.

    * A desired link must exist with every field desired has an opinion on (``None``: none).
    * A link l2net owns (alias) that desired does not name is extra. A link enslaved to an
      owned link that desired does not name has an extra ``master`` (a released port is
      expected). Links that are neither are not l2net's business and never appear.
    * VLANs: each port desired names carries exactly the desired VIDs. On a bridge without
      VLAN filtering the kernel has no VIDs at all; there only "1 PVID untagged" (what such
      a bridge does anyway) is satisfied, anything else is a ``bridge.vlanFiltering`` item.
    * VM NICs by ``<vm>/<ifname>``: present, on the desired bridge, exact VIDs; an owned VM
      NIC not desired is extra. VM namespaces: desired ones must exist.
    """
    items = [
        *_link_items(desired, actual),
        *_extra_link_items(desired, actual),
        *_port_vlan_items(desired, actual),
        *_vm_port_items(desired, actual),
        *_namespace_items(desired, actual),
        *_released_nic_items(desired, actual),
    ]
    # Several VM NICs on one bridge without VLAN filtering report that bridge once.
    unique: dict[tuple[ObjectKind, str, Field | None, str | None], Difference] = {}
    for item in items:
        unique.setdefault((item.kind, item.name, item.field, item.key), item)
    return list(unique.values())


def _link_items(desired: NodeL2State, actual: NodeL2State) -> list[Difference]:
    """Desired links: missing, or with fields (bond options too) that differ."""
    out: list[Difference] = []
    for name, want in desired.links.items():
        have = actual.links.get(name)
        if have is None:
            out.append(Difference.added(_LINK, name))
            continue
        out += _link_field_items(name, want, have, exact=desired.exact)
        out += _bond_option_items(name, want, have, exact=desired.exact)
    return out


def _link_field_items(
    name: str, want: LinkState, have: LinkState, *, exact: bool
) -> list[Difference]:
    out = []
    for attr, field in _LINK_FIELDS:
        wanted = getattr(want, attr)
        got = getattr(have, attr)
        if exact and field is Field.MAC and want.kind == "bridge":
            continue  # follows its ports' MACs: returns with the ports
        # None is "no opinion" (except in a snapshot), but a bridge is never enslaved.
        bridge_master = field is Field.MASTER and want.kind == "bridge"
        if wanted is None and not exact and not bridge_master:
            continue
        if wanted != got:
            out.append(Difference.changed(_LINK, name, field, desired=wanted, actual=got))
    return out


def _bond_option_items(
    name: str, want: LinkState, have: LinkState, *, exact: bool
) -> list[Difference]:
    if want.bond_options is None:
        return []
    wanted = want.bond_options
    got = have.bond_options or {}
    keys = set(wanted) | (set(got) if exact else set())
    return [
        Difference.changed(
            _LINK, name, Field.BOND_OPTION, key=key, desired=wanted.get(key), actual=got.get(key)
        )
        for key in sorted(keys)
        if got.get(key) != wanted.get(key)
    ]


def _extra_link_items(desired: NodeL2State, actual: NodeL2State) -> list[Difference]:
    """Owned links desired does not name, and ports of owned links it does not name."""
    owned = owned_links(actual)
    out = [Difference.removed(_LINK, name) for name in sorted(owned - set(desired.links))]
    for name, link in sorted(actual.links.items()):
        if (
            name not in desired.links
            and name not in owned
            and link.master in owned
            and not is_vm_port(link)
        ):
            out.append(
                Difference.changed(_LINK, name, Field.MASTER, desired=None, actual=link.master)
            )
    return out


def _port_vlan_items(desired: NodeL2State, actual: NodeL2State) -> list[Difference]:
    """The VIDs of every port (and bridge) desired names."""
    ports = list(desired.vlans)
    if desired.exact:
        # Returning to a snapshot: a port that had no VIDs must have none again.
        ports += sorted(n for n in actual.vlans if n not in desired.vlans and n in desired.links)
    out: list[Difference] = []
    for name in ports:
        if name not in actual.links:
            if name not in desired.links:  # a port l2net does not create (mgmt-bo)
                out.append(Difference.added(_LINK, name))
            continue  # a desired link's absence is already an item
        want = desired.vlans.get(name, [])
        bridge = _bridge_of(name, actual)
        out += _vlan_items(_LINK, name, want, actual, bridge=bridge, exact=desired.exact)
    return out


def _vm_port_items(desired: NodeL2State, actual: NodeL2State) -> list[Difference]:
    """VM NICs: missing, on another bridge, with other VIDs, or extra."""
    kind = ObjectKind.VM_PORT
    out: list[Difference] = []
    for key, want in desired.vm_ports.items():
        have = actual.vm_ports.get(key)
        if have is None:
            out.append(Difference.added(kind, key))
            continue
        if want.bridge is not None and have.bridge != want.bridge:
            out.append(
                Difference.changed(kind, key, Field.BRIDGE, desired=want.bridge, actual=have.bridge)
            )
        if want.vlans is not None and have.host_ifname:
            out += _vlan_items(
                kind,
                key,
                want.vlans,
                actual,
                bridge=have.bridge,
                port=have.host_ifname,
                exact=desired.exact,
            )
    extra = sorted(set(actual.vm_ports) - set(desired.vm_ports))
    return out + [Difference.removed(kind, key) for key in extra]


def _namespace_items(desired: NodeL2State, actual: NodeL2State) -> list[Difference]:
    """VM namespaces desired and missing, and those l2net made that no VM wants."""
    kind = ObjectKind.NETNS
    return [
        *(Difference.added(kind, ns) for ns in desired.namespaces if ns not in actual.namespaces),
        *(
            Difference.removed(kind, ns)
            for ns in actual.owned_namespaces
            if ns not in desired.namespaces
        ),
    ]


def _released_nic_items(desired: NodeL2State, actual: NodeL2State) -> list[Difference]:
    """A NIC l2net released for good gets back what l2net found (a snapshot compares
    aliases anyway)."""
    if desired.exact:
        return []
    out = []
    for name, link in sorted(actual.links.items()):
        record = parse_port_record(link.alias)
        wanted = desired.links.get(name)
        if record is not None and (wanted is None or wanted.master is None):
            out.append(
                Difference.changed(
                    _LINK, name, Field.ALIAS, desired=record.alias, actual=link.alias
                )
            )
    return out


def _bridge_of(name: str, state: NodeL2State) -> str | None:
    link = state.links.get(name)
    if link is None:
        return None
    if link.kind == "bridge":
        return name
    return link.master


def _vlan_items(
    kind: ObjectKind,
    name: str,
    want: list[VlanRange],
    actual: NodeL2State,
    *,
    bridge: str | None,
    port: str | None = None,
    exact: bool = False,
) -> list[Difference]:
    port = port or name
    want_c = canonical_vlans(want)
    have_c = canonical_vlans(actual.vlans.get(port, []))
    vids = []
    if want_c != have_c:
        vids.append(
            Difference.changed(
                kind, name, Field.VLANS, desired=format_vlans(want_c), actual=format_vlans(have_c)
            )
        )
    bridge_link = actual.links.get(bridge) if bridge else None
    # Back to a snapshot, the VIDs count as they are (the bridge's filtering is compared as
    # its own field). Else a bridge that does not filter must, unless the port wants only
    # what such a bridge does anyway; the VIDs it keeps meanwhile count too.
    if not exact and bridge_link is not None and bridge_link.vlan_filtering is False:
        if want_c in ([], [DEFAULT_PVID]):
            return [] if have_c in ([], want_c) else vids  # none: the kernel cannot filter
        filtering = Difference.changed(
            _LINK, bridge_link.name, Field.VLAN_FILTERING, desired=True, actual=False
        )
        return [filtering, *vids]
    return vids
