"""The executor's life across restarts and NATS outages, on a real nats-server, converging a
host namespace node (bridges and veth: what the host kernel has).

* Generations only move forward across restarts: a stale intent (an older generation, or
  the same generation with other content, published by hand and signed) is never applied,
  whether it came while the executor ran or while it was down, and is reported once.
* A node restarted while NATS is unreachable converges to the intent kept on its disk,
  without NATS; once NATS answers it reports that convergence and carries on.
* NATS going away and coming back (same store, or a new empty one) does not lose the
  executor: it reconnects by itself and follows again.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from nats.aio.client import Client

from services.executor.kernel import NetlinkKernel
from services.executor.nodestore import INTENT_FILE, STATE_FILE
from services.executor.service import Executor, ExecutorConfig, consumer_name
from shared.domain.l2state import desired_state, diff
from shared.domain.model import Node, NodeIntent, NodeStatus
from shared.runtime import bus, natsserver
from shared.wire import intents, subjects
from tests import keys
from tests.executor.conftest import HostNode, intent, untagged_port
from tests.executor.helpers import final_status, statuses
from tests.kit import until

pytestmark = pytest.mark.timeout(300)


class Bench:
    """One namespace node, its state directory, and a NATS server that can be stopped and
    started again on the same port with the same store (or a fresh one)."""

    def __init__(self, node: HostNode, server: natsserver.EmbeddedNats, root: Path) -> None:
        self.node = node
        self.server = server
        self.port = server.port
        self.root = root
        self.state_dir = root / "executor-state"
        self.running: list[Executor] = []
        self.servers: list[natsserver.EmbeddedNats] = []

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def executor(self) -> Executor:
        ex = Executor(
            ExecutorConfig(
                node=self.node.node,
                servers=[self.url],
                heartbeat_s=0.3,
                trusted_keys=[keys.PUBLIC],
                state_dir=self.state_dir,
            ),
            NetlinkKernel(self.node.node, netns=self.node.ns),
        )
        self.running.append(ex)
        return ex

    async def start(self) -> Executor:
        ex = self.executor()
        await ex.start()
        return ex

    def stop_nats(self) -> None:
        self.server.stop()

    def start_nats(self, *, fresh_store: bool = False) -> None:
        store = self.root / ("nats-fresh" if fresh_store else "nats")
        self.server = natsserver.start(store, port=self.port)
        self.servers.append(self.server)

    async def client(self) -> Client:
        return await bus.connect([self.url], name="lifecycle-test")


@pytest.fixture
async def bench(
    host_node: HostNode, nats_server: natsserver.EmbeddedNats, tmp_path: Path
) -> AsyncIterator[Bench]:
    b = Bench(host_node, nats_server, tmp_path)  # nats_server's store is tmp_path / "nats"
    try:
        yield b
    finally:
        for ex in b.running:
            if not ex._stopped.is_set():
                await ex.stop()
        for server in b.servers:
            server.stop()


async def publish(nc: Client, it: NodeIntent) -> None:
    """Publish ``it`` signed with the tests' key, as a person with the key could by hand."""
    js = nc.jetstream()
    await bus.ensure_streams(js, [subjects.STREAM_INTENTS])
    await js.publish(subjects.intent(it.node), bus.encode(keys.sign(it)))


async def consumed(nc: Client, node: str) -> bool:
    """Every intent of ``node`` delivered to its executor and acknowledged (or terminated)."""
    try:
        info = await nc.jetstream().consumer_info(subjects.STREAM_INTENTS, consumer_name(node))
    except Exception:
        return False
    return info.num_pending == 0 and info.num_ack_pending == 0


async def about(nc: Client, node: str, it: NodeIntent) -> list[NodeStatus]:
    """The final statuses stored about exactly this intent (by its digest)."""
    digest = intents.digest(it)
    return [
        st
        for st in await statuses(nc, node)
        if st.intent_digest == digest and st.phase != "Progressing"
    ]


async def vm_ports(ex: Executor) -> set[str]:
    return set((await ex.kernel.read()).vm_ports)


async def test_stale_intents_are_never_applied_across_restarts(bench: Bench) -> None:
    node = bench.node
    a, b = node.vm("a"), node.vm("b")
    nc = await bench.client()
    current = intent(node, 5, [untagged_port(a)])
    ex = await bench.start()
    await publish(nc, current)
    await until(lambda: final_status(nc, node.node, 5))
    good = await vm_ports(ex)
    assert good == {f"{a}/eth0"}
    await ex.stop()

    async def while_down(stale: NodeIntent) -> None:
        await publish(nc, stale)

    async def while_running(stale: NodeIntent) -> None:
        running = await bench.start()
        await publish(nc, stale)
        await until(lambda: consumed(nc, node.node))
        await running.stop()

    async def consumer_lost(stale: NodeIntent) -> None:
        # NATS lost the executor's consumer (deleted by hand): it is created again at
        # restart from the stream's last message, which is the stale one.
        await nc.jetstream().delete_consumer(subjects.STREAM_INTENTS, consumer_name(node.node))
        await publish(nc, stale)

    b_port = [untagged_port(b)]
    cases: list[tuple[str, NodeIntent, Callable[[NodeIntent], Awaitable[None]]]] = [
        ("older generation, published while down", intent(node, 3, b_port), while_down),
        ("same generation, other content, while down", intent(node, 5, b_port), while_down),
        ("older generation, published while running", intent(node, 4, b_port), while_running),
        (
            "same generation, other content, while running",
            intent(node, 5, b_port[:0]),
            while_running,
        ),
        ("generation 1, consumer lost", intent(node, 1, b_port), consumer_lost),
        ("generation 0, published while down", intent(node, 0, b_port), while_down),
    ]
    ok = 0
    failures: list[str] = []
    for name, stale, make in cases:
        await make(stale)
        for _ in range(2):  # two restarts: never applied, reported once, not once per start
            ex = await bench.start()
            await until(lambda: consumed(nc, node.node))
            ports = await vm_ports(ex)
            await ex.stop()
        reports = await about(nc, node.node, stale)
        if (
            ports == good
            and len(reports) == 1
            and reports[0].phase == "Failed"
            and "stale intent refused" in (reports[0].error or "")
        ):
            ok += 1
        else:
            failures.append(f"{name}: ports {sorted(ports)}, reports {reports}")
    print(f"stale intents never applied across restarts: {ok}/{len(cases)}")
    assert ok == len(cases), failures
    # What the node keeps on disk is still the generation it applied.
    assert (bench.state_dir / INTENT_FILE).exists() and (bench.state_dir / STATE_FILE).exists()
    ex = await bench.start()
    assert ex.handled_generation == 5 and ex.intent == keys.sign(current)
    # The current generation moves on as usual, and the heartbeat says how far it is.
    nxt = intent(node, 6, [untagged_port(a), untagged_port(b)])
    await publish(nc, nxt)
    await until(lambda: final_status(nc, node.node, 6))
    assert await vm_ports(ex) == {f"{a}/eth0", f"{b}/eth0"}

    async def heartbeat_says_6() -> bool:
        raw = await nc.jetstream().get_last_msg(subjects.STREAM_NODES, subjects.node(node.node))
        return raw.data is not None and bus.decode(raw.data, Node).applied_generation == 6

    await until(heartbeat_says_6)
    await nc.drain()


async def _no_vm_ports(node: HostNode) -> bool:
    kernel = NetlinkKernel(node.node, netns=node.ns)
    try:
        return not (await kernel.read()).vm_ports
    finally:
        await kernel.close()


def ping(ns: str, address: str) -> bool:
    argv = ["ip", "netns", "exec", ns, "ping", "-c", "2", "-W", "1", "-i", "0.2", address]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0


def set_address(ns: str, cidr: str) -> None:
    assert cidr.startswith("169.254.")
    argv = ["ip", "netns", "exec", ns, "ip", "addr", "replace", cidr, "dev", "eth0"]
    assert subprocess.run(argv, capture_output=True).returncode == 0


async def test_a_node_restarted_without_nats_converges_from_disk_then_reports(
    bench: Bench,
) -> None:
    node = bench.node
    a, b = node.vm("a"), node.vm("b")
    nc = await bench.client()
    gen1 = intent(node, 1, [untagged_port(a), untagged_port(b)])
    ex = await bench.start()
    await publish(nc, gen1)
    await until(lambda: final_status(nc, node.node, 1))
    await ex.stop()
    await nc.drain()

    # The node "reboots" while NATS is down: its VMs (namespaces and NICs) are gone.
    bench.stop_nats()
    for vm in (a, b):
        assert subprocess.run(["ip", "netns", "del", vm], capture_output=True).returncode == 0
    # The kernel destroys a namespace (and the host end of its veth) a moment later.
    await until(lambda: _no_vm_ports(node))
    ex = bench.executor()
    await ex.start(wait_connected=False)  # returns once converged from disk, NATS or not
    assert not ex.connected
    desired, _ = desired_state(gen1)
    assert diff(desired, await ex.kernel.read()) == []
    # The VMs' guests configure themselves again; VM to VM traffic flows without NATS.
    set_address(a, "169.254.77.1/24")
    set_address(b, "169.254.77.2/24")
    assert ping(a, "169.254.77.2")

    # NATS comes back: the executor connects by itself and reports what it did at start.
    bench.start_nats()
    await ex.wait_ready()
    nc = await bench.client()
    reports = await about(nc, node.node, gen1)
    assert [r.phase for r in reports] == ["Applied", "Applied"], reports  # before, at start
    at_start = reports[-1]
    assert at_start.netlink_writes > 0  # the VMs were plugged again
    assert "converged at start to generation 1" in at_start.results[0].action
    assert "before NATS was reached" in at_start.results[0].action
    # The same generation is not applied again from the stream.
    await until(lambda: consumed(nc, node.node))
    assert len(await about(nc, node.node, gen1)) == 2
    # And it carries on as usual.
    gen2 = intent(node, 2, [untagged_port(a)])
    await publish(nc, gen2)
    await until(lambda: final_status(nc, node.node, 2))
    assert await vm_ports(ex) == {f"{a}/eth0"}
    await nc.drain()


@pytest.mark.parametrize("store", ["same", "fresh"])
async def test_the_executor_comes_back_after_a_nats_outage(bench: Bench, store: str) -> None:
    """NATS stopped for 5 s, then started again with its store (or an empty one: the
    executor re-creates its streams and consumer): the executor follows again."""
    node = bench.node
    a, b = node.vm("a"), node.vm("b")
    nc = await bench.client()
    ex = await bench.start()
    await publish(nc, intent(node, 1, [untagged_port(a)]))
    await until(lambda: final_status(nc, node.node, 1))
    await nc.drain()

    bench.stop_nats()
    await asyncio.sleep(5)  # the outage (a fault's length, not an assertion)
    bench.start_nats(fresh_store=store == "fresh")
    nc = await bench.client()
    await until(lambda: consumed(nc, node.node), timeout=120)
    await publish(nc, intent(node, 2, [untagged_port(b)]))
    await until(lambda: final_status(nc, node.node, 2), timeout=120)
    assert await vm_ports(ex) == {f"{b}/eth0"}

    async def beating() -> bool:
        try:
            raw = await nc.jetstream().get_last_msg(subjects.STREAM_NODES, subjects.node(node.node))
        except Exception:
            return False
        return raw.data is not None and bus.decode(raw.data, Node).applied_generation == 2

    await until(beating, timeout=60)
    reply = await nc.request(subjects.executor_control(node.node, "state"), b"", timeout=10)
    assert reply.data
    await nc.drain()
