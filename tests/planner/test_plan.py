"""``l2net plan``: what an apply would do, node by node, before anything is stored.

Real parts: a nats-server, the planner, and executors converging host network namespaces
that stand in for nodes (``mgmt-br`` over a veth ``mgmt-bo``, a spare NIC ``eth1``: see
tests/executor/conftest.py; the host kernel has no bonding, 802.1Q or VLAN filtering, so
what is applied here is VM NICs on mgmt, and bonds are only planned). The ``l2net`` command
runs as a process, as users run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from pyroute2 import netns as pyroute2_netns

from services.executor.kernel import OWNED_NETNS_DIR
from services.executor.service import Executor
from services.planner.service import Planner
from shared.domain.model import NodeStatus
from shared.runtime import bus
from shared.runtime.natsserver import EmbeddedNats
from shared.wire import api, subjects
from tests.executor.conftest import (
    ExecutorFactory,
    HostNode,
    _build_node,
    executors,  # noqa: F401  (a fixture, shared)
)
from tests.executor.helpers import final_status
from tests.kit import until
from tests.planner.conftest import make_node, register

pytestmark = pytest.mark.timeout(180)

L2NET = [sys.executable, "-m", "services.cli.main"]
SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "reference" / "schemas"


@dataclass
class Fleet:
    planner: Planner
    nc: Client
    url: str
    a: HostNode
    b: HostNode
    executors: dict[str, Executor]
    tmp: Path

    def vm_nic(self, node: HostNode, *, vm: str, network: str = "flat") -> str:
        return (
            f"kind: VmNic\nname: {vm}-eth0\nvm: {self.a.vm(vm)}\nnode: {node.node}\n"
            f"network: {network}\n"
        )

    async def l2net(self, *args: str, manifest: str | None = None) -> tuple[int, str, str]:
        """``l2net ARGS`` as a process (with ``-f FILE`` holding ``manifest``): its exit
        code, stdout and stderr."""
        if manifest is not None:
            path = self.tmp / f"manifest-{secrets.token_hex(3)}.yaml"
            path.write_text(manifest)
            args = (*args, "-f", str(path))
        env = {**os.environ, "NATS_URL": self.url}
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        proc = await asyncio.create_subprocess_exec(
            *L2NET,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def plan(self, manifest: str) -> tuple[int, api.PlanReply]:
        """``l2net plan --json``: its exit code and its output, which the documented schema
        (docs/reference/schemas/plan-reply.json) must accept."""
        code, out, err = await self.l2net("plan", "--json", manifest=manifest)
        assert out, err
        schema = json.loads((SCHEMAS / "plan-reply.json").read_text())
        problems = [
            e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(json.loads(out))
        ]
        assert problems == []
        return code, bus.decode(out.encode(), api.PlanReply)

    async def applied(self, manifest: str) -> dict[str, NodeStatus]:
        """Apply ``manifest``; each changed node's final status of its new generation."""
        reply = await self.planner.apply(manifest)
        assert reply.ok, reply.errors
        done: dict[str, NodeStatus] = {}
        for node in reply.changed:
            generation = reply.generations[node]
            await until(lambda: final_status(self.nc, node, generation), timeout=60)  # noqa: B023
            status = await final_status(self.nc, node, generation)
            assert status is not None and status.phase == "Applied", status
            done[node] = status
        return done


@pytest.fixture
def two_nodes() -> Iterator[tuple[HostNode, HostNode]]:
    """Two namespaces standing in for nodes, removed by name with their VMs."""
    made = []
    for _ in range(2):
        ns = f"l2p-{secrets.token_hex(3)}"
        pyroute2_netns.create(ns)
        made.append(HostNode(ns=ns, node=f"host-{ns}"))
    try:
        for node in made:
            asyncio.run(_build_node(node.ns))
        yield made[0], made[1]
    finally:
        present = set(pyroute2_netns.listnetns())
        for node in made:
            for name in [*made[0].vms, node.ns]:
                if name in present:
                    pyroute2_netns.remove(name)
                    present.discard(name)
        for name in made[0].vms:  # the executors' records of the VM namespaces they made
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(OWNED_NETNS_DIR, name))


@pytest.fixture
async def fleet(
    planner: Planner,
    nc: Client,
    nats_server: EmbeddedNats,
    executors: ExecutorFactory,  # noqa: F811
    two_nodes: tuple[HostNode, HostNode],
    tmp_path: Path,
) -> AsyncIterator[Fleet]:
    a, b = two_nodes
    started = {n.node: await executors(n) for n in (a, b)}
    await until(lambda: {a.node, b.node} <= set(planner.catalog.nodes), what="nodes registered")
    base = await planner.apply(
        "kind: Network\nname: flat\nclusterNetwork: mgmt\ntype: UntaggedNetwork\n"
    )
    assert base.ok, base.errors
    yield Fleet(planner, nc, nats_server.url, a, b, started, tmp_path)


async def stream_marks(nc: Client) -> dict[str, tuple[int, int]]:
    js = nc.jetstream()
    marks = {}
    for name in (subjects.STREAM_SPECS, subjects.STREAM_INTENTS):
        state = (await js.stream_info(name)).state
        marks[name] = (state.messages, state.last_seq)
    return marks


def kernel_steps(status: NodeStatus) -> list[tuple[str, str, dict[str, object]]]:
    """The steps a status says the executor took, in its order."""
    return [(r.operation, r.object, r.fields) for r in status.results if r.operation]


def planned_steps(node: api.NodePlan) -> list[tuple[str, str, dict[str, object]]]:
    return [(s.operation, s.object, s.fields) for s in node.steps]


async def test_a_plan_stores_nothing_and_is_what_the_executor_then_does(fleet: Fleet) -> None:
    manifest = fleet.vm_nic(fleet.a, vm="web") + "---\n" + fleet.vm_nic(fleet.a, vm="db")
    marks = await stream_marks(fleet.nc)
    catalog, intents = fleet.planner.catalog, dict(fleet.planner.intents)
    published: list[Msg] = []

    async def on_intent(msg: Msg) -> None:
        published.append(msg)

    sub = await fleet.nc.subscribe(subjects.ALL_INTENTS, cb=on_intent)
    code, reply = await fleet.plan(manifest)
    await bus.settle(fleet.nc)
    await sub.unsubscribe()

    assert code == 2 and reply.ok and reply.version == api.PLAN_VERSION
    assert [n.node for n in reply.nodes] == [fleet.a.node]  # b's intent does not change
    node = reply.nodes[0]
    assert node.state == "live" and node.note == "" and node.error == ""
    assert {s.impact for s in node.steps} == {"hitless"}
    assert {(s.operation, s.object) for s in node.steps} >= {
        ("netns.add", fleet.a.vm("web")),
        ("cni.add", f"vm/{fleet.a.vm('web')}/eth0"),
    }
    assert reply.summary.steps == len(node.steps) and reply.summary.disruptive == 0
    # Nothing stored, nothing published, the planner's state as it was.
    assert await stream_marks(fleet.nc) == marks
    assert published == []
    assert fleet.planner.catalog.entries == catalog.entries
    assert fleet.planner.intents == intents

    statuses = await fleet.applied(manifest)
    assert list(statuses) == [fleet.a.node]
    assert kernel_steps(statuses[fleet.a.node]) == planned_steps(node)

    code, again = await fleet.plan(manifest)
    assert code == 0 and again.nodes == [] and again.summary.steps == 0
    code, out, _ = await fleet.l2net("plan", manifest=manifest)
    assert code == 0 and "nothing to do" in out


async def test_a_node_with_no_executor_and_no_observed_state_is_not_planned(
    fleet: Fleet,
) -> None:
    await register(fleet.nc, make_node("ghost"))
    await until(lambda: "ghost" in fleet.planner.catalog.nodes, what="ghost registered")
    manifest = f"kind: VmNic\nname: g-eth0\nvm: {fleet.a.vm('g')}\nnode: ghost\nnetwork: flat\n"
    code, reply = await fleet.plan(manifest)
    assert code == 2
    (ghost,) = reply.nodes
    assert ghost.node == "ghost" and ghost.state == "unknown" and ghost.steps == []
    assert "no state known" in ghost.note and "never published one" in ghost.note
    assert reply.summary.unknown_nodes == ["ghost"]
    code, out, _ = await fleet.l2net("plan", manifest=manifest)
    assert code == 2 and "not planned: ghost" in out


REFUSED = [
    ("kind: Network\nname: v1\nclusterNetwork: mgmt\nvlan: 1\n", "mgmt-bo's PVID"),
    (
        "kind: HostNetwork\nname: h1\nclusterNetwork: mgmt\nvlan: 1\nips: {}\n",
        "mgmt-br's own untagged VID",
    ),
    ("kind: VmNic\nname: x\nvm: x\nnode: nowhere\nnetwork: flat\n", "nowhere"),
]


@pytest.mark.parametrize(("manifest", "why"), REFUSED, ids=["vid1-network", "vid1-host", "node"])
async def test_a_refused_manifest_reads_as_apply_refuses_it(
    fleet: Fleet, manifest: str, why: str
) -> None:
    marks = await stream_marks(fleet.nc)
    plan_code, _, plan_err = await fleet.l2net("plan", manifest=manifest)
    apply_code, _, apply_err = await fleet.l2net("apply", manifest=manifest)
    assert (plan_code, apply_code) == (1, 1)
    assert why in plan_err
    problems = [line for line in plan_err.splitlines() if line.startswith("  - ")]
    assert problems and problems == [
        line for line in apply_err.splitlines() if line.startswith("  - ")
    ]
    code, out, _ = await fleet.l2net("plan", "--json", manifest=manifest)
    assert code == 1 and json.loads(out)["ok"] is False
    assert await stream_marks(fleet.nc) == marks


async def test_with_its_executor_stopped_a_node_is_planned_from_its_last_observed_state(
    fleet: Fleet,
) -> None:
    web_on_a = fleet.vm_nic(fleet.a, vm="web")
    await fleet.applied(web_on_a)
    await until(
        lambda: (
            fleet.executors[fleet.a.node].last_observed is not None
            and any("web" in ns for ns in fleet.executors[fleet.a.node].last_observed.namespaces)
        ),
        what="node a's observed state with the VM",
    )
    await fleet.executors[fleet.a.node].stop()

    # The VM NIC moves to node b: unplugged on a (disruptive), plugged on b (hitless).
    code, reply = await fleet.plan(fleet.vm_nic(fleet.b, vm="web"))
    assert code == 2
    nodes = {n.node: n for n in reply.nodes}
    a, b = nodes[fleet.a.node], nodes[fleet.b.node]
    assert a.state == "observed" and "last observed state" in a.note
    assert "does not answer" in a.note
    assert b.state == "live" and b.note == ""
    web = f"{fleet.a.vm('web')}/eth0"
    unplug = next(s for s in a.steps if s.operation == "cni.del")
    assert unplug.impact == "disruptive" and unplug.vm_nics == [web]
    assert {s.impact for s in b.steps} == {"hitless"}
    assert reply.summary.disruptive_nodes == [fleet.a.node]

    code, out, _ = await fleet.l2net("plan", manifest=fleet.vm_nic(fleet.b, vm="web"))
    assert code == 2
    assert "against its last observed state" in out and f"affects: VM NIC {web}" in out
