"""A synthetic fleet's history for the auditor, deterministic: the same arguments give the
same messages, byte for byte (times are counted from a fixed start, never read from a clock).

Each node is in ``cluster_networks`` cluster networks (``cn0``, ``cn1``... each a bond of two
NICs and a bridge) besides mgmt, with ``vlans`` VLAN networks spread over them (one VM NIC on
the first VLAN of each cluster network). Its history, in the order an executor writes it: a
heartbeat, the intent (generation 1), the Applied status, then ``observed`` observed states,
every other one drifted (a VID missing from the first bond: an episode opened, then
resolved), with a heartbeat every ten.

``python -m tests.bench.auditfleet --nats URL --nodes 1000 --observed 500`` publishes such a
history into a server's streams (what issue 11 measured: 1000 nodes, 501k events);
``make bench`` uses :func:`publish` with a smaller fleet.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator

import msgspec
from nats.aio.client import Client

from shared.domain.model import (
    BondIntent,
    ClusterNetworkIntent,
    NodeIntent,
    ObservedState,
    VlanRange,
    VmPortIntent,
)
from shared.runtime import bus
from shared.wire import subjects
from tests.auditor.conftest import applied, converged, heartbeat
from tests.executor.conftest import mgmt_cn
from tests.executor.labkit import UNTAGGED, nad

START = 1_800_000_000.0
"""The time of a node's first event (2027-01-15): fixed, so the history is the same bytes."""
FIRST_VID = 100


def fleet_intent(
    node: str,
    generation: int,
    *,
    cluster_networks: int,
    vlans: int,
    trunk: tuple[int, int] | None = None,
) -> NodeIntent:
    """A node in ``cluster_networks`` cluster networks carrying ``vlans`` VLAN networks
    (VIDs from 100, dealt out in turn), one VM NIC on the first VLAN of each; ``trunk``
    adds a trunk network on ``cn0`` with a VM NIC on it."""
    per_cn: list[list[int]] = [[] for _ in range(cluster_networks)]
    for i in range(vlans):
        per_cn[i % cluster_networks].append(FIRST_VID + i)
    cns, ports = [mgmt_cn()], []
    for i, vids in enumerate(per_cn):
        name = f"cn{i}"
        uplink = [UNTAGGED, *(VlanRange(vid=v) for v in vids)]
        if i == 0 and trunk is not None:
            lo, hi = trunk
            uplink = [UNTAGGED, VlanRange(vid=lo, vid_end=hi)]  # the trunk covers the VIDs
            trunk_vids = [VlanRange(vid=lo, vid_end=hi)]
            port = _port(cn=name, vm="vmt", network="trunk", vlans=trunk_vids, vid=None)
            port.cni_config["vlanTrunk"] = [{"minID": lo, "maxID": hi}]
            ports.append(port)
        cns.append(
            ClusterNetworkIntent(
                name=name,
                bridge=f"{name}-br",
                bond_name=f"{name}-bo",
                managed=True,
                bond=BondIntent(
                    name=f"{name}-bo",
                    ports=[f"eth{2 * i + 1}", f"eth{2 * i + 2}"],
                    mode="active-backup",
                    options={"miimon": 100},
                ),
                mtu=1500,
                uplink_vlans=uplink,
            )
        )
        if vids:
            vid = vids[0]
            access = [VlanRange(vid=vid, pvid=True, untagged=True)]
            ports.append(_port(cn=name, vm=f"vm{vid}", network=f"vlan{vid}", vlans=access, vid=vid))
    return NodeIntent(node=node, generation=generation, cluster_networks=cns, vm_ports=ports)


def _port(
    *, cn: str, vm: str, network: str, vlans: list[VlanRange], vid: int | None
) -> VmPortIntent:
    return VmPortIntent(
        name=f"{vm}-eth0",
        vm=vm,
        ifname="eth0",
        network=network,
        cluster_network=cn,
        bridge=f"{cn}-br",
        vlans=vlans,
        mac=None,
        cni_config=nad(network, f"{cn}-br", vid),
    )


def _drift(links: dict, vlans: dict) -> None:  # type: ignore[type-arg]
    """The first VLAN of cn0 gone from its bond (what ``bridge vlan del`` by hand does)."""
    vlans["cn0-bo"] = [v for v in vlans["cn0-bo"] if v.vid != FIRST_VID]


def node_history(
    node: str, *, observed: int, cluster_networks: int, vlans: int
) -> Iterator[tuple[str, bytes]]:
    """(subject, message) of one node's history, oldest first."""
    intent = fleet_intent(node, 1, cluster_networks=cluster_networks, vlans=vlans)
    yield subjects.node(node), bus.encode(heartbeat(node, START))
    yield subjects.intent(node), bus.encode(intent)
    yield subjects.status(node), bus.encode(applied(node, 1, START + 1))
    good = converged(intent, at=START)
    bad = converged(intent, at=START, change=_drift)
    for i in range(observed):
        at = START + 2 + i
        state: ObservedState = msgspec.structs.replace(bad if i % 2 else good, at=at)
        yield subjects.observed(node), bus.encode(state)
        if i % 10 == 9:
            yield subjects.node(node), bus.encode(heartbeat(node, at))


async def publish(
    nc: Client, *, nodes: int, observed: int, cluster_networks: int = 2, vlans: int = 20
) -> int:
    """Publish the fleet's history into JetStream; the number of messages.

    Nodes are published side by side (one message of each node at a time, acknowledged
    together), each node's own messages in order."""
    js = nc.jetstream()
    await bus.ensure_streams(js, list(bus.STREAMS))
    histories = [
        node_history(
            f"node-{n:04d}", observed=observed, cluster_networks=cluster_networks, vlans=vlans
        )
        for n in range(1, nodes + 1)
    ]
    count = 0
    while histories:
        batch: list[tuple[str, bytes]] = []
        alive = []
        for history in histories:
            message = next(history, None)
            if message is not None:
                batch.append(message)
                alive.append(history)
        histories = alive
        await asyncio.gather(*(js.publish(subject, data) for subject, data in batch))
        count += len(batch)
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nats", required=True, help="the server to publish into")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--observed", type=int, default=500, help="observed states per node")
    parser.add_argument("--cluster-networks", type=int, default=2)
    parser.add_argument("--vlans", type=int, default=20, help="VLAN networks per node")
    args = parser.parse_args()

    async def run() -> int:
        nc = await bus.connect([args.nats], name="auditfleet")
        try:
            return await publish(
                nc,
                nodes=args.nodes,
                observed=args.observed,
                cluster_networks=args.cluster_networks,
                vlans=args.vlans,
            )
        finally:
            await nc.drain()

    print(f"published {asyncio.run(run())} messages")


if __name__ == "__main__":
    main()
