"""The auditor's check of a real lab node against ifupdown2's own checker, ``ifquery -a -c``.

Called by :mod:`tests.bench.executor_bench` while its node runs the executor service and has
converged the ``uplink+3vm`` topology (``tests/bench/auditor_bench.py`` measures the auditor
on the bus alone: replay, finding latency, memory). The auditor runs on the host, as its own
process, where it runs in a deployment (one service for the fleet).

* **live check**: ``l2.auditor.check`` for the node (what ``l2net audit NODE`` sends): the
  auditor asks the node's executor for its state over NATS and diffs it against the intent;
  timed on the host, round trip. Baseline: ``ifquery -a -c -i FILE`` run in the node on an
  interfaces file describing the same state (VM ports by the names the CNI plugin gave them),
  timed in the node by its shell. Both must say "no drift".
* **drift seen / drift resolved**: a VID taken off the uplink bond by hand in the node
  (``bridge vlan del``), until the auditor publishes the finding on ``l2.drift.<node>``; put
  back, until it publishes it resolved. Event-driven: nothing polls. Baseline: one run of
  ``ifquery -a -c``, the least time a checker that must be started (by hand or by a timer)
  needs to see anything. ifquery also runs once during the drift and must fail there, so
  both tools saw the same change.
"""

from __future__ import annotations

import asyncio
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from services.lab import Lab
from shared.domain.l2state import parse_alias
from shared.domain.model import DriftReport, ObservedState
from shared.runtime import bus
from shared.wire import auditor_api as protocol
from shared.wire import subjects
from tests.bench import ifupdown2kit, topology
from tests.bench.common import Result
from tests.bench.topology import BOND

REPO = Path(__file__).resolve().parents[2]
CHECKS = 10
DRIFTS = 3
IFQUERY = "ifupdown2 ifquery -a -c -i FILE (in the node)"


class BenchFailure(RuntimeError):
    """The auditor check could not be measured; the message says why."""


async def ifquery_runs(
    lab: Lab, node: str, kit: ifupdown2kit.Ifupdown2, runs: int
) -> list[tuple[int, float]]:
    """(exit code, seconds) of ``runs`` ifquery checks, timed inside the node by its shell."""
    argv = kit.argv("ifquery", "-a", "-c", "-i", str(kit.interfaces))
    loop = (
        f"i=0; while [ $i -lt {runs} ]; do i=$((i+1)); t0=$(date +%s%N); "
        f"{shlex.join(argv)} >/dev/null 2>&1; rc=$?; t1=$(date +%s%N); "
        'echo "$rc $((t1-t0))"; done'
    )
    rc, out, err = await lab.aexec(
        node, ifupdown2kit.guest_wrapper(["sh", "-c", loop]), timeout=60 + 30 * runs
    )
    if rc != 0:
        raise BenchFailure(f"ifquery loop in {node} failed: {err}")
    return [(int(a), int(b) / 1e9) for a, b in (line.split() for line in out.splitlines())]


async def measure(
    lab: Lab, nc: Client, *, node: str, kit: ifupdown2kit.Ifupdown2, work: Path, repeat: int
) -> list[Result]:
    """Start an auditor on the host, time checks and drift findings, stop it."""
    drift: asyncio.Queue[DriftReport] = asyncio.Queue()

    async def on_drift(msg: Msg) -> None:
        await drift.put(bus.decode(msg.data, DriftReport))

    sub = await nc.subscribe(subjects.drift(node), cb=on_drift)
    await bus.settle(nc)
    with open(work / "auditor.log", "wb") as log:
        auditor = subprocess.Popen(
            [sys.executable, "-m", "services.auditor", "--nats", lab.nats_url],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        request = msgspec.json.encode(protocol.CheckRequest(node=node, live=True))

        async def check() -> protocol.CheckReply:
            msg = await nc.request(subjects.AUDITOR_CHECK, request, timeout=30)
            return msgspec.json.decode(msg.data, type=protocol.CheckReply)

        deadline = time.monotonic() + 90
        while True:
            try:
                reply = await check()
                if reply.ok:
                    break
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                pass
            if auditor.poll() is not None or time.monotonic() > deadline:
                tail = (work / "auditor.log").read_text(errors="replace")[-2000:]
                raise BenchFailure(f"the auditor did not answer a check:\n{tail}")
            await asyncio.sleep(0.3)
        samples = []
        for _ in range(CHECKS):
            start = time.perf_counter()
            reply = await check()
            samples.append(time.perf_counter() - start)
            if not reply.ok or reply.drift or not reply.nodes[0].verified:
                raise BenchFailure(f"live check of a converged node: {reply}")

        # ifquery on the same state, the VM ports named as the CNI plugin named them.
        msg = await nc.request(subjects.executor_control(node, "state"), b"", timeout=30)
        observed = bus.decode(msg.data, ObservedState)
        ports = {}
        for link in observed.links:
            fields = parse_alias(link.get("alias"))
            if fields and "vm" in fields:
                ports[fields["vm"]] = str(link["name"])
        kit.interfaces.write_text(topology.interfaces_file(topology.UPLINK_VMS, ports=ports))
        runs = await ifquery_runs(lab, node, kit, repeat + 1)
        if any(rc != 0 for rc, _ in runs):
            raise BenchFailure(f"ifquery -c failed on the converged node: {runs}")
        ifq_ms = statistics.median(s for _, s in runs[1:]) * 1000

        async def next_report(*, opened: bool) -> None:
            while True:
                report = await asyncio.wait_for(drift.get(), 60)
                for item in report.items:
                    if item.object == BOND and (item.resolved_at is None) == opened:
                        return

        seen, resolved = [], []
        for k in range(DRIFTS):
            vid = str(300 + k)
            start = time.perf_counter()
            await lab.aexec(node, ["bridge", "vlan", "del", "dev", BOND, "vid", vid], nc=nc)
            await next_report(opened=True)
            seen.append(time.perf_counter() - start)
            if k == 0:
                (rc, _), *_ = await ifquery_runs(lab, node, kit, 1)
                if rc == 0:
                    raise BenchFailure("ifquery -c passed on a node with a VID missing")
            start = time.perf_counter()
            await lab.aexec(node, ["bridge", "vlan", "add", "dev", BOND, "vid", vid], nc=nc)
            await next_report(opened=False)
            resolved.append(time.perf_counter() - start)
    finally:
        await sub.unsubscribe()
        auditor.terminate()
        try:
            auditor.wait(timeout=10)
        except subprocess.TimeoutExpired:
            auditor.kill()
            auditor.wait()
    return [
        Result(
            "auditor: check a node live (l2.auditor.check from the host)",
            statistics.median(samples) * 1000,
            ifq_ms,
            IFQUERY,
            "ms",
        ),
        Result(
            "auditor: VID removed by hand to drift report (event-driven)",
            statistics.median(seen) * 1000,
            ifq_ms,
            IFQUERY + ", one run",
            "ms",
        ),
        Result(
            "auditor: VID put back by hand to drift resolved (event-driven)",
            statistics.median(resolved) * 1000,
            ifq_ms,
            IFQUERY + ", one run",
            "ms",
        ),
    ]
