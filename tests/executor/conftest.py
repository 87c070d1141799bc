"""Executor fixtures: a private network namespace per test standing in for a node.

The host kernel has bridges and veth but no bonding, 802.1Q or VLAN filtering, so a host
"node" here is a namespace ``l2t-<random>`` holding what a Harvester node has after install
and the host kernel can build: ``mgmt-br`` (a plain bridge) with ``mgmt-bo`` (a veth
standing in for the bond) as its port, and a spare NIC ``eth1``. The executor's kernel layer
works inside that namespace and never in the root namespace. VMs are namespaces named
``<node-ns>-<vm>``; everything is removed by the names recorded here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest
from pyroute2 import AsyncIPRoute
from pyroute2 import netns as pyroute2_netns

from services.executor.kernel import OWNED_NETNS_DIR, NetlinkKernel
from services.executor.service import Executor, ExecutorConfig
from shared.domain.model import ClusterNetworkIntent, NodeIntent, VlanRange, VmPortIntent
from shared.runtime import natsserver
from tests import keys


@dataclass
class HostNode:
    """A namespace standing in for a node, and the VM names tests may use in it."""

    ns: str
    node: str
    vms: list[str] = field(default_factory=list)

    def vm(self, name: str) -> str:
        full = f"{self.ns}-{name}"
        if full not in self.vms:
            self.vms.append(full)
        return full


async def _build_node(ns: str) -> None:
    ipr = AsyncIPRoute(netns=ns)
    try:
        await ipr.link("add", ifname="mgmt-br", kind="bridge")
        await ipr.link("add", ifname="mgmt-bo", kind="veth", peer={"ifname": "mgmt-up"})
        await ipr.link("add", ifname="eth1", kind="veth", peer={"ifname": "eth1-peer"})
        br = (await ipr.link_lookup(ifname="mgmt-br"))[0]
        for name in ("mgmt-bo", "mgmt-up", "eth1", "eth1-peer"):
            idx = (await ipr.link_lookup(ifname=name))[0]
            await ipr.link("set", index=idx, state="up")
        bo = (await ipr.link_lookup(ifname="mgmt-bo"))[0]
        await ipr.link("set", index=bo, master=br)
        await ipr.link("set", index=br, state="up")
    finally:
        ipr.close()


@pytest.fixture
def host_node() -> Iterator[HostNode]:
    """A fresh node namespace; removed with every VM namespace the test named."""
    ns = f"l2t-{secrets.token_hex(3)}"
    pyroute2_netns.create(ns)
    node = HostNode(ns=ns, node=f"host-{ns}")
    try:
        asyncio.run(_build_node(ns))
        yield node
    finally:
        present = set(pyroute2_netns.listnetns())
        for name in [*node.vms, ns]:
            if name in present:
                pyroute2_netns.remove(name)
        for name in node.vms:  # the executor's records of the VM namespaces it made
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(OWNED_NETNS_DIR, name))


@pytest.fixture
async def kernel(host_node: HostNode) -> AsyncIterator[NetlinkKernel]:
    k = NetlinkKernel(host_node.node, netns=host_node.ns)
    try:
        yield k
    finally:
        await k.close()


class ExecutorFactory(Protocol):
    def __call__(
        self, node: HostNode, *, labels: dict[str, str] | None = None
    ) -> Awaitable[Executor]: ...


@pytest.fixture
async def executors(
    nats_server: natsserver.EmbeddedNats, tmp_path: Path
) -> AsyncIterator[ExecutorFactory]:
    """Starts real executors on the test's bus, each working in its namespace node (fast
    heartbeats) with its own state directory (the same one when a node's executor is
    started again, as after a restart); those still running are stopped at the end."""
    started: list[Executor] = []

    async def start(node: HostNode, *, labels: dict[str, str] | None = None) -> Executor:
        ex = Executor(
            ExecutorConfig(
                node=node.node,
                servers=[nats_server.url],
                labels=labels or {},
                heartbeat_s=0.3,
                trusted_keys=[keys.PUBLIC],
                state_dir=tmp_path / "executor-state" / node.node,
            ),
            NetlinkKernel(node.node, netns=node.ns),
        )
        await ex.start()
        started.append(ex)
        return ex

    try:
        yield start
    finally:
        for ex in started:
            if not ex._stopped.is_set():
                await ex.stop()


UNTAGGED = [VlanRange(vid=1, pvid=True, untagged=True)]


def mgmt_cn(uplink_vlans: list[VlanRange] | None = None) -> ClusterNetworkIntent:
    """mgmt as the planner compiles it: not managed, only the VIDs of its networks."""
    return ClusterNetworkIntent(
        name="mgmt",
        bridge="mgmt-br",
        bond_name="mgmt-bo",
        managed=False,
        bond=None,
        mtu=1500,
        uplink_vlans=uplink_vlans or [],
    )


def untagged_port(vm: str, ifname: str = "eth0", network: str = "untagged") -> VmPortIntent:
    """A VM NIC on an untagged network on mgmt-br, with the seed's NAD config."""
    return VmPortIntent(
        name=f"{vm}-{ifname}",
        vm=vm,
        ifname=ifname,
        network=network,
        cluster_network="mgmt",
        bridge="mgmt-br",
        vlans=UNTAGGED,
        mac=None,
        cni_config={
            "cniVersion": "0.3.1",
            "name": network,
            "type": "bridge",
            "bridge": "mgmt-br",
            "promiscMode": True,
            "ipam": {},
        },
    )


def intent(node: HostNode, generation: int, ports: list[VmPortIntent]) -> NodeIntent:
    return NodeIntent(
        node=node.node, generation=generation, cluster_networks=[mgmt_cn()], vm_ports=ports
    )
