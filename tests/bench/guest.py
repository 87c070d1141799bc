"""The in-guest half of the executor benchmark: ``python -m tests.bench.guest CONFIG.json``.

Run once inside a lab node (``lab exec``), so that Python starts once (seconds under UML)
and every sample is timed in this one process, after its imports. For each topology of
:mod:`tests.bench.topology`, and for each tool in turn, from the same starting point (the
node as it booted: eth1 and eth2 up and free, no oob-bo/oob-br, no VM):

* **apply**: l2net's :func:`~services.executor.reconciling.converge` (read, plan, apply,
  verify; the resident executor's own transaction) on a kept-open pyroute2 kernel; iproute2
  (``ip -batch``, ``bridge -batch``, ``ip -n VM link set eth0 up``); with VMs, also iproute2
  plus the bridge CNI plugin run by hand (what the executor does, minus reading, planning
  and verifying); ``ifup -a -i FILE``;
* **read back / check**: l2net's read of the node's state plus the one diff against desired;
  ``ip -d -j link show`` + ``bridge -j vlan show``; ``ifquery -a -c -i FILE`` (must pass);
* **re-apply, nothing to do**: l2net's converge (must make zero netlink writes);
  ``ifreload -a`` and ``ifup -a -i FILE`` again.

Every tool's result is read back with l2net's reader and reduced by
:func:`tests.bench.topology.summary`; all tools must agree, or the run fails (comparing
unequal work would be meaningless). Between samples the topology is removed (not timed).

Prints one JSON object (:class:`GuestReport`) on stdout; progress goes to stderr.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from services.executor import cni
from services.executor.kernel import NetlinkKernel
from services.executor.reconciling import converge
from shared.domain.l2state import desired_state, diff
from tests.bench import topology
from tests.bench.ifupdown2kit import STATE_DIR
from tests.bench.topology import BOND, BRIDGE, NICS, Topology


class GuestConfig(msgspec.Struct, kw_only=True):
    """What the host asks the guest to measure."""

    node: str
    repeat: int
    topologies: list[Topology]
    ifupdown2_bin: str | None = None
    ifupdown2_interfaces: str | None = None


class ToolRun(msgspec.Struct, kw_only=True):
    """Samples (seconds) of one measurement of one tool on one topology."""

    samples: list[float]
    writes: list[int] | None = None
    failures: int = 0
    failure: str | None = None


class TopologyReport(msgspec.Struct, kw_only=True):
    name: str
    runs: dict[str, ToolRun]
    summary: dict[str, Any]


class GuestReport(msgspec.Struct, kw_only=True):
    topologies: list[TopologyReport]
    ifupdown2_error: str | None = None


class BenchError(RuntimeError):
    """A tool failed or built something other than the topology."""


def say(text: str) -> None:
    print(f"guest: {text}", file=sys.stderr, flush=True)


def run(argv: list[str], *, stdin: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        output = proc.stderr[-2000:] + proc.stdout[-2000:]
        raise BenchError(f"`{' '.join(argv)}` exited {proc.returncode}:\n{output}")
    return proc.stdout


def timed(argvs: list[tuple[list[str], str | None]]) -> float:
    start = time.perf_counter()
    for argv, stdin in argvs:
        run(argv, stdin=stdin)
    return time.perf_counter() - start


def teardown(vms: list[str]) -> None:
    """Back to the node as booted (not timed): remove what any tool made."""
    veths = [
        link["ifname"] for link in json.loads(run(["ip", "-j", "link", "show", "type", "veth"]))
    ]
    present = {link["ifname"] for link in json.loads(run(["ip", "-j", "link", "show"]))}
    batch = [f"link del {name}" for name in veths]
    batch += [f"link del {name}" for name in (BRIDGE, BOND) if name in present]
    batch += [f"netns del {vm}" for vm in vms if Path("/run/netns", vm).exists()]
    if batch:
        run(["ip", "-force", "-batch", "-"], stdin="\n".join(batch) + "\n", check=False)
    shutil.rmtree(STATE_DIR, ignore_errors=True)
    deadline = time.monotonic() + 20
    while True:
        links = {link["ifname"]: link for link in json.loads(run(["ip", "-j", "link", "show"]))}
        left = [n for n in links if n in (BRIDGE, BOND)]
        left += [v["ifname"] for v in json.loads(run(["ip", "-j", "link", "show", "type", "veth"]))]
        masters = [n for n in NICS if links.get(n, {}).get("master")]
        netns = [vm for vm in vms if Path("/run/netns", vm).exists()]
        if not (left or masters or netns):
            break
        if time.monotonic() > deadline:
            raise BenchError(f"teardown left {left + masters + netns}")
        time.sleep(0.05)
    run(["ip", "-batch", "-"], stdin="".join(f"link set {n} up\n" for n in NICS))


class Runs:
    """Samples collected per measurement name (``l2net.apply``, ``ifupdown2.check``...)."""

    def __init__(self) -> None:
        self.runs: dict[str, ToolRun] = {}

    def add(self, name: str, seconds: float, *, writes: int | None = None) -> None:
        run = self.runs.setdefault(name, ToolRun(samples=[]))
        run.samples.append(seconds)
        if writes is not None:
            run.writes = [*(run.writes or []), writes]

    def failed(self, name: str, error: str) -> None:
        run = self.runs.setdefault(name, ToolRun(samples=[]))
        run.failures += 1
        run.failure = error


class Round:
    """One round of every measurement of every tool on one topology.

    Rounds alternate the tools (l2net, iproute2, ifupdown2, then again), so that a burst of
    load on a shared machine falls on all of them rather than on one tool's samples.
    """

    def __init__(self, cfg: GuestConfig, topo: Topology, kernel: NetlinkKernel) -> None:
        self.topo = topo
        self.kernel = kernel
        self.desired, refused = desired_state(topology.intent(topo, node=cfg.node))
        if refused:
            raise BenchError(f"the benchmark intent was refused: {refused}")
        self.vms = sorted({vm.name for t in cfg.topologies for vm in t.vms})
        self.expected: dict[str, Any] | None = None
        self.ip_apply: list[tuple[list[str], str | None]] = [
            (["ip", "-batch", "-"], topology.ip_batch(topo)),
            (["bridge", "-batch", "-"], topology.bridge_batch(topo)),
            *((argv, None) for argv in topology.vm_up_commands(topo)),
        ]
        self.ip_read: list[tuple[list[str], str | None]] = [
            (["ip", "-d", "-j", "link", "show"], None),
            (["bridge", "-j", "vlan", "show"], None),
        ]
        self.ifupdown2 = bool(cfg.ifupdown2_bin and cfg.ifupdown2_interfaces)
        if self.ifupdown2:
            assert cfg.ifupdown2_bin and cfg.ifupdown2_interfaces
            py, bin_dir, interfaces = (
                "/usr/bin/python3",
                Path(cfg.ifupdown2_bin),
                cfg.ifupdown2_interfaces,
            )
            Path(interfaces).write_text(topology.interfaces_file(topo))
            self.ifup = [py, str(bin_dir / "ifup"), "-a", "-i", interfaces]
            self.ifquery = [py, str(bin_dir / "ifquery"), "-a", "-c", "-i", interfaces]
            self.ifreload = [py, str(bin_dir / "ifreload"), "-a"]
        self.ifupdown2_error: str | None = None

    async def same_topology(self, tool: str) -> None:
        got = topology.summary(await self.kernel.read())
        if self.expected is None:
            self.expected = got
        elif got != self.expected:
            raise BenchError(f"{tool} built {got}; l2net built {self.expected}")

    async def l2net(self, runs: Runs | None) -> None:
        teardown(self.vms)
        start = time.perf_counter()
        outcome = await converge(self.kernel, self.desired)
        took = time.perf_counter() - start
        if outcome.phase != "Applied":
            raise BenchError(f"l2net apply: {outcome.phase}: {outcome.error}")
        await self.same_topology("l2net")
        start = time.perf_counter()
        left = diff(self.desired, await self.kernel.read())
        check = time.perf_counter() - start
        if left:
            raise BenchError(f"l2net check right after its apply: {left[:3]}")
        start = time.perf_counter()
        again = await converge(self.kernel, self.desired)
        noop = time.perf_counter() - start
        if again.phase != "Applied" or again.writes:
            raise BenchError(f"l2net re-apply: {again.phase}, {again.writes} netlink writes")
        if runs is not None:
            runs.add("l2net.apply", took, writes=outcome.writes)
            runs.add("l2net.check", check)
            runs.add("l2net.noop", noop, writes=again.writes)

    async def iproute2(self, runs: Runs | None) -> None:
        teardown(self.vms)
        took = timed(self.ip_apply)
        await self.same_topology("iproute2")
        read = timed(self.ip_read)
        if runs is not None:
            runs.add("iproute2.apply", took)
            runs.add("iproute2.read", read)

    async def cni_by_hand(self, runs: Runs | None) -> None:
        """What the executor does for VM NICs, by hand: ``ip netns add``, the same CNI ADD
        with the same NAD config, then the VID fixes, in as few processes as possible."""
        if not self.topo.vms:
            return
        teardown(self.vms)
        start = time.perf_counter()
        run(["ip", "-batch", "-"], stdin=topology.ip_batch(self.topo, veths=False))
        host_ports = {}
        for vm in self.topo.vms:
            env = {
                "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                "CNI_COMMAND": "ADD",
                "CNI_CONTAINERID": vm.name,
                "CNI_NETNS": f"/run/netns/{vm.name}",
                "CNI_IFNAME": "eth0",
                "CNI_PATH": cni.DEFAULT_CNI_PATH,
            }
            proc = subprocess.run(
                [f"{cni.DEFAULT_CNI_PATH}/bridge"],
                input=json.dumps(topology.nad(vm)),
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise BenchError(f"CNI ADD {vm.name}: {proc.stdout}{proc.stderr}")
            result = json.loads(proc.stdout)
            # interfaces: the bridge, the host veth, the VM's eth0 (with its sandbox).
            host_ports[vm.name] = next(
                i["name"]
                for i in result["interfaces"]
                if not i.get("sandbox") and i["name"] != BRIDGE
            )
        run(["bridge", "-batch", "-"], stdin=topology.cni_fix_batch(self.topo, host_ports))
        took = time.perf_counter() - start
        await self.same_topology("iproute2 + CNI by hand")
        if runs is not None:
            runs.add("cni.apply", took)

    async def ifupdown2_round(self, runs: Runs | None) -> None:
        if not self.ifupdown2 or self.ifupdown2_error:
            return
        try:
            # ifupdown2 3.0.0 sometimes enslaves a veth it has just made before its netlink
            # cache has seen it ("bridge port ... does not exist"): such a run is counted as
            # failed and done again from scratch; only complete runs are timed.
            for attempt in range(4):
                teardown(self.vms)
                try:
                    took = timed([(self.ifup, None)])
                    break
                except BenchError as exc:
                    if runs is not None:
                        runs.failed("ifupdown2.apply", str(exc))
                    if attempt == 3:
                        raise
            await self.same_topology("ifupdown2")
            check = timed([(self.ifquery, None)])
            reload = timed([(self.ifreload, None)])
            reup = timed([(self.ifup, None)])
            await self.same_topology("ifupdown2 (re-applied)")
        except BenchError as exc:
            self.ifupdown2_error = str(exc)
            say(f"ifupdown2 given up: {exc}")
            return
        if runs is not None:
            runs.add("ifupdown2.apply", took)
            runs.add("ifupdown2.check", check)
            runs.add("ifupdown2.reload", reload)
            runs.add("ifupdown2.reup", reup)


async def measure(cfg: GuestConfig) -> GuestReport:
    """Every topology: one warm-up round (not kept), then ``cfg.repeat`` rounds."""
    kernel = NetlinkKernel(cfg.node)
    reports = []
    errors = []
    try:
        for topo in cfg.topologies:
            rnd = Round(cfg, topo, kernel)
            runs = Runs()
            for i in range(cfg.repeat + 1):
                keep = runs if i else None  # the warm-up fills caches (pyc, page cache)
                await rnd.l2net(keep)
                await rnd.iproute2(keep)
                await rnd.cni_by_hand(keep)
                await rnd.ifupdown2_round(keep)
                say(f"{topo.name}: round {i} done")
            teardown(rnd.vms)
            if rnd.ifupdown2_error:
                errors.append(f"{topo.name}: {rnd.ifupdown2_error}")
            reports.append(
                TopologyReport(name=topo.name, runs=runs.runs, summary=rnd.expected or {})
            )
    finally:
        await kernel.close()
    return GuestReport(topologies=reports, ifupdown2_error="; ".join(errors) or None)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    cfg = msgspec.json.decode(Path(args[0]).read_bytes(), type=GuestConfig)
    report = asyncio.run(measure(cfg))
    sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
