"""``l2net demo`` (what ``make demo`` runs): the seed's topology on real kernels, end to end.

1. An embedded NATS server with JetStream, in a temporary directory.
2. A lab of three user-mode Linux nodes (``l2net lab up --nodes 3``), each booted like a
   Harvester node (``mgmt-bo`` of eth0 under ``mgmt-br``) and running its executor, which
   registers the node on the bus.
3. The planner and the auditor (report-only), in this process.
4. The seed's topology applied through the planner's API, as any client would: cluster
   network ``oob`` on eth1+eth2 (active-backup), ``vlan100`` on mgmt, ``vlan200`` and
   ``untagged-network`` on oob, and one VM NIC per network per node.
5. What came of it: each node's status, ``bridge vlan show`` of each uplink from each node,
   and a connectivity matrix from real pings between the VMs (169.254.0.0/16, inside the
   lab only), the pairs on different networks shown as isolated.
6. A drift made by hand on one node (VLAN 200 taken off its uplink), caught by the auditor as
   ``l2net audit`` shows it, and healed (``l2net audit --heal``).

Everything started is stopped at the end, by the pids and names recorded.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from services.auditor.client import AuditError
from services.auditor.demo import drift_and_heal
from services.auditor.service import Auditor
from services.cli.commands import format_table, print_apply_reply
from services.lab import Lab
from services.planner.service import Planner
from shared.domain import model
from shared.runtime import bus, natsserver
from shared.wire import api, signing, subjects

SEED = Path(__file__).resolve().parents[2] / "docs" / "examples" / "seed.yaml"
NODES = ("node-1", "node-2", "node-3")
NETWORKS = ("vlan100", "vlan200", "untagged-network")
SUBNET_OCTET = {"vlan100": 100, "vlan200": 200, "untagged-network": 50}
DRIFT_NODE = "node-2"


@dataclass(frozen=True)
class Vm:
    name: str
    node: str
    network: str

    @property
    def address(self) -> str:
        """169.254.<network>.<node>: one /16, so isolation can only come from the VLANs."""
        return f"169.254.{SUBNET_OCTET[self.network]}.{self.node.rsplit('-', 1)[-1]}"


def demo_vms(nodes: tuple[str, ...] = NODES) -> list[Vm]:
    """One VM per network per node, named ``<network>-vm<n>``."""
    return [
        Vm(name=f"{net.split('-')[0]}-vm{node.rsplit('-', 1)[-1]}", node=node, network=net)
        for node in nodes
        for net in NETWORKS
    ]


def vm_nics_manifest(vms: list[Vm]) -> str:
    return "---\n".join(
        f"kind: VmNic\nname: {vm.name}-nic0\nvm: {vm.name}\nnode: {vm.node}\n"
        f"network: {vm.network}\n"
        for vm in vms
    )


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


def heading(text: str) -> None:
    print(f"\n== {text} " + "=" * max(0, 72 - len(text)), flush=True)


class DemoError(Exception):
    pass


async def wait_for(check: Callable[[], Any], what: str, *, timeout: float) -> Any:
    """Poll ``check`` (sync or async) until it returns something true; show progress."""
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    shown = 0
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            if shown:
                print(file=sys.stderr)
            return result
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")
        waited = int(time.monotonic() - started)
        if waited >= 2 and waited != shown and sys.stderr.isatty():
            print(f"\r  waiting for {what}… {waited}s", end="", file=sys.stderr, flush=True)
            shown = waited
        await asyncio.sleep(0.2)


async def last_status(nc: Client, node: str) -> model.NodeStatus | None:
    try:
        msg = await nc.jetstream().get_last_msg(subjects.STREAM_STATUS, subjects.status(node))
    except Exception:
        return None
    return bus.decode(msg.data or b"", model.NodeStatus)


async def statuses_at(nc: Client, generations: dict[str, int]) -> dict[str, model.NodeStatus]:
    """The nodes' last status, once every node has reported on its latest generation."""
    out: dict[str, model.NodeStatus] = {}
    for node, gen in generations.items():
        st = await last_status(nc, node)
        if st is None or st.observed_generation < gen or st.phase == "Progressing":
            return {}
        out[node] = st
    return out


async def apply(nc: Client, body: bytes) -> api.ApplyReply:
    msg = await nc.request(subjects.API_APPLY, body, timeout=60)
    return bus.decode(msg.data, api.ApplyReply)


async def show_uplinks(lab: Lab) -> None:
    for node in NODES:
        for dev in ("mgmt-bo", "oob-bo"):
            res = await lab.aexec(node, ["bridge", "-compressvlans", "vlan", "show", "dev", dev])
            print(f"{node}$ bridge -compressvlans vlan show dev {dev}")
            print(res.out.rstrip() or res.err.rstrip())


async def connectivity(lab: Lab, vms: list[Vm]) -> bool:
    """Ping every VM from every other; True when exactly the same-network pairs connect."""
    for vm in vms:
        await lab.aexec(
            vm.node,
            [
                "ip",
                "netns",
                "exec",
                vm.name,
                "ip",
                "addr",
                "replace",
                f"{vm.address}/16",
                "dev",
                "eth0",
            ],
        )
        await lab.aexec(
            vm.node, ["ip", "netns", "exec", vm.name, "ip", "link", "set", "eth0", "up"]
        )

    async def reach(src: Vm, dst: Vm) -> bool:
        res = await lab.aexec(
            src.node,
            [
                "ip",
                "netns",
                "exec",
                src.name,
                "ping",
                "-c",
                "2",
                "-i",
                "0.3",
                "-W",
                "1",
                dst.address,
            ],
            timeout=20,
        )
        return res.rc == 0

    async def row(src: Vm) -> list[bool]:
        return [await reach(src, dst) if dst != src else True for dst in vms]

    matrix = await asyncio.gather(*(row(src) for src in vms))
    rows = [["from \\ to", *(vm.name for vm in vms)]]
    ok = True
    for src, results in zip(vms, matrix, strict=True):
        cells = []
        for dst, reached in zip(vms, results, strict=True):
            if dst == src:
                cells.append("-")
                continue
            expected = src.network == dst.network
            ok &= reached == expected
            mark = "ok" if reached else "isolated"
            cells.append(mark if reached == expected else f"{mark}(!)")
        rows.append([src.name, *cells])
    print(format_table(rows))
    print(
        "\nsame network: connected; different networks: isolated "
        + ("(as expected, every pair)" if ok else "(!) marks a pair that is NOT as expected")
    )
    return ok


async def _main(server: natsserver.EmbeddedNats, lab: Lab) -> int:
    nc = await bus.connect([server.url], name="l2net-demo")
    # The lab made its own key and gave its public key to its executors: sign with it.
    planner = Planner(nc, signing_seed=signing.load_seed(lab.signing_seed_file))
    auditor = Auditor(nc)
    try:
        await planner.start()
        print("planner: answering on l2.api.*")
        await auditor.start()
        print("auditor: replaying and following the streams (report-only)")

        await wait_for(
            lambda: all(n in planner.catalog.nodes for n in NODES),
            "the executors to register",
            timeout=60,
        )
        heading("nodes (registered by their executors)")
        for name in NODES:
            node = planner.catalog.nodes[name]
            nics = ", ".join(
                f"{n.name} {n.state}" + (f" in {n.master}" if n.master else "") for n in node.nics
            )
            print(f"{name}: {nics}")

        heading(f"l2net apply -f {SEED.relative_to(SEED.parents[2])}")
        reply = await apply(nc, SEED.read_bytes())
        if print_apply_reply(reply, source=str(SEED)):
            return 1
        vms = demo_vms()
        heading("l2net apply (one VM NIC per network per node)")
        reply = await apply(nc, vm_nics_manifest(vms).encode())
        if print_apply_reply(reply, source="vm-nics"):
            return 1

        generations = reply.generations
        heading("per-node status (l2.status.<node>)")
        done = await wait_for(
            lambda: statuses_at(nc, generations), "every node to converge", timeout=180
        )
        rows = [["NODE", "GENERATION", "PHASE", "NETLINK-WRITES", "SECONDS", "ERROR"]]
        for node, st in sorted(done.items()):
            rows.append(
                [
                    node,
                    str(st.observed_generation),
                    st.phase,
                    str(st.netlink_writes),
                    f"{st.duration_s:.2f}",
                    st.error or "-",
                ]
            )
        print(format_table(rows))
        if any(st.phase != "Applied" for st in done.values()):
            return 1

        heading("uplinks, live (the seed: oob-bo 1 PVID untagged + 200; mgmt-bo + 100)")
        await show_uplinks(lab)

        heading("connectivity matrix (real pings between the VMs)")
        matrix_ok = await connectivity(lab, vms)

        heading(f"a drift made by hand on {DRIFT_NODE}, caught and healed")
        try:
            healed = await drift_and_heal(nc, node=DRIFT_NODE, run=lab.aexec)
        except AuditError as exc:
            raise DemoError(str(exc)) from exc
        return 0 if matrix_ok and healed else 1
    finally:
        await auditor.stop()
        await planner.stop()
        await nc.drain()


def run(*, keep: bool = False) -> int:
    state = Path(tempfile.mkdtemp(prefix="l2net-demo-"))
    server: natsserver.EmbeddedNats | None = None
    lab: Lab | None = None
    try:
        server = natsserver.start(state / "nats")
        print(f"embedded NATS with JetStream: {server.url}")
        heading("l2net lab up --nodes 3")
        started = time.monotonic()
        lab = Lab.up(
            directory=state / "lab",
            nodes=3,
            nats_url=server.url,
            executor=True,
            progress=lambda line: print(f"  {line}", flush=True),
        )
        print(f"3 nodes up with their executors in {time.monotonic() - started:.1f}s")
        return asyncio.run(_main(server, lab))
    except DemoError as exc:
        print(f"l2net demo: {exc}", file=sys.stderr)
        if lab is not None:
            print(f"  node logs: {lab.dir}", file=sys.stderr)
        return 1
    finally:
        if lab is not None:
            lab.down()
            print("\nlab down: nodes, switches and namespaces removed")
        if server is not None:
            server.stop()
        if keep:
            print(f"state kept in {state}")
        else:
            shutil.rmtree(state, ignore_errors=True)
