"""The L2 vocabulary: the values Linux and l2net give L2 words, in one place.

Bond modes (names and the kernel's numbers) and the bond options that are enumerations,
the VLAN id range, the interface name rule, the MTU bounds, the network types and the
bridge CNI configuration l2net generates. The planner validates against these, the
compiler writes them, the executor turns them into netlink numbers and back, and the
manifest reader names them in its errors: each reads them from here.

Fields that take one of a set of values are ``Literal`` types, so that the msgspec
structs which use them (:mod:`shared.domain.model`) refuse any other value when decoding, and
mypy refuses one written in code; on the wire they stay JSON strings.

Kernel sources cited: ``include/uapi/linux/if_bonding.h``,
``drivers/net/bonding/bond_options.c``, ``net/core/dev.c`` (``dev_valid_name``).
Standard library only.
"""

from __future__ import annotations

from typing import Any, Final, Literal, get_args

# ---------------------------------------------------------------------------
# Bonds
# ---------------------------------------------------------------------------

BondMode = Literal[
    "balance-rr",
    "active-backup",
    "balance-xor",
    "broadcast",
    "802.3ad",
    "balance-tlb",
    "balance-alb",
]
"""A bond mode by name; the kernel's number is its index (``BOND_MODE_ROUNDROBIN`` = 0...)."""

BOND_MODES: Final[tuple[BondMode, ...]] = get_args(BondMode)
BOND_MODE_NAMES: Final[dict[int, BondMode]] = dict(enumerate(BOND_MODES))
"""The kernel's number of each bond mode (what netlink reports) -> its name."""
BOND_MODE_NUMBERS: Final[dict[BondMode, int]] = {name: n for n, name in BOND_MODE_NAMES.items()}
DEFAULT_BOND_MODE: Final[BondMode] = "active-backup"

LacpRate = Literal["slow", "fast"]
AdSelect = Literal["stable", "bandwidth", "count"]
ArpValidate = Literal["none", "active", "backup", "all", "filter", "filter_active", "filter_backup"]
XmitHashPolicy = Literal["layer2", "layer2+3", "layer3+4", "encap2+3", "encap3+4", "vlan+srcmac"]

LACP_RATES: Final[tuple[LacpRate, ...]] = get_args(LacpRate)
AD_SELECTS: Final[tuple[AdSelect, ...]] = get_args(AdSelect)
ARP_VALIDATES: Final[tuple[ArpValidate, ...]] = get_args(ArpValidate)
XMIT_HASH_POLICIES: Final[tuple[XmitHashPolicy, ...]] = get_args(XmitHashPolicy)

BOND_ENUMS: Final[dict[str, dict[int, str]]] = {
    "xmit_hash_policy": {
        0: "layer2",
        1: "layer3+4",
        2: "layer2+3",
        3: "encap2+3",
        4: "encap3+4",
        5: "vlan+srcmac",
    },
    "lacp_rate": {0: "slow", 1: "fast"},
    "ad_select": {0: "stable", 1: "bandwidth", 2: "count"},
    "arp_validate": {
        0: "none",
        1: "active",
        2: "backup",
        3: "all",
        4: "filter",
        5: "filter_active",
        6: "filter_backup",
    },
}
"""The kernel's numbers of the bond options that are enumerations, by the kernel's (sysfs)
option name. The kernel reports numbers; people write names."""

BOND_INT_OPTIONS: Final[tuple[str, ...]] = ("miimon", "updelay", "downdelay", "arp_interval")
BOND_OPTIONS: Final[tuple[str, ...]] = (
    *BOND_INT_OPTIONS,
    *BOND_ENUMS,
    "arp_ip_target",
    "primary",
)
"""Bond options l2net sets and reads back, by the kernel's (sysfs) names."""
BOND_INT_MAX: Final = 2**31 - 1
"""The largest number a numeric bond option takes (the kernel's options are 32-bit)."""
MAX_ARP_TARGETS: Final = 16
"""``BOND_MAX_ARP_TARGETS``."""

LINK_AGGREGATION: Final[dict[BondMode, str]] = {
    "balance-rr": "manual (static LAG)",
    "active-backup": "none",
    "balance-xor": "manual (static LAG)",
    "broadcast": "manual (static LAG)",
    "802.3ad": "LACP",
    "balance-tlb": "none",
    "balance-alb": "none",
}
"""How the switch ports of a bond must be aggregated, per bond mode (the seed's table)."""

# ---------------------------------------------------------------------------
# VLANs, interface names, MTU
# ---------------------------------------------------------------------------

VID_MIN: Final = 1
VID_MAX: Final = 4094
"""802.1Q VLAN ids: 0 means "no VLAN" and 4095 is reserved."""

IFNAME_MAX: Final = 15
"""Linux's interface name limit: ``IFNAMSIZ`` (16) minus the terminating NUL."""

KERNEL_MTU_MIN: Final = 68
"""``ETH_MIN_MTU``."""
KERNEL_MTU_MAX: Final = 65535
"""The largest MTU a bridge or bond accepts."""
UPLINK_MTU_MIN: Final = 576
UPLINK_MTU_MAX: Final = 9000
"""The MTUs a VlanConfig may give its uplink (``linkAttributes.mtu``; 0 means the default)."""
DEFAULT_MTU: Final = 1500


def ifname_error(name: object) -> str | None:
    """What is wrong with ``name`` as a Linux interface name (``dev_valid_name``), or None."""
    if not isinstance(name, str) or not name:
        return f"{name!r} is not an interface name"
    if len(name) > IFNAME_MAX or name in (".", "..") or any(c in name for c in "/:\x00"):
        return f"{name!r} is not a valid interface name (1-{IFNAME_MAX} characters, no '/', ':')"
    if any(c.isspace() or not c.isprintable() for c in name):
        return f"{name!r} is not a valid interface name (no spaces or control characters)"
    return None


# ---------------------------------------------------------------------------
# Networks and their CNI configuration
# ---------------------------------------------------------------------------

NetworkType = Literal["L2VlanNetwork", "UntaggedNetwork", "L2VlanTrunkNetwork"]
NETWORK_TYPES: Final[tuple[NetworkType, ...]] = get_args(NetworkType)
HostNetworkMode = Literal["static"]
HOST_NETWORK_MODES: Final[tuple[HostNetworkMode, ...]] = get_args(HostNetworkMode)

CNI_VERSION: Final = "0.3.1"
CNI_PLUGIN: Final = "bridge"
"""The one CNI plugin l2net runs: containernetworking's ``bridge``."""
CNI_KEYS: Final = frozenset(
    {"cniVersion", "name", "type", "bridge", "promiscMode", "vlan", "vlanTrunk", "ipam", "mtu"}
)
"""The keys of the bridge CNI config l2net generates; a VM NIC's config with any other key
is refused."""


def bridge_cni_config(*, network: str, bridge: str) -> dict[str, Any]:
    """The least bridge CNI config l2net runs: the plugin, its version, network and bridge.

    The planner adds the VLANs, ``promiscMode``, ``ipam`` and ``mtu``; the executor uses it
    as is to unplug or re-plug a VM NIC whose full config it no longer has.
    """
    return {"cniVersion": CNI_VERSION, "name": network, "type": CNI_PLUGIN, "bridge": bridge}
