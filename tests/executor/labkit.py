"""The seed topology as node intents, and small helpers to look inside lab nodes.

Seed (Harvester's deep-dive): cluster network ``oob`` on eth1+eth2 (bond active-backup),
networks ``vlan100`` (VLAN 100) on mgmt, ``vlan200`` (VLAN 200) and ``untagged-network`` on
oob; one VM per network per node. VMs are namespaces ``vm100``, ``vm200``, ``vmu`` inside
each node. Intents are built here directly, as the planner would compile them.
"""

from __future__ import annotations

import json
from typing import Any

from services.lab import Lab
from shared.domain.l2state import canonical_vlans, format_vlans
from shared.domain.model import (
    BondIntent,
    ClusterNetworkIntent,
    HostVlanIntent,
    NodeIntent,
    VlanRange,
    VmPortIntent,
)
from tests.executor.conftest import mgmt_cn

UNTAGGED = VlanRange(vid=1, pvid=True, untagged=True)


def nad(name: str, bridge: str, vlan: int | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {
        "cniVersion": "0.3.1",
        "name": name,
        "type": "bridge",
        "bridge": bridge,
        "promiscMode": True,
    }
    if vlan is not None:
        config["vlan"] = vlan
    config["ipam"] = {}
    return config


def seed_intent(
    node: str,
    generation: int,
    *,
    mode: str = "active-backup",
    vlan200: int | None = 200,
    host_vlans: list[HostVlanIntent] | None = None,
    extra_oob_vids: list[int] | None = None,
    trunk: tuple[int, int] | None = None,
    bond_options: dict[str, Any] | None = None,
    mtu: int = 1500,
) -> NodeIntent:
    """The seed topology for ``node``; ``vlan200=None`` deletes that network.

    ``trunk=(lo, hi)`` adds a trunk network on oob carrying VIDs lo-hi, and a VM ``vmt`` on it.
    """
    oob_vids = [UNTAGGED]
    oob_vids += [
        VlanRange(vid=v) for v in sorted({*([vlan200] if vlan200 else []), *(extra_oob_vids or [])})
    ]

    def port(
        vm: str, network: str, bridge: str, vlans: list[VlanRange], vlan: int | None = None
    ) -> VmPortIntent:
        return VmPortIntent(
            name=f"{node}-{vm}",
            vm=vm,
            ifname="eth0",
            network=network,
            cluster_network=bridge.removesuffix("-br"),
            bridge=bridge,
            vlans=vlans,
            mac=None,
            cni_config=nad(network, bridge, vlan),
        )

    ports = [
        port("vm100", "vlan100", "mgmt-br", [VlanRange(vid=100, pvid=True, untagged=True)], 100),
        port("vmu", "untagged-network", "oob-br", [UNTAGGED]),
    ]
    if vlan200 is not None:
        vlans = [VlanRange(vid=vlan200, pvid=True, untagged=True)]
        ports.append(port("vm200", "vlan200", "oob-br", vlans, vlan200))
    if trunk is not None:
        lo, hi = trunk
        trunk_port = port("vmt", "trunk", "oob-br", [VlanRange(vid=lo, vid_end=hi)])
        trunk_port.cni_config["vlanTrunk"] = [{"minID": lo, "maxID": hi}]
        ports.append(trunk_port)
        oob_vids = canonical_vlans([*oob_vids, VlanRange(vid=lo, vid_end=hi)])
    return NodeIntent(
        node=node,
        generation=generation,
        cluster_networks=[
            mgmt_cn([VlanRange(vid=100)]),
            ClusterNetworkIntent(
                name="oob",
                bridge="oob-br",
                bond_name="oob-bo",
                managed=True,
                bond=BondIntent(
                    name="oob-bo",
                    ports=["eth1", "eth2"],
                    mode=mode,
                    options=bond_options or {"miimon": 100},
                    mtu=mtu,
                ),
                mtu=mtu,
                uplink_vlans=oob_vids,
            ),
        ],
        host_vlans=host_vlans or [],
        vm_ports=ports,
    )


def mgmt_only_intent(node: str, generation: int) -> NodeIntent:
    """The seed with cluster network ``oob`` deleted: only vlan100 on mgmt remains."""
    it = seed_intent(node, generation, vlan200=None)
    it.cluster_networks = it.cluster_networks[:1]
    it.vm_ports = [p for p in it.vm_ports if p.cluster_network == "mgmt"]
    return it


async def sh(lab: Lab, node: str, *argv: str, check: bool = True, timeout: float = 60) -> str:
    """Run a command in a node; its stdout (fails the test on a non-zero exit if ``check``)."""
    rc, out, err = await lab.aexec(node, list(argv), timeout=timeout)
    if check:
        assert rc == 0, f"{node}: {' '.join(argv)} -> {rc}\n{out}\n{err}"
    return out


async def port_vids(lab: Lab, node: str, port: str) -> list[str]:
    """A port's VLAN entries as ``bridge vlan show`` words, ranges merged: ``1 PVID untagged``,
    ``310-320``."""
    data = json.loads(await sh(lab, node, "bridge", "-j", "vlan", "show", "dev", port))
    ranges = []
    for entry in data:
        if entry.get("ifname") != port:
            continue
        for v in entry.get("vlans", []):
            flags = v.get("flags", [])
            ranges.append(
                VlanRange(
                    vid=v["vlan"],
                    vid_end=v.get("vlanEnd", 0),
                    pvid="PVID" in flags,
                    untagged="Egress Untagged" in flags,
                )
            )
    return format_vlans(ranges)


async def vm_ping(lab: Lab, node: str, vm: str, address: str) -> bool:
    """Real ICMP from the VM namespace ``vm`` in ``node`` to ``address`` (169.254/16 only).

    The VM's neighbour cache is flushed first, so the exchange starts with a broadcast ARP:
    after a bond changes its active port, the lab switch may still send a node's frames to
    the port that is now the backup, until that node transmits again (as a real switch).
    """
    assert address.startswith("169.254."), "lab traffic stays in 169.254.0.0/16"
    await sh(lab, node, "ip", "netns", "exec", vm, "ip", "neigh", "flush", "all")
    rc, _, _ = await lab.aexec(
        node,
        ["ip", "netns", "exec", vm, "ping", "-c", "3", "-i", "0.3", "-W", "2", address],
        timeout=30,
    )
    return rc == 0


async def vm_address(lab: Lab, node: str, vm: str, cidr: str) -> None:
    """Give the VM's eth0 an address (as its guest would: ``ipam: {}`` sets none)."""
    assert cidr.startswith("169.254.")
    await sh(lab, node, "ip", "netns", "exec", vm, "ip", "addr", "replace", cidr, "dev", "eth0")
    await sh(lab, node, "ip", "netns", "exec", vm, "ip", "link", "set", "eth0", "up")
