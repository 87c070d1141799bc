"""``l2net plan`` on real L2 kernels: two user-mode Linux nodes with bonds, VLAN filtering
and VMs, their executors, and the planner on the lab's NATS.

The plan is made against each node's live state; then the same manifest is applied and the
steps each executor reports (its status results) must be exactly the planned ones, in order.
Adding a VLAN network and a VM on it is hitless; a bond mode change is disruptive and names
the VM NICs and the host network behind the bond.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from services.lab import Lab
from services.planner.service import Planner
from shared.domain.model import NodeStatus
from shared.runtime import bus
from shared.wire import api
from tests import keys
from tests.executor.helpers import final_status
from tests.kit import lab_fixture, until

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

SEED = (Path(__file__).resolve().parents[2] / "docs" / "examples" / "seed.yaml").read_text()
L2NET = [sys.executable, "-m", "services.cli.main"]
NODES = ["node-1", "node-2"]

RUNNING = """
kind: VmNic
name: web-eth0
vm: web
node: node-1
network: untagged-network
---
kind: VmNic
name: db-eth0
vm: db
node: node-1
network: vlan200
---
kind: VmNic
name: mon-eth0
vm: mon
node: node-2
network: vlan100
---
kind: HostNetwork
name: storage
clusterNetwork: oob
vlan: 300
ips:
  node-1: 169.254.30.1/24
  node-2: 169.254.30.2/24
"""

lab = lab_fixture("planlab", nodes=2, executor=True)


@pytest.fixture
async def planner(labnc: Client) -> AsyncIterator[Planner]:
    p = Planner(labnc, signing_seed=keys.SEED)
    await p.start()
    try:
        await until(lambda: set(NODES) <= set(p.catalog.nodes), what="the lab's nodes")
        yield p
    finally:
        await p.stop()


async def l2net(lab: Lab, tmp: Path, *args: str, manifest: str) -> tuple[int, str, str]:
    path = tmp / "manifest.yaml"
    path.write_text(manifest)
    env = {**os.environ, "NATS_URL": lab.nats_url}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    proc = await asyncio.create_subprocess_exec(
        *L2NET,
        *args,
        "-f",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def applied(planner: Planner, nc: Client, manifest: str) -> dict[str, NodeStatus]:
    reply = await planner.apply(manifest)
    assert reply.ok, reply.errors
    out: dict[str, NodeStatus] = {}
    for node in reply.changed:
        generation = reply.generations[node]
        await until(lambda n=node, g=generation: final_status(nc, n, g), timeout=300)
        status = await final_status(nc, node, generation)
        assert status is not None and status.phase == "Applied", status
        out[node] = status
    return out


def kernel_steps(status: NodeStatus) -> list[tuple[str, str, dict[str, object]]]:
    return [(r.operation, r.object, r.fields) for r in status.results if r.operation]


def planned_steps(node: api.NodePlan) -> list[tuple[str, str, dict[str, object]]]:
    return [(s.operation, s.object, s.fields) for s in node.steps]


async def plan_then_apply(
    lab: Lab, planner: Planner, nc: Client, tmp: Path, manifest: str
) -> tuple[api.PlanReply, str]:
    """Plan ``manifest`` (``--json``, and for people), apply it, and check that every node
    did exactly the planned steps; the plan and its text."""
    code, out, err = await l2net(lab, tmp, "plan", "--json", manifest=manifest)
    assert code == 2, out + err
    reply = bus.decode(out.encode(), api.PlanReply)
    code, text, err = await l2net(lab, tmp, "plan", manifest=manifest)
    assert code == 2, text + err
    for node in reply.nodes:
        assert node.state == "live" and node.error == "" and node.steps, node
    statuses = await applied(planner, nc, manifest)
    assert sorted(statuses) == sorted(n.node for n in reply.nodes)
    for node in reply.nodes:
        assert kernel_steps(statuses[node.node]) == planned_steps(node), node.node
    return reply, text


async def test_a_running_fleet_is_planned_then_applied_as_planned(
    lab: Lab, labnc: Client, planner: Planner, tmp_path: Path
) -> None:
    await plan_then_apply(lab, planner, labnc, tmp_path, SEED + "---\n" + RUNNING)
    code, out, _ = await l2net(lab, tmp_path, "plan", manifest=SEED + "---\n" + RUNNING)
    assert code == 0 and "nothing to do" in out


async def test_adding_a_vlan_network_and_a_vm_on_it_is_hitless(
    lab: Lab, labnc: Client, planner: Planner, tmp_path: Path
) -> None:
    manifest = (
        "kind: Network\nname: vlan400\nclusterNetwork: oob\nvlan: 400\n---\n"
        "kind: VmNic\nname: app-eth0\nvm: app\nnode: node-2\nnetwork: vlan400\n"
    )
    reply, text = await plan_then_apply(lab, planner, labnc, tmp_path, manifest)
    assert reply.summary.disruptive == 0 and reply.summary.hitless == reply.summary.steps
    assert {n.node for n in reply.nodes} == set(NODES)
    assert "~ disruptive" not in text and "0 disruptive" in text


async def test_a_bond_mode_change_is_disruptive_for_what_runs_behind_the_bond(
    lab: Lab, labnc: Client, planner: Planner, tmp_path: Path
) -> None:
    manifest = SEED.replace("mode: active-backup", "mode: balance-xor")
    reply, text = await plan_then_apply(lab, planner, labnc, tmp_path, manifest)
    nodes = {n.node: n for n in reply.nodes}
    for name, nics in (("node-1", ["db/eth0", "web/eth0"]), ("node-2", ["app/eth0"])):
        rebuild = [s for s in nodes[name].steps if "bondMode" in s.fields]
        assert len(rebuild) == 1, nodes[name].steps
        assert rebuild[0].impact == "disruptive"
        assert "active-backup to balance-xor" in rebuild[0].reason
        assert rebuild[0].vm_nics == nics  # on oob-br; mon/eth0 (on mgmt) is not
        assert rebuild[0].host_networks == ["storage"]
    assert reply.summary.disruptive_nodes == NODES
    assert "~ disruptive link.set oob-bo (bond_mode=balance-xor" in text
