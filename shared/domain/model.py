"""The l2net model: the kinds people submit and the events services exchange.

Two families of msgspec structs live here.

* **Specs** are what people write (``ClusterNetwork``, ``VlanConfig``, ``Network``,
  ``HostNetwork``, ``VmNic``) plus ``Node``, which executors report. Field names on the
  wire are Harvester's camelCase ones; spec structs forbid unknown fields, because a typo in
  a manifest must be an error, not a silently ignored line.
* **Events** are what travels on the bus (``NodeIntent``, ``NodeStatus``, ``ObservedState``,
  ...). They tolerate added fields, so an older executor survives a newer planner.

Everything is plain data: no I/O, no behaviour beyond small derived properties.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec

from shared.domain.vocabulary import (
    DEFAULT_BOND_MODE,
    AdSelect,
    ArpValidate,
    BondMode,
    HostNetworkMode,
    LacpRate,
    NetworkType,
    XmitHashPolicy,
)

EpochSeconds = Annotated[
    float,
    msgspec.Meta(
        description="a time: seconds since the Unix epoch (1970-01-01 UTC), with a fraction"
    ),
]
"""Every time on the bus (``at``, ``issuedAt``, ``firstSeen``, ``heartbeatAt``, ...)."""

JsonValue = Annotated[
    Any,
    msgspec.Meta(
        description="a field's value: a string, number, boolean, null, or a list or object of "
        'those (presence: "present"/"absent"; VLAN lists: strings like "100 PVID untagged")',
        extra_json_schema={"type": ["string", "number", "boolean", "null", "array", "object"]},
    ),
]
"""A drift item's ``desired``/``actual``: plain JSON values."""

# ---------------------------------------------------------------------------
# Specs (the edge where people submit: strict)
# ---------------------------------------------------------------------------


class Spec(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """Base of every kind a person or an executor submits."""

    kind: ClassVar[str] = ""
    name: str


class ClusterNetwork(Spec, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """A group of host NICs, bonded, under one VLAN-aware bridge ``<name>-br``."""

    kind: ClassVar[str] = "ClusterNetwork"
    description: str = ""


class BondOptions(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """Bond mode and the kernel's bond options, by Harvester's camelCase names.

    ``None`` means "unset: kernel default". Harvester's CRD writes ``-1`` for unset
    ``miimon`` and ``arpInterval``; the manifest reader turns that into ``None``.
    ``mode`` is normalized to its name (the kernel's numbers 0-6 are accepted on input).
    """

    mode: BondMode = DEFAULT_BOND_MODE
    miimon: int | None = None
    updelay: int | None = None
    downdelay: int | None = None
    arp_interval: int | None = None
    arp_ip_targets: list[str] = msgspec.field(default_factory=list)
    arp_validate: ArpValidate | None = None
    lacp_rate: LacpRate | None = None
    ad_select: AdSelect | None = None
    xmit_hash_policy: XmitHashPolicy | None = None
    primary: str | None = None


class LinkAttributes(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """Attributes of the uplink's links. ``mtu`` 0 means 1500; ``tx_q_len`` None: default."""

    mtu: int = 0
    tx_q_len: int | None = msgspec.field(default=None, name="txQLen")
    hardware_addr: str | None = None


class Uplink(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    nics: list[str]
    bond_options: BondOptions = msgspec.field(default_factory=BondOptions)
    link_attributes: LinkAttributes = msgspec.field(default_factory=LinkAttributes)


class VlanConfig(Spec, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """Which NICs of which nodes form a cluster network's uplink, and how they are bonded."""

    kind: ClassVar[str] = "VlanConfig"
    cluster_network: str
    node_selector: dict[str, str] = msgspec.field(default_factory=dict)
    uplink: Uplink
    description: str = ""


class TrunkRange(msgspec.Struct, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """One trunk entry: ``{minID, maxID}`` or a single ``{id}``."""

    min_id: int | None = msgspec.field(default=None, name="minID")
    max_id: int | None = msgspec.field(default=None, name="maxID")
    id: int | None = None

    def bounds(self) -> tuple[int, int]:
        if self.id is not None:
            return (self.id, self.id)
        assert self.min_id is not None and self.max_id is not None
        return (self.min_id, self.max_id)


class Network(Spec, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """A VM network on a cluster network: VLAN, untagged or trunk."""

    kind: ClassVar[str] = "Network"
    cluster_network: str
    type: NetworkType = "L2VlanNetwork"
    vlan: int | None = None
    trunk: list[TrunkRange] = msgspec.field(default_factory=list)
    description: str = ""


class HostNetwork(Spec, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """A host IP interface ``<cn>-br.<vlan>`` on selected nodes, static addresses per node."""

    kind: ClassVar[str] = "HostNetwork"
    cluster_network: str
    vlan: int
    node_selector: dict[str, str] = msgspec.field(default_factory=dict)
    mode: HostNetworkMode = "static"
    ips: dict[str, str] = msgspec.field(default_factory=dict)
    description: str = ""


class VmNic(Spec, kw_only=True, rename="camel", forbid_unknown_fields=True):
    """One NIC of one VM on one node, attached to a network through the bridge CNI plugin."""

    kind: ClassVar[str] = "VmNic"
    vm: str
    node: str
    network: str
    mac: str | None = None


class Nic(msgspec.Struct, kw_only=True, rename="camel"):
    """A physical NIC as an executor sees it. ``master`` is the device it is enslaved to."""

    name: str
    mac: str = ""
    state: str = "unknown"
    master: str | None = None


class MgmtPath(msgspec.Struct, kw_only=True, rename="camel"):
    """How a node reaches the control plane, as its executor reports it (``Node.mgmt``).

    What the planner and the executor need to refuse a change that would cut it: the
    interface holding the node's management address (``mgmt-br`` or ``mgmt-br.<vid>``), its
    addresses (CIDR), the destinations routed through it via a gateway (CIDR; ``0.0.0.0/0``
    for a default route) and those gateways, the addresses of the NATS servers the executor
    may connect to, the interface's MTU, and the NICs under ``mgmt-bo`` (or ``mgmt-br``).
    """

    interface: str = ""
    addresses: list[str] = msgspec.field(default_factory=list)
    routes: list[str] = msgspec.field(default_factory=list)
    gateways: list[str] = msgspec.field(default_factory=list)
    nats_addresses: list[str] = msgspec.field(default_factory=list)
    mtu: int = 0
    nics: list[str] = msgspec.field(default_factory=list)


class Node(msgspec.Struct, kw_only=True, rename="camel"):
    """A node as its executor reports it (inventory and heartbeat); never written by users."""

    kind: ClassVar[str] = "Node"
    name: str
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    nics: list[Nic] = msgspec.field(default_factory=list)
    mgmt_vlan: int | None = None
    heartbeat_at: EpochSeconds = 0.0
    executor_version: str = ""
    # The highest generation this node's executor has handled (kept on the node's disk across
    # restarts): a planner never issues a generation at or below it.
    applied_generation: int = 0
    # The node's path to the control plane (None: an executor that does not report it, whose
    # addresses the planner then cannot check against its management subnet).
    mgmt: MgmtPath | None = None


USER_KINDS: dict[str, type[Spec]] = {
    cls.kind: cls for cls in (ClusterNetwork, VlanConfig, Network, HostNetwork, VmNic)
}
"""Kinds a person may submit, by name, in the order they are applied."""

KIND_ORDER: tuple[str, ...] = tuple(USER_KINDS)


def canonical_kind(kind: str) -> str | None:
    """The kind as l2net spells it (``Network``) for a kind a person typed in a request, like
    kubectl: any case, singular or plural (``network``, ``NETWORKS``); None if there is none.
    Manifests and subjects always use the canonical spelling."""
    wanted = kind.lower()
    for known in (*USER_KINDS, "Node"):
        if wanted in (known.lower(), known.lower() + "s"):
            return known
    return None


MGMT = "mgmt"
"""The built-in cluster network: exists on every node, never created or changed by users."""

# ---------------------------------------------------------------------------
# Compiled state of one node (what the executor converges to, what the auditor checks)
# ---------------------------------------------------------------------------


class VlanRange(msgspec.Struct, frozen=True, kw_only=True, rename="camel", array_like=False):
    """A bridge VLAN entry on one port: ``vid``..``vid_end``, flags as in ``bridge vlan``."""

    vid: int
    vid_end: int = 0
    pvid: bool = False
    untagged: bool = False

    @property
    def last(self) -> int:
        return self.vid_end or self.vid


class BondIntent(msgspec.Struct, kw_only=True, rename="camel"):
    """The uplink bond. ``options`` use the kernel's option names (``lacp_rate``...)."""

    name: str
    ports: list[str]
    mode: BondMode
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    mtu: int = 1500
    txqlen: int | None = None
    hwaddr: str | None = None


class ClusterNetworkIntent(msgspec.Struct, kw_only=True, rename="camel"):
    """One cluster network on one node.

    For ``mgmt`` the bridge and bond exist already and are protected: ``managed`` is False,
    ``bond`` is None, and only ``uplink_vlans`` (the VIDs of networks placed on mgmt) are
    for the executor to add and remove.
    """

    name: str
    bridge: str
    bond_name: str
    managed: bool
    bond: BondIntent | None
    mtu: int
    uplink_vlans: list[VlanRange]


class HostVlanIntent(msgspec.Struct, kw_only=True, rename="camel"):
    """A host VLAN interface ``<bridge>.<vid>`` with the ``self`` VID on the bridge."""

    name: str
    host_network: str
    cluster_network: str
    bridge: str
    vlan: int
    addresses: list[str] = msgspec.field(default_factory=list)
    mtu: int = 1500


class VmPortIntent(msgspec.Struct, kw_only=True, rename="camel"):
    """One VM NIC: CNI ADD with ``cni_config`` into netns ``vm`` as ``ifname``, exact VIDs."""

    name: str
    vm: str
    ifname: str
    network: str
    cluster_network: str
    bridge: str
    vlans: list[VlanRange]
    mac: str | None
    cni_config: dict[str, Any]


class NodeIntent(msgspec.Struct, kw_only=True, rename="camel", tag="NodeIntent"):
    """Desired L2 state of one node at one generation, published on ``l2.intent.<node>``."""

    node: str
    generation: int
    cluster_networks: list[ClusterNetworkIntent] = msgspec.field(default_factory=list)
    host_vlans: list[HostVlanIntent] = msgspec.field(default_factory=list)
    vm_ports: list[VmPortIntent] = msgspec.field(default_factory=list)
    spec_revision: int = 0
    issued_at: EpochSeconds = 0.0
    signature: str | None = None


# ---------------------------------------------------------------------------
# Reports from executors and the auditor (tolerant)
# ---------------------------------------------------------------------------

Phase = Literal["Progressing", "Applied", "Failed", "RolledBack"]


class ObjectResult(msgspec.Struct, kw_only=True, rename="camel"):
    """One entry of a status's ``results``: ``action`` is for people; programs read the same
    step from ``operation`` (``link.create``, ``link.set``, ``vlan.add``, ...; empty when the
    entry is not a kernel step) on ``object`` with ``fields`` (camelCase names, JSON values)."""

    object: str
    action: str
    ok: bool = True
    error: str | None = None
    operation: str = ""
    fields: dict[str, Any] = msgspec.field(default_factory=dict)


class NodeStatus(msgspec.Struct, kw_only=True, rename="camel", tag="NodeStatus"):
    """An executor's report on one intent, published on ``l2.status.<node>``."""

    node: str
    phase: Phase
    observed_generation: int
    results: list[ObjectResult] = msgspec.field(default_factory=list)
    error: str | None = None
    netlink_writes: int = 0
    duration_s: float = 0.0
    at: EpochSeconds = 0.0
    # What was really applied: sha256 (hex) of the canonical bytes of the intent this status
    # is about (:func:`shared.wire.intents.digest`), so that the auditor compares the node with the
    # intent it runs, not with the last one published.
    intent_digest: str | None = None


class ObservedState(msgspec.Struct, kw_only=True, rename="camel", tag="ObservedState"):
    """A node's actual managed L2 state, published on ``l2.observed.<node>``."""

    node: str
    generation: int
    links: list[dict[str, Any]] = msgspec.field(default_factory=list)
    vlans: dict[str, list[VlanRange]] = msgspec.field(default_factory=dict)
    reason: str = ""
    at: EpochSeconds = 0.0
    # Added by the executor issue: VM namespaces present, and the node's mgmt VLAN (if any).
    namespaces: list[str] = msgspec.field(default_factory=list)
    mgmt_vlan: int | None = None


class DriftItem(msgspec.Struct, kw_only=True, rename="camel"):
    """One drift episode: ``object``'s field ``path`` differs (``""``: the object's presence).

    ``first_seen`` and ``resolved_at`` are the times of the events that showed the difference
    first and no more (``None`` while it lasts). ``node/<node>`` objects are about the node
    itself: ``generation`` (stuck on an old one) and ``heartbeat`` (stopped reporting).
    """

    object: str
    path: str
    desired: JsonValue
    actual: JsonValue
    first_seen: EpochSeconds
    resolved_at: EpochSeconds | None = None


class DriftReport(msgspec.Struct, kw_only=True, rename="camel", tag="DriftReport"):
    """Auditor findings for one node, published on ``l2.drift.<node>``."""

    node: str
    generation: int
    items: list[DriftItem] = msgspec.field(default_factory=list)
    at: EpochSeconds = 0.0
    # Added by the auditor issue: each report carries only the episodes that opened or
    # resolved (a finding is published once); these say where the node stands after it.
    open: int = 0
    """Findings open on the node after this report."""
    unverified: bool = False
    """The node stopped reporting: its last known state may no longer be true."""
    heals: int = 0
    """How often the auditor has asked this node's executor to re-converge (heal policy)."""
    note: str = ""


EVENT_TYPES: tuple[type[msgspec.Struct], ...] = (
    NodeIntent,
    NodeStatus,
    ObservedState,
    DriftReport,
    Node,
)
