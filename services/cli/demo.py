"""``l2net demo`` (what ``make demo`` runs): the seed's topology, end to end on the bus.

Embedded NATS with JetStream in a temporary directory, the planner, three nodes registering
the way executors do (inventory with labels and NICs), the seed's topology applied through
the planner's API like any client would, then the per-node intents and the NAD configs the
planner generated.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path

from services.cli.commands import format_switch_ports, print_apply_reply
from services.planner import compiling
from services.planner.service import Planner
from shared import api, bus, model, natsserver, subjects

SEED = Path(__file__).resolve().parents[2] / "docs" / "examples" / "seed.yaml"
NODES = ("node-1", "node-2", "node-3")
NETWORKS = ("vlan100", "vlan200", "untagged-network")


def vm_nics_manifest(nodes: tuple[str, ...] = NODES) -> str:
    """One VM NIC per network per node: VM ``<network>-<n>`` on node-n."""
    docs = []
    for node in nodes:
        n = node.rsplit("-", 1)[-1]
        for net in NETWORKS:
            vm = f"{net.split('-')[0]}-vm{n}"
            docs.append(f"kind: VmNic\nname: {vm}-nic0\nvm: {vm}\nnode: {node}\nnetwork: {net}\n")
    return "---\n".join(docs)


def demo_node(name: str) -> model.Node:
    """A node as an executor reports it after a Harvester-like install: eth0 in mgmt-bo."""
    return model.Node(
        name=name,
        labels={"topology.kubernetes.io/zone": "lab"},
        nics=[
            model.Nic(name="eth0", mac="", state="up", master="mgmt-bo"),
            model.Nic(name="eth1", mac="", state="up"),
            model.Nic(name="eth2", mac="", state="up"),
        ],
        heartbeat_at=time.time(),
    )


def _heading(text: str) -> None:
    print(f"\n== {text} " + "=" * max(0, 70 - len(text)))


def describe_intent(intent: model.NodeIntent) -> list[str]:
    lines = [f"{intent.node}: generation {intent.generation}"]
    for cn in intent.cluster_networks:
        vids = ", ".join(_vid_text(v) for v in cn.uplink_vlans) or "(none)"
        if cn.bond is None:
            lines.append(
                f"  {cn.name}: {cn.bridge} and {cn.bond_name} built in; {cn.bond_name} VIDs: {vids}"
            )
        else:
            opts = " ".join(f"{k}={v}" for k, v in cn.bond.options.items())
            lines.append(
                f"  {cn.name}: bond {cn.bond.name} [{' '.join(cn.bond.ports)}] {cn.bond.mode}"
                f" {opts} mtu {cn.mtu} -> bridge {cn.bridge}; {cn.bond.name} VIDs: {vids}"
            )
    for hv in intent.host_vlans:
        lines.append(f"  host interface {hv.name} {' '.join(hv.addresses)}")
    for port in intent.vm_ports:
        vids = ", ".join(_vid_text(v) for v in port.vlans)
        lines.append(f"  VM {port.vm} {port.ifname} -> {port.bridge} ({port.network}): {vids}")
    return lines


def _vid_text(v: model.VlanRange) -> str:
    text = str(v.vid) if not v.vid_end else f"{v.vid}-{v.vid_end}"
    flags = [f for f, on in (("PVID", v.pvid), ("Egress Untagged", v.untagged)) if on]
    return " ".join([text, *flags])


async def _main(state: Path) -> int:
    server = natsserver.start(state / "nats")
    print(f"embedded NATS with JetStream: {server.url} (store {server.store_dir})")
    try:
        nc = await bus.connect([server.url], name="l2net-demo")
        planner = Planner(nc)
        await planner.start()
        print("planner: listening on l2.api.*")

        _heading("nodes register (as their executors do)")
        js = nc.jetstream()
        await bus.ensure_streams(js, [subjects.STREAM_NODES])
        for name in NODES:
            await js.publish(subjects.node(name), bus.encode(demo_node(name)))
            print(f"{name}: eth0 (mgmt-bo), eth1, eth2")
        await _wait(lambda: all(n in planner.catalog.nodes for n in NODES), "nodes")

        _heading(f"l2net apply -f {SEED.relative_to(SEED.parents[2])}")
        reply = await _apply(nc, SEED.read_bytes())
        if print_apply_reply(reply, source=str(SEED)):
            return 1
        _heading("l2net apply (one VM NIC per network per node)")
        reply = await _apply(nc, vm_nics_manifest().encode())
        if print_apply_reply(reply, source="vm-nics"):
            return 1

        _heading("per-node intents (l2.intent.<node>)")
        for name in NODES:
            msg = await js.get_last_msg(subjects.STREAM_INTENTS, subjects.intent(name))
            intent = bus.decode(msg.data or b"", model.NodeIntent)
            print("\n".join(describe_intent(intent)))

        _heading("NAD configs (l2net nad NETWORK)")
        for net_name in NETWORKS:
            net = planner.catalog.get(model.Network, net_name)
            assert net is not None
            print(json.dumps(compiling.nad_config(planner.catalog, net), indent=2))

        _heading("switch configuration (l2net switch-config)")
        print(format_switch_ports(planner.switch_config(None).ports))

        _heading("a bad submission is refused as a whole")
        bad = (
            SEED.read_bytes()
            + b"---\nkind: Network\nname: vlan5000\nclusterNetwork: oob\nvlan: 5000\n"
        )
        print_apply_reply(await _apply(nc, bad), source="seed + vlan5000")
        await planner.stop()
        await nc.drain()
        return 0
    finally:
        server.stop()


async def _apply(nc: object, body: bytes) -> api.ApplyReply:
    from nats.aio.client import Client

    assert isinstance(nc, Client)
    msg = await nc.request(subjects.API_APPLY, body, timeout=30)
    return bus.decode(msg.data, api.ApplyReply)


async def _wait(done: object, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(done) and done():
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def run(*, keep: bool = False) -> int:
    state = Path(tempfile.mkdtemp(prefix="l2net-demo-"))
    try:
        return asyncio.run(_main(state))
    finally:
        if keep:
            print(f"\nstate kept in {state}")
        else:
            shutil.rmtree(state, ignore_errors=True)
