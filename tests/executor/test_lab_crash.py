"""Crashes at any instant, failures at any step, and every change of every field, on a real
L2 kernel (one user-mode Linux node with bonds, VLAN filtering and the bridge CNI plugin).

The executor runs in the node as a real process, forked by a resident driver
(:mod:`tests.executor.crashkit`) so that a restart costs no Python start-up. Three
scenarios on the seed topology with VM NICs: **create** (a bare node to the seed),
**modify** (bond mode, a network's VLAN, a host network with an address, a trunk VM) and
**remove** (back to the bare node). For each, a clean apply gives the reference dump and
the plan; then:

* the executor is killed (SIGKILL, by itself: ``L2NET_TEST_CRASH_AT``) before a step and at
  every point inside one, restarted, and must reach ``Applied`` with a dump equal to the
  clean apply's (no leftover: every link, VID, namespace file, record, VM interior);
* its ``before_step`` hook raises at a step: ``RolledBack``, and the dump equals the one
  before.

The default run kills at every step kind once (before it, and at each point inside it);
``-m long`` kills at every step of every scenario. The table of changes (every field of
every kind, from a converged seed) runs in the default suite.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from nats.aio.client import Client

from services.executor.kernel import CRASH_ENV, CRASH_POINTS
from services.lab import Lab
from shared.domain.l2state import canonical_vlans, desired_state, diff, state_from_observed
from shared.domain.model import HostVlanIntent, NodeIntent, NodeStatus, ObservedState, VlanRange
from shared.runtime import bus
from shared.wire import subjects
from tests import keys
from tests.executor import crashkit
from tests.executor.conftest import mgmt_cn
from tests.executor.crashkit import FAIL_ENV, Driver
from tests.executor.labkit import UNTAGGED, seed_intent
from tests.kit import lab_fixture, until

pytestmark = [
    pytest.mark.lab,
    pytest.mark.timeout(3600),
    pytest.mark.asyncio(loop_scope="module"),
]

NODE = "node-1"
Make = Callable[[int], NodeIntent]
_generation = itertools.count(1)


def bare(gen: int) -> NodeIntent:
    return NodeIntent(node=NODE, generation=gen, cluster_networks=[mgmt_cn()])


def seed(gen: int) -> NodeIntent:
    return seed_intent(NODE, gen)


def storage(address: str = "169.254.30.1/24", vlan: int = 300) -> HostVlanIntent:
    return HostVlanIntent(
        name=f"oob-br.{vlan}",
        host_network="storage",
        cluster_network="oob",
        bridge="oob-br",
        vlan=vlan,
        addresses=[address],
    )


def modified(gen: int) -> NodeIntent:
    return seed_intent(
        NODE,
        gen,
        mode="balance-xor",
        vlan200=210,
        host_vlans=[storage()],
        extra_oob_vids=[300],
        trunk=(310, 320),
    )


SCENARIOS: dict[str, tuple[Make, Make]] = {
    "create": (bare, seed),
    "modify": (seed, modified),
    "remove": (seed, bare),
}


class Statuses:
    """Every final status of the node, as published (a subscription, not stream scans)."""

    def __init__(self) -> None:
        self.final: list[NodeStatus] = []
        self.planned: dict[int, list[str]] = {}

    async def on_msg(self, msg: Any) -> None:
        st = bus.decode(msg.data, NodeStatus)
        if st.phase == "Progressing":
            self.planned[st.observed_generation] = [r.action for r in st.results]
        else:
            self.final.append(st)

    async def wait(self, gen: int, *, after: int = 0, timeout: float = 240) -> NodeStatus:
        """The first final status of ``gen`` among those published after index ``after``."""
        found: NodeStatus = await until(
            lambda: next((st for st in self.final[after:] if st.observed_generation == gen), None),
            timeout=timeout,
            what=f"a final status for generation {gen}",
            every=0.05,
        )
        return found


class Bench:
    """The node, its driver, the status feed and one running executor (``run``)."""

    def __init__(self, lab: Lab, nc: Client, driver: Driver, statuses: Statuses) -> None:
        self.lab = lab
        self.nc = nc
        self.driver = driver
        self.statuses = statuses
        self.run: int | None = None

    async def publish(self, make: Make, *, gen: int | None = None) -> int:
        gen = next(_generation) if gen is None else gen
        intent = keys.sign(make(gen))
        await self.nc.jetstream().publish(subjects.intent(NODE), bus.encode(intent))
        return gen

    async def apply(self, make: Make) -> NodeStatus:
        """Publish a new generation to the running executor (started if none); its status."""
        mark = len(self.statuses.final)
        gen = await self.publish(make)
        if self.run is None:
            self.run = await self.driver.start()
        st = await self.statuses.wait(gen, after=mark)
        assert st.phase == "Applied", f"{st.phase}: {st.error}\n{self.driver.log(self.run)}"
        return st

    async def stop(self) -> None:
        if self.run is not None:
            await self.driver.stop(self.run)
            self.run = None

    async def state(self) -> ObservedState:
        reply = await self.nc.request(subjects.executor_control(NODE, "state"), b"", timeout=60)
        return bus.decode(reply.data, ObservedState)


lab = lab_fixture("crashlab", nodes=1, executor=False)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bench(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Bench]:
    nc = await bus.connect([lab.nats_url], name="crash-test")
    statuses = Statuses()
    await bus.ensure_streams(nc.jetstream(), list(bus.STREAMS))
    sub = await nc.subscribe(subjects.status(NODE), cb=statuses.on_msg)
    await bus.settle(nc)
    driver = Driver(lab, NODE, lab.node_dir(NODE) / "crash")
    await driver.start_driver()
    b = Bench(lab, nc, driver, statuses)
    try:
        yield b
    finally:
        await b.stop()
        await driver.quit()
        # The executors' logs outlive the lab (it removes its files when it goes down).
        shutil.copytree(driver.dir, tmp_path_factory.mktemp("crashlogs"), dirs_exist_ok=True)
        print(f"executor stops that needed SIGKILL: {driver.slow_stops}")
        await sub.unsubscribe()
        await nc.drain()


class Reference(msgspec.Struct):
    before: dict[str, Any]
    after: dict[str, Any]
    steps: list[str]  # "op target ..." of the clean apply's plan


_references: dict[str, Reference] = {}


async def reference(bench: Bench, name: str) -> Reference:
    """The clean apply of scenario ``name``: dumps before and after, and its plan."""
    if name not in _references:
        start, end = SCENARIOS[name]
        await bench.apply(start)
        before = await bench.driver.dump()
        st = await bench.apply(end)
        planned = bench.statuses.planned[st.observed_generation]
        steps = [action.removeprefix("planned: ") for action in planned]
        assert steps, f"{name}: the clean apply planned nothing"
        _references[name] = Reference(before=before, after=await bench.driver.dump(), steps=steps)
    return _references[name]


def crash_cases(steps: list[str], *, every: bool, seen: set[str]) -> list[tuple[int, str]]:
    """(step index, point): before each step and at each point inside it; with ``every``
    False, only steps of a kind not in ``seen`` (added to it)."""
    cases: list[tuple[int, str]] = []
    for index, step in enumerate(steps):
        op = step.split()[0]
        if not every and op in seen:
            continue
        seen.add(op)
        cases += [(index, point) for point in ("before", *CRASH_POINTS.get(op, ()))]
    # The last boundary: the kernel converged, the status not yet reported.
    cases.append((len(steps) - 1, "after"))
    return cases


def differences(want: Any, got: Any, path: str = "") -> str:
    """Where two dumps differ, path by path."""
    if isinstance(want, dict) and isinstance(got, dict):
        parts = [
            differences(want.get(key), got.get(key), f"{path}.{key}" if path else str(key))
            for key in sorted(set(want) | set(got))
        ]
        return "\n".join(p for p in parts if p)
    if want == got:
        return ""
    return f"  {path}: clean {want!r}, got {got!r}"


async def ended_or_done(bench: Bench, run: int, gen: int, *, after: int) -> str | None:
    """How run ``run`` ended, or None when it reported generation ``gen`` done instead."""

    def outcome() -> tuple[str | None] | None:
        how = bench.driver.ended(run)
        if how is not None:
            return (how,)
        if any(st.observed_generation == gen for st in bench.statuses.final[after:]):
            return (None,)
        return None

    settled: tuple[str | None] = await until(
        outcome, timeout=240, what=f"run {run} to end or finish generation {gen}", every=0.05
    )
    return settled[0]


async def crash_matrix(bench: Bench, *, every: bool) -> None:
    converged = total = not_reached = 0
    failures: list[str] = []
    seen: set[str] = set()
    for name, (start, end) in SCENARIOS.items():
        ref = await reference(bench, name)
        for index, point in crash_cases(ref.steps, every=every, seen=seen):
            await bench.apply(start)
            await bench.stop()
            mark = len(bench.statuses.final)
            gen = await bench.publish(end)
            run = await bench.driver.start({CRASH_ENV: f"{index}:{point}"})
            how = await ended_or_done(bench, run, gen, after=mark)
            if how is None:
                # The point was never reached (a VID step with nothing to send): not a case.
                await bench.driver.stop(run)
                not_reached += 1
                continue
            total += 1
            label = f"{name} step {index} ({ref.steps[index]}) {point}"
            assert how == "signal 9", f"{label}: the executor ended with {how}"
            mark = len(bench.statuses.final)
            bench.run = await bench.driver.start()
            st = await bench.statuses.wait(gen, after=mark)
            dump = await bench.driver.dump()
            if st.phase == "Applied" and dump == ref.after:
                converged += 1
            else:
                failures.append(f"{label}: {st.phase} {st.error}\n{differences(ref.after, dump)}")
    print(
        f"kill -9 at a step boundary or inside a step, converged after restart with no "
        f"leftover: {converged}/{total} (points never reached: {not_reached})"
    )
    assert converged == total, "\n\n".join(failures[:5])


async def test_a_killed_executor_converges_after_restart_at_every_step_kind(bench: Bench) -> None:
    await crash_matrix(bench, every=False)


@pytest.mark.long
async def test_a_killed_executor_converges_after_restart_at_every_step(bench: Bench) -> None:
    await crash_matrix(bench, every=True)


async def failure_matrix(bench: Bench, *, every: bool) -> None:
    exact = total = 0
    failures: list[str] = []
    seen: set[str] = set()  # step kinds done (every=False: each kind once)
    for name, (start, end) in SCENARIOS.items():
        ref = await reference(bench, name)
        await bench.apply(start)
        await bench.stop()
        before = await bench.driver.dump()
        assert before == ref.before, differences(ref.before, before)
        run = await bench.driver.start({FAIL_ENV: "1"})
        for index, step in enumerate(ref.steps):
            op = step.split()[0]
            if not every and op in seen:
                continue
            seen.add(op)
            mark = len(bench.statuses.final)
            gen = next(_generation)
            crashkit.write(bench.driver.dir / f"fail-{gen}.json", {"step": index})
            await bench.publish(end, gen=gen)
            st = await bench.statuses.wait(gen, after=mark)
            total += 1
            dump = await bench.driver.dump()
            if st.phase == "RolledBack" and dump == before:
                exact += 1
            else:
                failures.append(
                    f"{name} step {index} ({step}): {st.phase} {st.error}\n"
                    + differences(before, dump)
                )
        await bench.driver.stop(run)
    print(f"failure injected at a step, exact rollback: {exact}/{total}")
    assert exact == total, "\n\n".join(failures[:5])


async def test_a_failure_at_every_step_kind_rolls_back_exactly(bench: Bench) -> None:
    await failure_matrix(bench, every=False)


@pytest.mark.long
async def test_a_failure_at_every_step_rolls_back_exactly(bench: Bench) -> None:
    await failure_matrix(bench, every=True)


async def test_deleting_a_cluster_network_gives_its_nics_back_as_found(bench: Bench) -> None:
    create = await reference(bench, "create")
    remove = await reference(bench, "remove")
    # The bare node after create then remove is the bare node l2net found: NICs up again,
    # their aliases back, no namespace, no record.
    assert remove.after == create.before, differences(create.before, remove.after)


def _bond(options: dict[str, Any] | None = None, mode: str = "active-backup") -> Make:
    return lambda g: seed_intent(NODE, g, mode=mode, bond_options=options)


def _with(change: Callable[[NodeIntent], None]) -> Make:
    def make(gen: int) -> NodeIntent:
        intent = seed_intent(NODE, gen)
        change(intent)
        return intent

    return make


def _oob(intent: NodeIntent) -> Any:
    return intent.cluster_networks[1]


def _set_bond(**fields: Any) -> Make:
    def change(intent: NodeIntent) -> None:
        bond = _oob(intent).bond
        for key, value in fields.items():
            setattr(bond, key, value)

    return _with(change)


def _nics(ports: list[str]) -> Make:
    return _set_bond(ports=ports)


def _vm_mac(intent: NodeIntent) -> None:
    intent.vm_ports[1].mac = "02:00:00:00:00:42"


def _vm_network(intent: NodeIntent) -> None:
    # vmu moves from the untagged network to vlan200 (a NIC's network changes).
    vmu = intent.vm_ports[1]
    vm200 = intent.vm_ports[2]
    vmu.network, vmu.vlans, vmu.cni_config = vm200.network, vm200.vlans, vm200.cni_config


def _retype(intent: NodeIntent, port: int, vlan: int | tuple[int, int] | None) -> None:
    """VM NIC ``port``'s network becomes untagged (None), VLAN ``vlan`` or a trunk; the
    uplink carries what the networks on oob need, as the planner compiles it."""
    nic = intent.vm_ports[port]
    config = dict(nic.cni_config or {})
    config.pop("vlan", None)
    config.pop("vlanTrunk", None)
    if vlan is None:
        nic.vlans = [UNTAGGED]
    elif isinstance(vlan, int):
        nic.vlans = [VlanRange(vid=vlan, pvid=True, untagged=True)]
        config["vlan"] = vlan
    else:
        nic.vlans = [VlanRange(vid=vlan[0], vid_end=vlan[1])]
        config["vlanTrunk"] = [{"minID": vlan[0], "maxID": vlan[1]}]
    nic.cni_config = config
    vids = [VlanRange(vid=r.vid, vid_end=r.vid_end) for p in intent.vm_ports[1:] for r in p.vlans]
    _oob(intent).uplink_vlans = canonical_vlans([UNTAGGED, *vids])


CHANGES: dict[str, Make] = {
    # ClusterNetwork / VlanConfig
    "cluster network mtu": lambda g: seed_intent(NODE, g, mtu=1400),
    "vlanconfig nics: one NIC": _nics(["eth1"]),
    "vlanconfig nics: the other NIC": _nics(["eth2"]),
    "bond mode": _bond(mode="balance-xor"),
    "bond miimon": _bond({"miimon": 250}),
    "bond updelay/downdelay": _bond({"miimon": 100, "updelay": 200, "downdelay": 200}),
    "bond primary": _bond({"miimon": 100, "primary": "eth2"}),
    "bond arp monitoring": _bond({"arp_interval": 100, "arp_ip_target": ["169.254.0.1"]}),
    "bond xmit_hash_policy": _bond({"miimon": 100, "xmit_hash_policy": "layer2+3"}, "802.3ad"),
    "bond lacp_rate/ad_select": _bond(
        {"miimon": 100, "lacp_rate": "fast", "ad_select": "bandwidth"}, "802.3ad"
    ),
    "bond mtu": _set_bond(mtu=1450),
    "bond txQLen": _set_bond(txqlen=500),
    "bond hardwareAddr": _set_bond(hwaddr="02:00:00:00:01:01"),
    # Network
    "network vlan": lambda g: seed_intent(NODE, g, vlan200=220),
    "network deleted": lambda g: seed_intent(NODE, g, vlan200=None),
    "network type vlan -> untagged": _with(lambda it: _retype(it, 2, None)),
    "network type untagged -> vlan": _with(lambda it: _retype(it, 1, 250)),
    "network type vlan -> trunk": _with(lambda it: _retype(it, 2, (310, 320))),
    "network trunk range": lambda g: seed_intent(NODE, g, trunk=(310, 320)),
    # HostNetwork
    "host network added": lambda g: seed_intent(
        NODE, g, host_vlans=[storage()], extra_oob_vids=[300]
    ),
    # VmNic
    "vm nic network": _with(_vm_network),
    "vm nic mac": _with(_vm_mac),
}
"""Each change from the converged seed (or, for host networks and trunks, from a seed that
has one: see :data:`FROM`)."""

FROM: dict[str, Make] = {
    "host network vlan": lambda g: seed_intent(
        NODE, g, host_vlans=[storage()], extra_oob_vids=[300]
    ),
    "host network ip, same subnet": lambda g: seed_intent(
        NODE, g, host_vlans=[storage()], extra_oob_vids=[300]
    ),
    "host network ip, other subnet": lambda g: seed_intent(
        NODE, g, host_vlans=[storage()], extra_oob_vids=[300]
    ),
    "network trunk range changed": lambda g: seed_intent(NODE, g, trunk=(310, 320)),
}
CHANGES.update(
    {
        "host network vlan": lambda g: seed_intent(
            NODE, g, host_vlans=[storage(vlan=301)], extra_oob_vids=[301]
        ),
        "host network ip, same subnet": lambda g: seed_intent(
            NODE, g, host_vlans=[storage("169.254.30.9/24")], extra_oob_vids=[300]
        ),
        "host network ip, other subnet": lambda g: seed_intent(
            NODE, g, host_vlans=[storage("169.254.31.1/24")], extra_oob_vids=[300]
        ),
        "network trunk range changed": lambda g: seed_intent(NODE, g, trunk=(330, 335)),
    }
)


async def test_every_change_of_every_field_converges(bench: Bench) -> None:
    converged = 0
    failures: list[str] = []
    for name, make in CHANGES.items():
        await bench.apply(FROM.get(name, seed))
        mark = len(bench.statuses.final)
        gen = await bench.publish(make)
        if bench.run is None:
            bench.run = await bench.driver.start()
        st = await bench.statuses.wait(gen, after=mark)
        want, _ = desired_state(make(gen))
        left = diff(want, state_from_observed(await bench.state()))
        if st.phase == "Applied" and not left:
            converged += 1
        else:
            failures.append(f"{name}: {st.phase} {st.error}; left: {[str(d) for d in left]}")
    print(f"changes of a field converged (Applied, empty diff): {converged}/{len(CHANGES)}")
    assert converged == len(CHANGES), "\n".join(failures)
