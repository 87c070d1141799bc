"""The benchmark topology, written once for each tool compared.

LAB-NOTES section 4: bond ``oob-bo`` of ``eth1``+``eth2`` (active-backup, miimon 100), the
VLAN-aware bridge ``oob-br`` with the bond as a port, trunk VIDs 2-4094 on the bond; plus, in
the larger variant, VM ports on the bridge (one per entry of ``vms``: access VLAN or
untagged). The same topology is rendered as

* an l2net :class:`~shared.domain.model.NodeIntent` (VM NICs through the bridge CNI plugin into
  network namespaces, as the executor does);
* iproute2 batches (``ip -batch`` and ``bridge -batch``; VM NICs as veths into namespaces);
* an ifupdown2 interfaces file (VM NICs as veth pairs left in the node's namespace, since
  ifupdown2 has no notion of network namespaces: its job is a little lighter).

:func:`summary` reduces a node's state (as l2net reads it) to what every tool must have
made, so the benchmark can check that the three tools built the same thing.
"""

from __future__ import annotations

from typing import Any

import msgspec

from shared.domain.l2state import NodeL2State, format_vlans
from shared.domain.model import (
    BondIntent,
    ClusterNetworkIntent,
    NodeIntent,
    VlanRange,
    VmPortIntent,
)

BOND = "oob-bo"
BRIDGE = "oob-br"
NICS = ("eth1", "eth2")
TRUNK = (2, 4094)
UNTAGGED = VlanRange(vid=1, pvid=True, untagged=True)


class Vm(msgspec.Struct, frozen=True):
    """A VM with one NIC on ``oob-br``: access VLAN ``vlan``, or untagged when None."""

    name: str
    vlan: int | None = None

    @property
    def port(self) -> str:
        """The host-side port name used by the iproute2 and ifupdown2 variants."""
        return f"{self.name}-p"


class Topology(msgspec.Struct, frozen=True):
    """One benchmark topology: the uplink of LAB-NOTES section 4 plus ``vms``."""

    name: str
    vms: tuple[Vm, ...] = ()


UPLINK = Topology(name="uplink")
UPLINK_VMS = Topology(name="uplink+3vm", vms=(Vm("vm100", 100), Vm("vm200", 200), Vm("vmu", None)))


def nad(vm: Vm) -> dict[str, Any]:
    config: dict[str, Any] = {
        "cniVersion": "0.3.1",
        "name": f"net-{vm.name}",
        "type": "bridge",
        "bridge": BRIDGE,
        "promiscMode": True,
    }
    if vm.vlan is not None:
        config["vlan"] = vm.vlan
    config["ipam"] = {}
    return config


def intent(topo: Topology, *, node: str, generation: int = 1) -> NodeIntent:
    """The topology as the planner would compile it for ``node``."""
    ports = [
        VmPortIntent(
            name=f"{node}-{vm.name}",
            vm=vm.name,
            ifname="eth0",
            network=f"net-{vm.name}",
            cluster_network="oob",
            bridge=BRIDGE,
            vlans=[VlanRange(vid=vm.vlan, pvid=True, untagged=True) if vm.vlan else UNTAGGED],
            mac=None,
            cni_config=nad(vm),
        )
        for vm in topo.vms
    ]
    return NodeIntent(
        node=node,
        generation=generation,
        cluster_networks=[
            ClusterNetworkIntent(
                name="oob",
                bridge=BRIDGE,
                bond_name=BOND,
                managed=True,
                bond=BondIntent(
                    name=BOND, ports=list(NICS), mode="active-backup", options={"miimon": 100}
                ),
                mtu=1500,
                uplink_vlans=[UNTAGGED, VlanRange(vid=TRUNK[0], vid_end=TRUNK[1])],
            )
        ],
        vm_ports=ports,
    )


def ip_batch(topo: Topology, *, veths: bool = True) -> str:
    """``ip -batch`` input: bond, ports, bridge, bond as port, VM namespaces and (unless
    ``veths`` is False: the CNI plugin makes them) VM veths."""
    lines = [f"link add {BOND} type bond mode active-backup miimon 100"]
    for nic in NICS:
        lines += [f"link set {nic} down", f"link set {nic} master {BOND}"]
    lines += [
        f"link add {BRIDGE} type bridge vlan_filtering 1",
        f"link set {BOND} master {BRIDGE}",
        *(f"link set {nic} up" for nic in NICS),
        f"link set {BOND} up",
        f"link set {BRIDGE} up",
    ]
    for vm in topo.vms:
        lines.append(f"netns add {vm.name}")
        if veths:
            lines += [
                f"link add {vm.port} type veth peer name eth0 netns {vm.name}",
                f"link set {vm.port} master {BRIDGE} up",
            ]
    return "\n".join(lines) + "\n"


def bridge_batch(topo: Topology) -> str:
    """``bridge -batch`` input: the trunk range on the bond in one line, VM port VIDs."""
    lines = [f"vlan add dev {BOND} vid {TRUNK[0]}-{TRUNK[1]}"]
    for vm in topo.vms:
        if vm.vlan is not None:
            lines += [
                f"vlan del dev {vm.port} vid 1",
                f"vlan add dev {vm.port} vid {vm.vlan} pvid untagged",
            ]
    return "\n".join(lines) + "\n"


def cni_fix_batch(topo: Topology, host_ports: dict[str, str]) -> str:
    """``bridge -batch`` input after CNI ADD by hand: the trunk on the bond, and VID 1 off
    the VLAN VMs' ports (the bridge plugin 1.1.1 leaves it there; ``host_ports``: VM name to
    the host veth the plugin made)."""
    lines = [f"vlan add dev {BOND} vid {TRUNK[0]}-{TRUNK[1]}"]
    lines += [f"vlan del dev {host_ports[vm.name]} vid 1" for vm in topo.vms if vm.vlan]
    return "\n".join(lines) + "\n"


def vm_up_commands(topo: Topology) -> list[list[str]]:
    """The VM-side ``eth0 up`` (a line of ``ip -batch`` cannot name another namespace)."""
    return [["ip", "-n", vm.name, "link", "set", "eth0", "up"] for vm in topo.vms]


def interfaces_file(topo: Topology, *, ports: dict[str, str] | None = None) -> str:
    """The topology as an ifupdown2 ``interfaces`` file.

    ``ports`` (VM name to host veth): describe VM ports that exist already (plugged by the
    executor through the CNI plugin) instead of veth pairs for ifupdown2 to create.
    """
    names = {vm.name: (ports or {}).get(vm.name, vm.port) for vm in topo.vms}
    parts = [f"auto {nic}\niface {nic}\n" for nic in NICS]
    parts.append(
        f"auto {BOND}\niface {BOND}\n"
        f"    bond-slaves {' '.join(NICS)}\n"
        "    bond-mode active-backup\n"
        "    bond-miimon 100\n"
        f"    bridge-vids {TRUNK[0]}-{TRUNK[1]}\n"
    )
    for vm in topo.vms:
        text = f"auto {names[vm.name]}\niface {names[vm.name]}\n"
        if ports is None:
            text += f"    link-type veth\n    veth-peer-name {vm.name}-i\n"
        if vm.vlan is not None:
            text += f"    bridge-access {vm.vlan}\n"
        parts.append(text)
    bridge_ports = " ".join([BOND, *(names[vm.name] for vm in topo.vms)])
    parts.append(
        f"auto {BRIDGE}\niface {BRIDGE}\n"
        f"    bridge-ports {bridge_ports}\n"
        "    bridge-vlan-aware yes\n"
        "    bridge-stp off\n"
    )
    return "\n".join(parts)


def summary(state: NodeL2State) -> dict[str, Any]:
    """What every tool must have built, from a node's state as l2net reads it.

    VM ports are compared by their VIDs only: l2net's host-side veth names come from the CNI
    plugin, the other tools' are fixed names.
    """
    links = state.links
    bond = links.get(BOND)
    bridge = links.get(BRIDGE)
    ports = sorted(
        " ".join(format_vlans(state.vlans.get(name, [])))
        for name, link in links.items()
        if link.master == BRIDGE and name != BOND
    )
    return {
        "bond": None
        if bond is None
        else {
            "mode": bond.bond_mode,
            "miimon": (bond.bond_options or {}).get("miimon"),
            "master": bond.master,
            "up": bond.up,
        },
        "nics": {nic: links[nic].master if nic in links else None for nic in NICS},
        "bridge": None if bridge is None else {"vlanFiltering": bridge.vlan_filtering},
        "bondVlans": format_vlans(state.vlans.get(BOND, [])),
        "vmPorts": ports,
    }
