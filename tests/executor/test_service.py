"""The executor as a NATS service, on a real nats-server, converging a host namespace node."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Awaitable, Callable

import pytest
from nats.aio.client import Client

from services.cli.main import main as l2net
from services.executor.service import Executor, consumer_name
from shared.domain.l2state import state_from_observed
from shared.domain.model import Node, NodeStatus, ObservedState
from shared.runtime import bus, natsserver
from shared.wire import subjects
from tests.executor.conftest import ExecutorFactory, HostNode, intent, untagged_port
from tests.executor.helpers import final_status, publish_intent, statuses
from tests.kit import until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def start_executor(
    host_node: HostNode, executors: ExecutorFactory
) -> Callable[[], Awaitable[Executor]]:
    """Starts this test's node's executor, which registers the label rack=r1."""
    return lambda: executors(host_node, labels={"rack": "r1"})


async def test_registers_its_node_with_labels_nics_and_heartbeats(
    host_node: HostNode, nc: Client, start_executor: Callable[[], asyncio.Future[Executor]]
) -> None:
    await start_executor()
    js = nc.jetstream()

    async def node_msg() -> Node:
        raw = await js.get_last_msg(subjects.STREAM_NODES, subjects.node(host_node.node))
        assert raw.data is not None
        return bus.decode(raw.data, Node)

    first = await node_msg()
    assert first.labels == {"rack": "r1"}
    eth1 = {n.name: n for n in first.nics}["eth1"]
    assert eth1.mac

    async def newer() -> bool:
        return (await node_msg()).heartbeat_at > first.heartbeat_at

    await until(newer)
    # Link states follow the kernel from one heartbeat to the next.
    assert eth1.state == "up"
    cut = ["ip", "netns", "exec", host_node.ns, "ip", "link", "set", "eth1", "down"]
    assert subprocess.run(cut, capture_output=True).returncode == 0

    async def eth1_down() -> bool:
        return {n.name: n.state for n in (await node_msg()).nics}.get("eth1") == "down"

    await until(eth1_down)


async def test_follows_intents_and_acks_only_after_status(
    host_node: HostNode, nc: Client, start_executor: Callable[[], asyncio.Future[Executor]]
) -> None:
    await start_executor()
    a = host_node.vm("a")
    await publish_intent(nc, intent(host_node, 1, [untagged_port(a)]))

    async def applied() -> NodeStatus | None:
        return await final_status(nc, host_node.node, 1)

    await until(applied)
    status = await applied()
    assert status is not None and status.phase == "Applied", status
    assert status.netlink_writes > 0
    js = nc.jetstream()
    info = await js.consumer_info(subjects.STREAM_INTENTS, consumer_name(host_node.node))
    assert info.num_ack_pending == 0 and info.num_pending == 0
    assert a in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


async def test_on_start_converges_to_the_last_intent_then_follows(
    host_node: HostNode, nc: Client, start_executor: Callable[[], asyncio.Future[Executor]]
) -> None:
    a, b = host_node.vm("a"), host_node.vm("b")
    await publish_intent(nc, intent(host_node, 1, [untagged_port(a)]))
    await publish_intent(nc, intent(host_node, 2, [untagged_port(b)]))
    ex = await start_executor()
    status = await final_status(nc, host_node.node, 2)  # done inside start()
    assert status is not None and status.phase == "Applied"
    assert await final_status(nc, host_node.node, 1) is None  # only the last one
    state = await ex.kernel.read()
    assert set(state.vm_ports) == {f"{b}/eth0"}
    await publish_intent(nc, intent(host_node, 3, [untagged_port(a)]))
    await until(lambda: final_status(nc, host_node.node, 3))
    assert set((await ex.kernel.read()).vm_ports) == {f"{a}/eth0"}


async def test_a_stale_generation_is_refused_and_reported(
    host_node: HostNode, nc: Client, start_executor: Callable[[], asyncio.Future[Executor]]
) -> None:
    ex = await start_executor()
    a, b = host_node.vm("a"), host_node.vm("b")
    await publish_intent(nc, intent(host_node, 5, [untagged_port(a)]))
    await until(lambda: final_status(nc, host_node.node, 5))
    await publish_intent(nc, intent(host_node, 4, [untagged_port(b)]))
    js = nc.jetstream()

    async def consumed() -> bool:
        info = await js.consumer_info(subjects.STREAM_INTENTS, consumer_name(host_node.node))
        return info.num_pending == 0 and info.num_ack_pending == 0

    await until(consumed)
    refused = await final_status(nc, host_node.node, 4)
    assert refused is not None and refused.phase == "Failed", refused
    assert "stale intent refused" in (refused.error or "") and refused.netlink_writes == 0
    assert set((await ex.kernel.read()).vm_ports) == {f"{a}/eth0"}


async def test_a_malformed_intent_is_terminated_and_reported(
    host_node: HostNode, nc: Client, start_executor: Callable[[], asyncio.Future[Executor]]
) -> None:
    await start_executor()
    js = nc.jetstream()
    await bus.ensure_streams(js, [subjects.STREAM_INTENTS])
    await js.publish(subjects.intent(host_node.node), b'{"type": "NodeIntent", "node": 3}')

    async def reported() -> NodeStatus | None:
        for st in await statuses(nc, host_node.node):
            if st.phase == "Failed" and st.error and "malformed" in st.error:
                return st
        return None

    await until(reported)
    # An intent for another node on this node's subject is refused the same way.
    stray = intent(host_node, 7, [untagged_port(host_node.vm("stray"))])
    stray.node = "someone-else"
    await js.publish(subjects.intent(host_node.node), bus.encode(stray))

    async def refused_stray() -> bool:
        return any(
            st.phase == "Failed" and "intent for node 'someone-else'" in (st.error or "")
            for st in await statuses(nc, host_node.node)
        )

    await until(refused_stray)
    info = await js.consumer_info(subjects.STREAM_INTENTS, consumer_name(host_node.node))
    assert info.num_ack_pending == 0 and info.num_redelivered == 0
    assert (
        host_node.vm("stray")
        not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    )
    # The executor carries on with the next good intent.
    await publish_intent(nc, intent(host_node, 1, [untagged_port(host_node.vm("a"))]))
    await until(lambda: final_status(nc, host_node.node, 1))


async def test_hand_made_change_shows_as_observed_state_and_is_not_reverted(
    host_node: HostNode, nc: Client, start_executor: Callable[[], asyncio.Future[Executor]]
) -> None:
    ex = await start_executor()
    a = host_node.vm("a")
    await publish_intent(nc, intent(host_node, 1, [untagged_port(a)]))
    await until(lambda: final_status(nc, host_node.node, 1))
    veth = (await ex.kernel.read()).vm_ports[f"{a}/eth0"].host_ifname
    assert veth is not None
    seen: list[ObservedState] = []

    async def collect(msg: object) -> None:
        seen.append(bus.decode(msg.data, ObservedState))  # type: ignore[attr-defined]

    await nc.subscribe(subjects.observed(host_node.node), cb=collect)
    await bus.settle(nc)
    changed = subprocess.run(
        ["ip", "netns", "exec", host_node.ns, "ip", "link", "set", veth, "nomaster"],
        capture_output=True,
    )
    assert changed.returncode == 0

    def released() -> bool:
        return any(
            state_from_observed(o).vm_ports.get(f"{a}/eth0") is not None
            and state_from_observed(o).vm_ports[f"{a}/eth0"].bridge is None
            for o in seen
        )

    await until(released)
    assert (await ex.kernel.read()).links[veth].master is None  # drift stays visible

    # Asked to, it converges again (what `l2net reconcile NODE` does).
    code = await asyncio.to_thread(
        l2net, ["reconcile", host_node.node, "--nats", ex.config.servers[0]]
    )
    assert code == 0
    assert (await ex.kernel.read()).links[veth].master == "mgmt-br"


async def test_state_request_answers_live_state(
    host_node: HostNode, nc: Client, start_executor: Callable[[], asyncio.Future[Executor]]
) -> None:
    ex = await start_executor()
    await publish_intent(nc, intent(host_node, 1, [untagged_port(host_node.vm("a"))]))
    await until(lambda: final_status(nc, host_node.node, 1))
    reply = await nc.request(subjects.executor_control(host_node.node, "state"), b"", timeout=10)
    observed = bus.decode(reply.data, ObservedState)
    assert observed.generation == 1
    state = state_from_observed(observed)
    assert set(state.vm_ports) == {f"{host_node.vms[0]}/eth0"}
    assert "mgmt-br" in state.links and "eth1" not in state.links
    assert state.vm_ports == (await ex.kernel.read()).vm_ports


async def test_state_and_reconcile_requests_refuse_fields_with_a_problem(
    host_node: HostNode, nc: Client, start_executor: Callable[[], asyncio.Future[Executor]]
) -> None:
    """Like every request of every service: no field is ignored; ``{}`` is an empty body."""
    await start_executor()
    for verb in ("state", "reconcile"):
        subject = subjects.executor_control(host_node.node, verb)
        reply = json.loads((await nc.request(subject, b'{"force": true}', timeout=10)).data)
        assert reply["ok"] is False, reply
        (problem,) = reply["errors"]
        assert problem["code"] == "bad-request" and problem["field"] == "force", problem
    reply = await nc.request(subjects.executor_control(host_node.node, "state"), b"{}", timeout=10)
    assert bus.decode(reply.data, ObservedState).node == host_node.node


def test_executor_command_refuses_bad_arguments_with_a_clear_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert l2net(["executor", "--node", "bad node"]) == 2
    assert "--node 'bad node'" in capsys.readouterr().out
    assert l2net(["executor", "--node", "n1", "--label", "rack"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().out
    assert l2net(["executor", "--node", "n1", "--mgmt-vlan", "5000"]) == 2
    assert "1-4094" in capsys.readouterr().out


def test_reconcile_without_an_executor_fails_clearly(
    nats_server: natsserver.EmbeddedNats, capsys: pytest.CaptureFixture[str]
) -> None:
    assert l2net(["reconcile", "nobody", "--nats", nats_server.url, "--timeout", "1"]) == 1
    assert "no answer from the executor of 'nobody'" in capsys.readouterr().out


async def test_executor_is_listed_as_a_nats_micro_service(
    host_node: HostNode, nc: Client, start_executor: Callable[[], asyncio.Future[Executor]]
) -> None:
    await start_executor()
    reply = await nc.request("$SRV.INFO.l2net-executor", b"", timeout=5)
    info = json.loads(reply.data)
    assert info["name"] == "l2net-executor"
    assert info["metadata"]["node"] == host_node.node
    assert {e["subject"] for e in info["endpoints"]} == {
        subjects.executor_control(host_node.node, "state"),
        subjects.executor_control(host_node.node, "reconcile"),
        subjects.health("l2net-executor", node=host_node.node),
    }
