"""A node restarted while NATS is down comes back with its networks, in the lab.

Two user-mode Linux nodes run the seed topology with VM NICs (bond ``oob-bo`` of eth1+eth2
under the VLAN-aware ``oob-br``, VLAN 100 on mgmt, VLAN 200 and untagged on oob; one VM per
network per node). The lab's NATS server is stopped, then node-1 is power-cycled (its UML
kernel killed and booted again: bonds, bridges, VLANs and VM namespaces all gone). With NATS
still down, node-1's executor converges to the intent kept in its state directory, and
node-2's VMs reach node-1's VMs again on all three networks, as seen by a prober that
runs in node-2 and writes to its directory (no command can be sent to a node while NATS is
down: ``lab exec`` goes over NATS). Then NATS is started again and node-1 reports that
convergence and carries on with the next generation.

The VMs' addresses stand in for their own operating systems (``ipam: {}``: l2net sets
none): each node's init gives them from ``<node dir>/vm-addresses`` whenever a VM's NIC
exists without its address. A lab that cannot boot fails this test: it never skips it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
from nats.aio.client import Client

from services.lab import Lab
from services.lab.cli import main as lab_main
from shared.domain.model import Node, NodeIntent, NodeStatus
from shared.runtime import bus
from shared.wire import intents, subjects
from tests import keys
from tests.executor.helpers import final_status, statuses
from tests.executor.labkit import seed_intent, sh, vm_ping
from tests.kit import lab_fixture, until, until_sync

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

NODES = ["node-1", "node-2"]
VMS = {"vm100": "169.254.100", "vm200": "169.254.200", "vmu": "169.254.50"}


lab = lab_fixture("restartlab", nodes=2, executor=True)


async def publish(nc: Client, it: NodeIntent) -> None:
    js = nc.jetstream()
    await bus.ensure_streams(js, [subjects.STREAM_INTENTS])
    await js.publish(subjects.intent(it.node), bus.encode(keys.sign(it)))


def probe_script(log: Path) -> str:
    """Runs in node-2: every second, each VM pings its peer on node-1 (neighbour cache
    flushed first: node-1's VM NICs come back with new MACs); each answer is a line
    ``<vm> <uptime>`` appended to ``log`` (in the node's directory, seen from the host)."""
    targets = " ".join(f"{vm}:{prefix}.1" for vm, prefix in VMS.items())
    return (
        f"while :; do for t in {targets}; do vm=${{t%%:*}}; ip=${{t#*:}}; "
        'ip netns exec "$vm" ip neigh flush all; '
        'if ip netns exec "$vm" ping -c 1 -W 1 "$ip" > /dev/null 2>&1; then '
        f'echo "$vm $(cut -d" " -f1 /proc/uptime)" >> {log}; fi; done; sleep 1; done'
    )


def answered_since(log: Path, offset: int) -> set[str]:
    """The VMs that got an answer after ``offset`` bytes of the prober's log."""
    with log.open("rb") as f:
        f.seek(offset)
        return {line.split()[0] for line in f.read().decode().splitlines() if line.strip()}


async def test_a_node_restarted_without_nats_gets_its_vms_back(lab: Lab, labnc: Client) -> None:
    # Every VM of every node gets its address from the node's own file (its "guest OS").
    for i, node in enumerate(NODES, start=1):
        lines = [f"{vm} {prefix}.{i}/24" for vm, prefix in VMS.items()]
        (lab.node_dir(node) / "vm-addresses").write_text("\n".join(lines) + "\n")
    for node in NODES:
        await publish(labnc, seed_intent(node, 1))
    for node in NODES:
        await until(lambda n=node: final_status(labnc, n, 1), timeout=300)
        status = await final_status(labnc, node, 1)
        assert status is not None and status.phase == "Applied", status
    # The init of each node gives the VMs their addresses within a few seconds.
    await until(lambda: vm_ping(lab, "node-2", "vm100", "169.254.100.1"), timeout=120)

    log = lab.node_dir("node-2") / "probe.log"
    log.touch()
    pidfile = lab.node_dir("node-2") / "probe.pid"
    await sh(
        lab,
        "node-2",
        "sh",
        "-c",
        f"sh -c '{probe_script(log)}' > /dev/null 2>&1 < /dev/null & echo $! > {pidfile}",
    )
    await until(lambda: answered_since(log, 0) == set(VMS), timeout=120)
    await labnc.close()

    lab.stop_nats()
    lab.stop_node("node-1")
    offset = log.stat().st_size  # node-1 is down: no answer can come after this
    executor_log = lab.node_dir("node-1") / "executor.log"
    log_offset = executor_log.stat().st_size
    boot = lab.start_node("node-1")
    print(f"node-1 booted again in {boot:.1f} s with NATS stopped")

    deadline = time.monotonic() + 300
    while answered_since(log, offset) != set(VMS) and time.monotonic() < deadline:
        time.sleep(1)
    back = answered_since(log, offset)
    print(f"VMs reached across nodes after a restart without NATS: {len(back)}/{len(VMS)}")
    assert back == set(VMS), (
        f"only {sorted(back)} answered; node-1 executor log:\n"
        + (executor_log.read_text(errors="replace")[log_offset:][-3000:])
    )
    after = executor_log.read_text(errors="replace")[log_offset:]
    assert "converged at start to generation 1 kept on disk: Applied" in after, after[-3000:]
    assert "does not answer" in after  # it really ran without NATS

    # NATS comes back: node-1 reports what it did at start, and carries on as usual.
    lab.start_nats()
    nc = await bus.connect([lab.nats_url], name="lab-restart-test-2", attempts=30)
    try:
        digest = intents.digest(keys.sign(seed_intent("node-1", 1)))

        async def reported() -> NodeStatus | None:
            for st in reversed(await statuses(nc, "node-1")):
                if st.intent_digest == digest and any(
                    "converged at start" in r.action for r in st.results
                ):
                    return st
            return None

        await until(reported, timeout=300)
        at_start = await reported()
        assert at_start is not None and at_start.phase == "Applied", at_start

        async def heartbeat() -> Node | None:
            try:
                raw = await nc.jetstream().get_last_msg(
                    subjects.STREAM_NODES, subjects.node("node-1")
                )
            except Exception:
                return None
            return bus.decode(raw.data, Node) if raw.data else None

        async def heartbeat_after_restart() -> bool:
            node = await heartbeat()
            return node is not None and node.heartbeat_at > at_start.at

        await until(heartbeat_after_restart, timeout=120)
        node = await heartbeat()
        assert node is not None and node.applied_generation == 1
        await publish(nc, seed_intent("node-1", 2))
        await until(lambda: final_status(nc, "node-1", 2), timeout=300)
        status = await final_status(nc, "node-1", 2)
        assert status is not None and status.phase == "Applied", status
        assert await vm_ping(lab, "node-1", "vm200", "169.254.200.2")
        # The same power cycle from the command line.
        code = await asyncio.to_thread(lab_main, ["restart", "node-1", "--state-dir", str(lab.dir)])
        assert code == 0
    finally:
        await nc.close()
        pid = pidfile.read_text().strip() if pidfile.exists() else ""
        if pid.isdigit():
            await lab.aexec("node-2", ["kill", pid], timeout=30)


def test_lab_down_stops_the_node_the_command_line_restarted(lab: Lab) -> None:
    """`l2net lab restart` (another process) records the node's new UML process in lab.json;
    down must stop that one too (it leaked, spinning, after this module before)."""
    mark = f"umid=l2lab-{lab.state.lab_id}-"

    def lab_processes() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                    status = (entry / "status").read_text()
                    if mark in args and "State:\tZ" not in status:
                        found.append(int(entry.name))
        return found

    assert lab_processes(), "the lab's nodes should be running before down"
    lab.down()
    until_sync(lambda: lab_processes() == [], what="the lab's UML processes to end")
