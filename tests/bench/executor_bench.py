"""The executor: apply, read back/check, no-op re-apply and memory, inside one lab node,
as ratios against iproute2 and ifupdown2 measured in the same run in the same guest.

UML system calls are slower than a real host's, so only ratios between tools inside the
same guest mean anything. The work happens in three steps:

1. on the host: fetch and unpack Debian's ifupdown2 without installing it
   (:mod:`tests.bench.ifupdown2kit`), boot a one-node lab (no executor started by the lab);
2. in the node, one Python process (:mod:`tests.bench.guest`) times every tool on the
   topologies of :mod:`tests.bench.topology` (bond + VLAN-aware bridge + trunk 2-4094, then
   with three VM NICs), in rounds that alternate the tools, and checks they built the same;
3. the executor service itself is started in the node next to a plain nats-py client
   process: an intent published on the host converges the node (end-to-end, through NATS),
   then both processes' resident memory is read from the guest's /proc;
4. with the executor still running, an auditor on the host checks the node and sees drift
   made by hand, against ifupdown2's ``ifquery -a -c`` in the node
   (:mod:`tests.bench.auditcheck`).

The lab is always torn down (``lab.down()``); nothing is installed on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import nats
from nats.aio.msg import Msg

from services.lab import Lab
from services.lab.fleet import executor_command
from shared.domain.model import NodeStatus
from shared.runtime import bus
from shared.wire import subjects
from tests import keys
from tests.bench import auditcheck, ifupdown2kit, topology
from tests.bench.common import Result
from tests.bench.guest import GuestConfig, GuestReport, ToolRun
from tests.bench.topology import BOND, BRIDGE, NICS

REPO = Path(__file__).resolve().parents[2]
NODE = "node-1"
REPEAT = int(os.environ.get("L2NET_BENCH_REPEAT", "5"))
"""Rounds per topology in the guest (each round times every tool once)."""
E2E_REPEAT = 3

IPROUTE2 = "iproute2 (ip -batch + bridge -batch)"
CNI_BY_HAND = "ip -batch + ip netns add + bridge CNI ADD + bridge -batch, by hand"
IPREAD = "ip -d -j link show + bridge -j vlan show"
IFUP = "ifupdown2 ifup -a -i FILE"
IFQUERY = "ifupdown2 ifquery -a -c -i FILE"
IFRELOAD = "ifupdown2 ifreload -a"
IFUP_AGAIN = "ifupdown2 ifup -a -i FILE (again)"


def _guest_command(cfg_path: Path) -> list[str]:
    inner = f"cd {shlex.quote(str(REPO))} && exec " + shlex.join(
        [sys.executable, "-m", "tests.bench.guest", str(cfg_path)]
    )
    return ifupdown2kit.guest_wrapper(["sh", "-c", inner])


def _median_ms(run: ToolRun | None) -> float | None:
    return statistics.median(run.samples) * 1000 if run and run.samples else None


def _results(report: GuestReport) -> list[Result]:
    out: list[Result] = []
    for topo in report.topologies:
        r = topo.runs
        t = topo.name

        def add(
            name: str, mine: str, theirs: str, label: str, *, topo_runs: dict[str, ToolRun] = r
        ) -> None:
            a, b = _median_ms(topo_runs.get(mine)), _median_ms(topo_runs.get(theirs))
            if a is None or b is None:
                return
            failed = topo_runs[theirs].failures
            if failed:
                label += f"; {failed} failed run(s) redone, not timed"
            out.append(Result(name, a, b, label, "ms"))

        writes = (r.get("l2net.apply") or ToolRun(samples=[])).writes or [0]
        add(f"apply {t} ({max(writes)} netlink writes)", "l2net.apply", "iproute2.apply", IPROUTE2)
        add(f"apply {t}", "l2net.apply", "cni.apply", CNI_BY_HAND)
        add(f"apply {t}", "l2net.apply", "ifupdown2.apply", IFUP)
        add(f"read back + check {t}", "l2net.check", "iproute2.read", IPREAD)
        add(f"read back + check {t}", "l2net.check", "ifupdown2.check", IFQUERY)
        add(f"re-apply, nothing to do, {t} (0 writes)", "l2net.noop", "ifupdown2.reload", IFRELOAD)
        add(f"re-apply, nothing to do, {t} (0 writes)", "l2net.noop", "ifupdown2.reup", IFUP_AGAIN)
    return out


_PLAIN_CLIENT = """
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    print("connected", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""

_TEARDOWN_SH = (
    "for v in $(ip -o link show type veth | cut -d: -f2 | cut -d@ -f1); do "
    "ip link del $v 2>/dev/null; done; "
    f"ip link del {BRIDGE} 2>/dev/null; ip link del {BOND} 2>/dev/null; "
    + "".join(f"ip netns del {vm.name} 2>/dev/null; " for vm in topology.UPLINK_VMS.vms)
    + "i=0; while ip -o link show | grep -q ' master {bond}'; do "
    "i=$((i+1)); [ $i -gt 200 ] && exit 1; sleep 0.05; done; ".replace("{bond}", BOND)
    + "".join(f"ip link set {nic} up; " for nic in NICS)
)


def _rss_kb(status: str) -> int:
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in {status[:200]!r}")


async def _service_phase(
    lab: Lab, work: Path, ifup_ms: float | None, kit: ifupdown2kit.Ifupdown2 | None
) -> list[Result]:
    """The executor service in the node: end-to-end applies, its resident memory, then the
    auditor's checks of the node against ifquery (:mod:`tests.bench.auditcheck`)."""
    nc = await nats.connect(lab.nats_url, name="l2net-bench")
    statuses: asyncio.Queue[NodeStatus] = asyncio.Queue()
    registered = asyncio.Event()

    async def on_status(msg: Msg) -> None:
        with contextlib.suppress(msgspec.ValidationError):
            await statuses.put(bus.decode(msg.data, NodeStatus))

    async def on_node(msg: Msg) -> None:
        registered.set()

    await nc.subscribe(subjects.status(NODE), cb=on_status)
    await nc.subscribe(subjects.node(NODE), cb=on_node)
    await bus.settle(nc)
    exe_log, plain_log = work / "executor.log", work / "plain-client.log"
    argv = executor_command(
        node=NODE,
        nats_url=lab.nats_url_inside,
        trust_keys=[keys.PUBLIC],
        state_dir=str(lab.node_dir(NODE) / "executor-state"),
    )
    start = (
        f"cd {shlex.quote(str(REPO))} && "
        f"{{ {shlex.join(argv)} >{shlex.quote(str(exe_log))} 2>&1 </dev/null & echo $!; }} && "
        f"{{ {shlex.join([sys.executable, '-c', _PLAIN_CLIENT, lab.nats_url_inside])} "
        f">{shlex.quote(str(plain_log))} 2>&1 </dev/null & echo $!; }}"
    )
    rc, out, err = await lab.aexec(NODE, ["sh", "-c", start], timeout=30, nc=nc)
    if rc != 0:
        raise RuntimeError(f"starting the executor in {NODE} failed: {err}")
    exe_pid, plain_pid = (int(x) for x in out.split())
    try:
        try:
            await asyncio.wait_for(registered.wait(), 120)
        except TimeoutError:
            raise RuntimeError(
                f"the executor did not register:\n{exe_log.read_text()[-2000:]}"
            ) from None
        js = nc.jetstream()

        async def apply(generation: int) -> float:
            intent = topology.intent(topology.UPLINK_VMS, node=NODE, generation=generation)
            started = time.perf_counter()
            await js.publish(subjects.intent(NODE), bus.encode(keys.sign(intent)))
            deadline = started + 120
            while True:
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise RuntimeError(f"no final status for generation {generation}")
                status = await asyncio.wait_for(statuses.get(), left)
                if status.observed_generation != generation or status.phase == "Progressing":
                    continue
                if status.phase != "Applied":
                    raise RuntimeError(f"generation {generation}: {status.phase}: {status.error}")
                return time.perf_counter() - started

        await apply(1)  # warm-up: the executor's first apply
        e2e = []
        for generation in range(2, 2 + E2E_REPEAT):
            rc, _, err = await lab.aexec(NODE, ["sh", "-c", _TEARDOWN_SH], timeout=60, nc=nc)
            if rc != 0:
                raise RuntimeError(f"teardown in {NODE} failed: {err}")
            await asyncio.sleep(1)  # let the executor publish the drift it saw, then settle
            e2e.append(await apply(generation))
        for _ in range(100):
            if "connected" in plain_log.read_text(errors="replace"):
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)
        rss = []
        for pid in (exe_pid, plain_pid):
            rc, out, err = await lab.aexec(NODE, ["cat", f"/proc/{pid}/status"], nc=nc)
            if rc != 0:
                raise RuntimeError(f"process {pid} in {NODE} is gone: {err}")
            rss.append(_rss_kb(out))
        audit: list[Result] = []
        if kit is not None:
            try:
                audit = await auditcheck.measure(
                    lab, nc, node=NODE, kit=kit, work=work, repeat=REPEAT
                )
            except auditcheck.BenchFailure as exc:
                print(f"  auditor check not measured: {exc}", flush=True)
    finally:
        await lab.aexec(NODE, ["kill", str(exe_pid), str(plain_pid)], nc=nc)
        await nc.close()
    results = []
    if ifup_ms is not None:
        results.append(
            Result(
                "apply uplink+3vm end to end (intent published on the host to Applied status)",
                statistics.median(e2e) * 1000,
                ifup_ms,
                IFUP + " (in the node)",
                "ms",
            )
        )
    results.append(
        Result(
            "resident memory in a node, executor after applying uplink+3vm",
            rss[0] / 1024,
            rss[1] / 1024,
            "plain nats-py client process",
            "MiB",
        )
    )
    return results + audit


def run() -> list[Result]:
    """Boot a one-node lab, measure, tear it down (see the module docstring)."""
    with tempfile.TemporaryDirectory(prefix="l2net-bench-exec-", dir="/tmp") as tmp:
        work = Path(tmp)
        kit: ifupdown2kit.Ifupdown2 | None
        try:
            kit = ifupdown2kit.prepare(work / "ifupdown2")
        except ifupdown2kit.Ifupdown2Unavailable as exc:
            print(f"  ifupdown2 not measured: {exc}", flush=True)
            kit = None
        cfg = GuestConfig(
            node=NODE,
            repeat=REPEAT,
            topologies=[topology.UPLINK, topology.UPLINK_VMS],
            ifupdown2_bin=str(kit.bin) if kit else None,
            ifupdown2_interfaces=str(kit.interfaces) if kit else None,
        )
        cfg_path = work / "guest.json"
        cfg_path.write_bytes(msgspec.json.encode(cfg))
        lab = Lab.up(directory=work / "lab", nodes=1, executor=False)
        try:
            rc, out, err = lab.exec(NODE, _guest_command(cfg_path), timeout=900)
            if rc != 0:
                raise RuntimeError(f"the in-guest benchmark failed ({rc}):\n{err[-3000:]}")
            report = msgspec.json.decode(out.strip().splitlines()[-1], type=GuestReport)
            if report.ifupdown2_error:
                print(f"  ifupdown2 incomplete: {report.ifupdown2_error}", flush=True)
            results = _results(report)
            vms = next(t for t in report.topologies if t.name == topology.UPLINK_VMS.name)
            ifup_ms = _median_ms(vms.runs.get("ifupdown2.apply"))
            results += asyncio.run(_service_phase(lab, work, ifup_ms, kit))
        finally:
            lab.down()
    return results
